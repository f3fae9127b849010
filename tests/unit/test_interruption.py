"""The worker's one reaction to every interruption, and the settings behind it."""

from __future__ import annotations

import json
import signal
import time

import boto3
import pytest

from devstack.cfn import Stack
from gpu_worker.config import WorkerConfig
from gpu_worker.consumer import EXIT_RESERVE_S, Worker
from gpu_worker.interruption import Interruption, InterruptionAction, signal_interruption
from spotline.queue import JobQueue
from spotline.settings import MissingSetting
from tests.unit.conftest import stack_worker_config

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
    worker.on_interruption(
        Interruption("imds-rebalance", InterruptionAction.REBALANCE, time.time())
    )
    assert worker.draining.is_set() and not worker.stopping.is_set()
    assert worker.supervisor.kill_deadline is None


def test_rebalance_can_be_configured_to_checkpoint(worker: Worker) -> None:
    worker.stops.config = WorkerConfig(
        **{**worker.config.describe(), "rebalance_action": "checkpoint"}
    )
    worker.on_interruption(
        Interruption("imds-rebalance", InterruptionAction.REBALANCE, time.time())
    )
    assert worker.stopping.is_set()


def test_rebalance_can_be_served_through_until_the_notice(worker: Worker) -> None:
    # WORKER_REBALANCE_ACTION=keep (the template's choice when the standby starts on it).
    worker.stops.config = WorkerConfig(**{**worker.config.describe(), "rebalance_action": "keep"})
    worker.on_interruption(
        Interruption("imds-rebalance", InterruptionAction.REBALANCE, time.time())
    )
    assert worker.stops.taking_jobs() and worker.supervisor.kill_deadline is None
    now = time.time()
    worker.on_interruption(Interruption("imds-spot", InterruptionAction.TERMINATE, now, now + 120))
    worker.stops.close()
    assert worker.stops.taking_jobs() and worker.stops.notice is not None  # worked through


def test_spot_notice_grace_fits_inside_the_deadline(worker: Worker) -> None:
    now = time.time()
    worker.on_interruption(
        Interruption("gcp-preempted", InterruptionAction.TERMINATE, now, now + 12)
    )
    assert worker.stopping.is_set()
    assert worker.supervisor.kill_deadline == pytest.approx(
        time.monotonic() + 12 - EXIT_RESERVE_S, abs=0.5
    )
    assert worker.interruption is not None and worker.interruption.source == "gcp-preempted"


def test_signal_gets_the_configured_grace(worker: Worker) -> None:
    worker.watch.emit(signal_interruption("SIGTERM"))
    assert worker.stopping.is_set()
    assert worker.supervisor.kill_deadline == pytest.approx(time.monotonic() + 20, abs=0.5)


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
    worker.on_interruption(Interruption("imds-spot", InterruptionAction.TERMINATE, now, now + 120))
    worker.stops.on_signal(signal.SIGTERM, None)  # the OS shutting down inside the notice window
    assert worker.supervisor.kill_deadline == pytest.approx(time.monotonic() + 20, abs=0.5)
    worker.stops.on_signal(signal.SIGTERM, None)  # docker stop's impatience: now
    assert worker.supervisor.kill_deadline <= time.monotonic()
