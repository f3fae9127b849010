"""Interruption monitors against the IMDS mock, the watch, and the worker's one reaction."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from devstack.cfn import Stack
from devstack.imds import GCP_PREEMPTED_PATH, REBALANCE_PATH, SPOT_PATH, TOKEN_PATH, ImdsMock
from devstack.motoserver import free_port, wait_until
from gpu_worker import interruption
from gpu_worker.config import WorkerConfig
from gpu_worker.consumer import EXIT_RESERVE_S, Worker
from gpu_worker.interruption import (
    ABSENT_RETRY_S,
    Action,
    GcpPreemptedMonitor,
    ImdsClient,
    Interruption,
    InterruptionWatch,
    RebalanceMonitor,
    SpotNoticeMonitor,
    monitors_from_settings,
    signal_interruption,
)
from pipeline.queue import JobQueue
from pipeline.settings import MissingSetting
from tests.unit.conftest import stack_worker_config


class RecordingLogger:
    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def _record(self, level: str, message: str, **kwargs: Any) -> None:
        self.records.append((level, message, dict(kwargs.get("extra") or {})))

    def info(self, message: str, **kwargs: Any) -> None:
        self._record("info", message, **kwargs)

    def warning(self, message: str, **kwargs: Any) -> None:
        self._record("warning", message, **kwargs)

    def exception(self, message: str, **kwargs: Any) -> None:
        self._record("exception", message, **kwargs)

    def messages(self, level: str | None = None) -> list[str]:
        return [m for lvl, m, _ in self.records if level is None or lvl == level]


@pytest.fixture
def log(monkeypatch: pytest.MonkeyPatch) -> RecordingLogger:
    recorder = RecordingLogger()
    monkeypatch.setattr(interruption, "logger", recorder)
    return recorder


@pytest.fixture
def imds() -> Iterator[ImdsMock]:
    with ImdsMock() as mock:
        yield mock


def raw(mock: ImdsMock, path: str, *, method: str = "GET", headers: dict[str, str] | None = None):
    request = urllib.request.Request(f"{mock.url}{path}", method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# -- the mock keeps IMDSv2's rules ------------------------------------------------------------


def test_mock_requires_a_token_and_refuses_bad_ttls(imds: ImdsMock) -> None:
    assert raw(imds, SPOT_PATH)[0] == 401
    assert raw(imds, TOKEN_PATH, method="PUT")[0] == 400
    ttl = {"X-aws-ec2-metadata-token-ttl-seconds": "21601"}
    assert raw(imds, TOKEN_PATH, method="PUT", headers=ttl)[0] == 400
    status, token = raw(
        imds, TOKEN_PATH, method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}
    )
    assert status == 200
    assert raw(imds, SPOT_PATH, headers={"X-aws-ec2-metadata-token": token.decode()})[0] == 404
    assert raw(imds, SPOT_PATH, headers={"X-aws-ec2-metadata-token": "forged"})[0] == 401


def test_mock_token_expires_after_its_ttl(imds: ImdsMock) -> None:
    _, token = raw(
        imds, TOKEN_PATH, method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "1"}
    )
    headers = {"X-aws-ec2-metadata-token": token.decode()}
    assert raw(imds, SPOT_PATH, headers=headers)[0] == 404
    wait_until(lambda: raw(imds, SPOT_PATH, headers=headers)[0] == 401, timeout=3)


def test_mock_gcp_needs_the_metadata_flavor_header(imds: ImdsMock) -> None:
    assert raw(imds, GCP_PREEMPTED_PATH)[0] == 403
    assert raw(imds, GCP_PREEMPTED_PATH, headers={"Metadata-Flavor": "Google"}) == (200, b"FALSE")


# -- IMDS monitors ------------------------------------------------------------------------------


def test_spot_notice_becomes_one_interruption_with_its_deadline(
    imds: ImdsMock, log: RecordingLogger
) -> None:
    monitor = SpotNoticeMonitor(ImdsClient(imds.url), poll_s=2)
    assert monitor.check() is None
    visible_at = imds.schedule_notice("stop", deadline_s=120)
    event = monitor.check()
    assert event is not None
    assert event.source == "imds-spot" and event.action is Action.STOP
    assert not event.advisory
    # IMDS times have whole seconds.
    assert event.deadline == pytest.approx(visible_at + 120, abs=1.0)
    assert monitor.client.tokens_fetched == 1, "one token serves every poll"


def test_rebalance_recommendation_is_advisory(imds: ImdsMock) -> None:
    monitor = RebalanceMonitor(ImdsClient(imds.url), poll_s=2)
    assert monitor.check() is None
    imds.recommend_rebalance()
    event = monitor.check()
    assert event is not None and event.action is Action.REBALANCE and event.advisory
    assert event.deadline is None


def test_token_is_refreshed_before_it_expires(imds: ImdsMock) -> None:
    now = [1000.0]
    client = ImdsClient(imds.url, token_ttl_s=100, clock=lambda: now[0])
    monitor = SpotNoticeMonitor(client, poll_s=2)
    monitor.check()
    now[0] += 50
    monitor.check()
    assert client.tokens_fetched == 1
    now[0] += 35  # 85 of 100 s used: inside the refresh margin, before the expiry
    monitor.check()
    assert client.tokens_fetched == 2
    assert not any(key.endswith(" 401") for key in imds.stats()["counts"])


def test_an_expired_token_is_replaced_and_the_notice_still_seen(
    imds: ImdsMock, log: RecordingLogger
) -> None:
    client = ImdsClient(imds.url)
    monitor = SpotNoticeMonitor(client, poll_s=2)
    assert monitor.check() is None
    imds.expire_tokens()
    imds.schedule_notice()
    event = monitor.check()
    assert event is not None and event.action is Action.TERMINATE
    counts = imds.stats()["counts"]
    assert counts[f"GET {SPOT_PATH} 401"] == 1
    assert client.tokens_fetched == 2
    assert log.messages("warning") == []


def test_absent_imds_is_reported_once_and_polled_rarely(log: RecordingLogger) -> None:
    client = ImdsClient(f"http://127.0.0.1:{free_port()}", timeout_s=0.5)
    monitors = [SpotNoticeMonitor(client, poll_s=2), RebalanceMonitor(client, poll_s=2)]
    for _ in range(3):
        for monitor in monitors:
            assert monitor.check() is None
    assert len(log.records) == 1
    level, message, extra = log.records[0]
    assert level == "info" and "not found" in message and extra["monitor"] == "imds"
    assert all(m.interval_s == ABSENT_RETRY_S for m in monitors)


def test_imds_coming_back_is_noticed(imds: ImdsMock, log: RecordingLogger) -> None:
    port = int(imds.url.rsplit(":", 1)[1])
    client = ImdsClient(f"http://127.0.0.1:{free_port()}", timeout_s=0.5)
    monitor = SpotNoticeMonitor(client, poll_s=2)
    assert monitor.check() is None
    client.endpoint = f"http://127.0.0.1:{port}"
    imds.schedule_notice()
    assert monitor.check() is not None
    assert monitor.interval_s == 2


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, b"{not json"),
        (200, b"[1, 2, 3]"),
        (200, b'{"action": "explode", "time": "2026-01-01T00:00:00Z"}'),
        (200, b'{"time": "2026-01-01T00:00:00Z"}'),
        (500, b"internal error"),
        (200, b"\xff\xfe\x00binary"),
    ],
)
def test_garbage_answers_are_logged_once_and_ignored(
    imds: ImdsMock, log: RecordingLogger, status: int, body: bytes
) -> None:
    imds.serve_garbage(SPOT_PATH, status=status, body=body)
    monitor = SpotNoticeMonitor(ImdsClient(imds.url), poll_s=2)
    for _ in range(3):
        assert monitor.check() is None
    assert log.messages("warning") == ["ignoring unexpected metadata answer"]
    assert monitor.interval_s == 2, "garbage is not absence"


def test_garbage_rebalance_and_token_answers_are_ignored(
    imds: ImdsMock, log: RecordingLogger
) -> None:
    imds.serve_garbage(REBALANCE_PATH, body=b'{"noticeTime": "yesterday"}')
    assert RebalanceMonitor(ImdsClient(imds.url), poll_s=2).check() is None
    imds.serve_garbage(TOKEN_PATH, status=500, body=b"oops")
    assert SpotNoticeMonitor(ImdsClient(imds.url), poll_s=2).check() is None
    assert len(log.messages("warning")) == 2


def test_spot_notice_with_an_odd_time_still_counts_with_two_minutes(imds: ImdsMock) -> None:
    imds.serve_garbage(SPOT_PATH, body=b'{"action": "terminate", "time": "soon"}')
    event = SpotNoticeMonitor(ImdsClient(imds.url), poll_s=2).check()
    assert event is not None
    assert event.seconds_left() == pytest.approx(120, abs=2)


def test_gcp_preempted_flag(imds: ImdsMock) -> None:
    monitor = GcpPreemptedMonitor(imds.url, poll_s=1)
    assert monitor.check() is None
    imds.preempt_gcp()
    event = monitor.check()
    assert event is not None and event.action is Action.TERMINATE
    assert event.seconds_left() == pytest.approx(30, abs=1)


def test_monitors_from_settings_turn_sources_on_and_off() -> None:
    assert (
        monitors_from_settings(
            imds_endpoint="", imds_poll_s=2, imds_token_ttl_s=60, gcp_endpoint=""
        )
        == []
    )
    names = [
        m.name
        for m in monitors_from_settings(
            imds_endpoint="http://x", imds_poll_s=2, imds_token_ttl_s=60, gcp_endpoint="http://y"
        )
    ]
    assert names == ["imds-spot", "imds-rebalance", "gcp-preempted"]


# -- the watch: one stream, each event once -------------------------------------------------


class Scripted:
    def __init__(self, name: str, events: list[Interruption | Exception | None]) -> None:
        self.name = name
        self.interval_s = 0.01
        self.events = events

    def check(self) -> Interruption | None:
        item = self.events.pop(0) if len(self.events) > 1 else self.events[0]
        if isinstance(item, Exception):
            raise item
        return item


def test_watch_delivers_each_event_once_and_survives_a_broken_monitor(
    log: RecordingLogger,
) -> None:
    notice = Interruption("imds-spot", Action.TERMINATE, time.time(), time.time() + 120)
    received: list[Interruption] = []
    watch = InterruptionWatch(
        [Scripted("broken", [RuntimeError("boom")]), Scripted("spot", [None, notice])],
        received.append,
    )
    for _ in range(4):
        watch.check_all()
    assert received == [notice]
    assert log.messages("exception") == ["interruption monitor failed"] * 4
    assert watch.emit(signal_interruption("SIGTERM")) is True
    assert watch.emit(signal_interruption("SIGTERM")) is False
    assert [e.source for e in received] == ["imds-spot", "signal"]


def test_watch_thread_polls_until_stopped(imds: ImdsMock) -> None:
    received: list[Interruption] = []
    watch = InterruptionWatch(
        [SpotNoticeMonitor(ImdsClient(imds.url), poll_s=0.05)], received.append
    ).start()
    try:
        imds.schedule_notice()
        wait_until(lambda: received, timeout=5, what="notice through the watch")
    finally:
        watch.stop()
    assert len(received) == 1


# -- the worker's reaction ------------------------------------------------------------------


@pytest.fixture
def worker() -> Worker:
    """A worker that is never run: only its reaction to interruptions is looked at."""
    config = WorkerConfig(
        queue_url="https://sqs.us-east-1.amazonaws.com/123456789012/jobs",
        dlq_url="https://sqs.us-east-1.amazonaws.com/123456789012/dlq",
        table_name="jobs",
        bucket="data",
        worker_id="unit",
        imds_endpoint="",
        checkpoint_grace_s=20,
    )
    return Worker(
        config,
        sqs=boto3.client("sqs", region_name="us-east-1"),
        dynamodb=boto3.client("dynamodb", region_name="us-east-1"),
        s3=boto3.client("s3", region_name="us-east-1"),
    )


def test_rebalance_only_drains_by_default(worker: Worker) -> None:
    worker.on_interruption(Interruption("imds-rebalance", Action.REBALANCE, time.time()))
    assert worker.draining.is_set() and not worker.stopping.is_set()
    assert worker.supervisor._kill_at is None


def test_rebalance_can_be_configured_to_checkpoint(worker: Worker) -> None:
    worker.config = WorkerConfig(**{**worker.config.describe(), "rebalance_action": "checkpoint"})
    worker.on_interruption(Interruption("imds-rebalance", Action.REBALANCE, time.time()))
    assert worker.stopping.is_set()


def test_spot_notice_grace_fits_inside_the_deadline(worker: Worker) -> None:
    now = time.time()
    worker.on_interruption(Interruption("gcp-preempted", Action.TERMINATE, now, now + 12))
    assert worker.stopping.is_set()
    assert worker.supervisor._kill_at == pytest.approx(
        time.monotonic() + 12 - EXIT_RESERVE_S, abs=0.5
    )
    assert worker.interruption is not None and worker.interruption.source == "gcp-preempted"


def test_signal_gets_the_configured_grace(worker: Worker) -> None:
    worker.watch.emit(signal_interruption("SIGTERM"))
    assert worker.stopping.is_set()
    assert worker.supervisor._kill_at == pytest.approx(time.monotonic() + 20, abs=0.5)


def test_default_grace_fits_gcp_thirty_second_notice() -> None:
    assert WorkerConfig.checkpoint_grace_s + EXIT_RESERVE_S <= 30


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WORKER_REBALANCE_ACTION", "panic"),
        ("WORKER_IMDS_POLL_S", "0"),
        ("WORKER_IMDS_TOKEN_TTL_S", "99999"),
        ("WORKER_CHECKPOINT_GRACE_S", "-1"),
    ],
)
def test_bad_preemption_settings_fail_with_their_name(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    for required in ("WORKER_QUEUE_URL", "WORKER_DLQ_URL", "WORKER_TABLE_NAME", "WORKER_BUCKET"):
        monkeypatch.setenv(required, "x")
    monkeypatch.setenv(name, value)
    with pytest.raises(MissingSetting, match=name):
        WorkerConfig.from_env()


def test_imds_endpoint_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    for required in ("WORKER_QUEUE_URL", "WORKER_DLQ_URL", "WORKER_TABLE_NAME", "WORKER_BUCKET"):
        monkeypatch.setenv(required, "x")
    monkeypatch.setenv("WORKER_IMDS_ENDPOINT", "off")
    assert WorkerConfig.from_env().imds_endpoint == ""
    monkeypatch.delenv("WORKER_IMDS_ENDPOINT")
    config = WorkerConfig.from_env()
    assert config.imds_endpoint == "http://169.254.169.254"
    assert json.dumps(config.describe())


# -- prefetched messages on shutdown --------------------------------------------------------


@pytest.mark.parametrize("flag", ["stopping", "draining"])
def test_messages_received_while_stopping_or_draining_are_released_at_once(
    stack: Stack, flag: str
) -> None:
    config = stack_worker_config(
        stack,
        worker_id="unit",
        imds_endpoint="",
        wait_s=0,
        visibility_window_s=120,
    )
    sqs = boto3.client("sqs")
    worker = Worker(config, sqs=sqs, dynamodb=boto3.client("dynamodb"), s3=boto3.client("s3"))
    queue = JobQueue(sqs, config.queue_url)
    queue.send_body('{"job_id": "j"}')
    getattr(worker, flag).set()
    worker.poll_once()
    (message,) = queue.receive(wait_s=0, visibility_s=30)
    assert message.receive_count == 2, "visible again at once, not after the 120 s window"
    assert worker.jobs_handled == 0


def test_sigterm_after_a_notice_keeps_the_grace_but_a_second_sigterm_ends_it(
    worker: Worker,
) -> None:
    now = time.time()
    worker.on_interruption(Interruption("imds-spot", Action.TERMINATE, now, now + 120))
    worker._on_signal(signal.SIGTERM, None)  # the OS shutting down inside the notice window
    assert worker.supervisor._kill_at == pytest.approx(time.monotonic() + 20, abs=0.5)
    worker._on_signal(signal.SIGTERM, None)  # docker stop's impatience: now
    assert worker.supervisor._kill_at <= time.monotonic()


def test_one_timed_out_poll_does_not_blind_the_spot_monitor_while_imds_answers(
    imds: ImdsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a flaky e2e test on a loaded machine: one spot poll timed out, the rebalance
    poll right after was answered, and the spot monitor still waited the 60 s absent rhythm."""
    client = ImdsClient(imds.url)
    spot, rebalance = SpotNoticeMonitor(client, poll_s=0.2), RebalanceMonitor(client, poll_s=0.2)
    real_get = client.get
    timeouts = [SPOT_PATH]

    def get(path: str) -> Any:
        if path in timeouts:
            timeouts.remove(path)
            raise TimeoutError("timed out")
        return real_get(path)

    monkeypatch.setattr(client, "get", get)
    received: list[Interruption] = []
    watch = InterruptionWatch([spot, rebalance], received.append)
    due: dict[str, float] = {}
    watch.check_all(due=due)
    assert client.availability.available is True
    assert due[spot.name] - time.monotonic() <= 0.2

    imds.schedule_notice()
    watch.check_all(now=due[spot.name], due=due)
    assert [event.source for event in received] == [spot.name]
