"""Working through a notice (gpu_worker/stop_policy.py): under a notice with a deadline the
worker keeps taking the jobs that end before its cutoff and gives the rest back unstarted."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from devstack.cfn import Stack
from devstack.motoserver import wait_until
from gpu_worker.attempt import Attempt
from gpu_worker.claim import Claim
from gpu_worker.config import WorkerConfig
from gpu_worker.consumer import Worker
from gpu_worker.decisions import ClaimVerdict
from gpu_worker.interruption import Interruption, InterruptionAction, signal_interruption
from gpu_worker.preparer import Prepared
from gpu_worker.stop_policy import EXIT_RESERVE_S, Notice, StopControl, react
from gpu_worker.supervisor import RunningJob
from spotline.contract import JobMessage, JobStatus
from spotline.jobstore import JobStore
from spotline.queue import JobQueue, ReceivedMessage
from spotline.settings import MissingSetting
from tests.unit.conftest import stack_worker_config

GRACE_S = 20.0


def notice(seconds: float, now: float | None = None) -> Interruption:
    now = time.time() if now is None else now
    return Interruption("imds-spot", InterruptionAction.TERMINATE, now, now + seconds)


# -- the rule ----------------------------------------------------------------------------------


def test_a_job_fits_when_it_ends_before_the_deadline_less_grace_and_reserve() -> None:
    now = 1_000_000.0
    window = Notice(deadline=now + 120, grace_s=GRACE_S)
    assert window.cutoff == now + 120 - GRACE_S - EXIT_RESERVE_S
    assert window.fits(95.0, now=now)
    assert not window.fits(95.5, now=now)
    assert not window.fits(1.0, now=now + 95)  # the time left shrinks as the notice runs


def test_only_a_notice_with_a_deadline_is_worked_through() -> None:
    now = time.time()
    kept = react(
        notice(120, now),
        rebalance_action="drain",
        checkpoint_grace_s=GRACE_S,
        work_through=True,
        now=now,
    )
    assert kept.notice == Notice(now + 120, GRACE_S) and not kept.drain
    signal = react(
        signal_interruption("SIGTERM"),
        rebalance_action="drain",
        checkpoint_grace_s=GRACE_S,
        work_through=True,
    )
    assert signal.notice is None
    rebalance = Interruption("imds-rebalance", InterruptionAction.REBALANCE, now)
    assert react(
        rebalance, rebalance_action="drain", checkpoint_grace_s=GRACE_S, work_through=True
    ).drain
    off = react(
        notice(120, now),
        rebalance_action="drain",
        checkpoint_grace_s=GRACE_S,
        work_through=False,
        now=now,
    )
    assert off.notice is None


def test_a_notice_too_short_for_any_job_stops_at_once() -> None:
    # GCP's thirty seconds with a 20 s grace leave 5 s; twelve seconds leave nothing.
    now = time.time()
    gcp = react(
        notice(30, now),
        rebalance_action="drain",
        checkpoint_grace_s=GRACE_S,
        work_through=True,
        now=now,
    )
    assert gcp.notice is not None and gcp.notice.cutoff == pytest.approx(now + 5)
    short = react(
        notice(12, now),
        rebalance_action="drain",
        checkpoint_grace_s=GRACE_S,
        work_through=True,
        now=now,
    )
    assert short.notice is None and short.grace_s == pytest.approx(12 - EXIT_RESERVE_S)


def test_the_setting_is_a_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    for required in ("WORKER_QUEUE_URL", "WORKER_DLQ_URL", "WORKER_TABLE_NAME", "WORKER_BUCKET"):
        monkeypatch.setenv(required, "x")
    assert WorkerConfig.from_env().work_through_notice is True
    monkeypatch.setenv("WORKER_WORK_THROUGH_NOTICE", "off")
    assert WorkerConfig.from_env().work_through_notice is False
    monkeypatch.setenv("WORKER_WORK_THROUGH_NOTICE", "sometimes")
    with pytest.raises(MissingSetting, match="WORKER_WORK_THROUGH_NOTICE"):
        WorkerConfig.from_env()


# -- the switches --------------------------------------------------------------------------------


class FakeSupervisor:
    """The two things StopControl asks of the supervisor: the job in hand, and a stop."""

    def __init__(self, running: RunningJob | None = None) -> None:
        self.job = running
        self.stops: list[float | None] = []

    def running(self) -> RunningJob | None:
        return self.job

    def request_stop(self, grace_s: float | None = None) -> None:
        self.stops.append(grace_s)


def control(running: RunningJob | None = None, **settings: Any) -> StopControl:
    config = WorkerConfig(
        queue_url="q",
        dlq_url="d",
        table_name="t",
        bucket="b",
        worker_id="unit",
        imds_endpoint="",
        **{"checkpoint_grace_s": GRACE_S, **settings},
    )
    return StopControl(config, FakeSupervisor(running))  # type: ignore[arg-type]


def running_job(runtime_s: float, limit_s: float | None) -> RunningJob:
    return RunningJob("job", "sleep", 1, runtime_s, limit_s, {})


def test_an_idle_worker_keeps_taking_jobs_that_fit() -> None:
    stops = control()
    stops.on_interruption(notice(120))
    try:
        assert stops.taking_jobs() and not stops.stopping.is_set()
        assert stops.admits(60) and not stops.admits(100)
        assert stops.supervisor.stops == []  # type: ignore[attr-defined]
    finally:
        stops.close()


def test_a_running_job_that_fits_goes_on_and_one_that_does_not_is_released_at_once() -> None:
    fitting = control(running_job(runtime_s=50, limit_s=90))  # 40 s more of 95
    fitting.on_interruption(notice(120))
    fitting.close()
    assert not fitting.stopping.is_set() and fitting.notice is not None
    too_long = control(running_job(runtime_s=10, limit_s=3600))
    too_long.on_interruption(notice(120))
    assert too_long.stopping.is_set() and too_long.notice is None
    assert too_long.supervisor.stops == [GRACE_S]  # type: ignore[attr-defined]


def test_a_drained_worker_or_the_setting_off_stops_at_once() -> None:
    drained = control()
    drained.on_interruption(Interruption("imds-rebalance", InterruptionAction.REBALANCE, 0.0))
    drained.on_interruption(notice(120))
    assert drained.stopping.is_set() and drained.notice is None
    off = control(work_through_notice=False)
    off.on_interruption(notice(120))
    assert off.stopping.is_set() and off.notice is None


def test_at_the_cutoff_the_worker_stops_and_the_running_job_keeps_its_grace() -> None:
    stops = control(checkpoint_grace_s=1.0)
    stops.on_interruption(notice(1.0 + EXIT_RESERVE_S + 1.5))  # cutoff 1.5 s from now
    assert not stops.stopping.is_set()
    wait_until(stops.stopping.is_set, timeout=5, what="the notice's cutoff")
    (grace_s,) = stops.supervisor.stops  # type: ignore[attr-defined]
    assert grace_s == pytest.approx(1.0, abs=0.2)


def test_a_later_notice_never_pushes_the_cutoff_back() -> None:
    stops = control()
    stops.on_interruption(notice(60))
    first = stops.notice
    stops.on_interruption(
        Interruption(
            "imds-termination-tag", InterruptionAction.TERMINATE, time.time(), time.time() + 120
        )
    )
    stops.close()
    assert stops.notice == first


# -- the worker gives back what does not fit -----------------------------------------------------


@pytest.fixture
def noticed(stack: Stack) -> Iterator[Worker]:
    """A worker (never run) under a spot notice worked through, 120 s before its deadline."""
    config = stack_worker_config(
        stack, worker_id="unit", imds_endpoint="", wait_s=0, prefetch=0, max_receive_count=4
    )
    worker = Worker(
        config,
        sqs=boto3.client("sqs"),
        dynamodb=boto3.client("dynamodb"),
        s3=boto3.client("s3"),
    )
    worker.on_interruption(notice(120))
    yield worker
    worker.stops.close()


def enqueue(stack: Stack, request: dict[str, Any]) -> str:
    job_id = str(uuid.uuid4())
    JobStore(boto3.client("dynamodb"), stack.ref("JobsTable")).create(job_id, request)
    JobQueue(boto3.client("sqs"), stack.ref("JobsQueue")).send(JobMessage(job_id, request))
    return job_id


def receive_one(stack: Stack) -> ReceivedMessage:
    (message,) = JobQueue(boto3.client("sqs"), stack.ref("JobsQueue")).receive(
        wait_s=0, visibility_s=30
    )
    return message


def test_a_job_that_fits_is_handled_and_one_that_does_not_is_given_back_unclaimed(
    stack: Stack, noticed: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    handled: list[str] = []
    monkeypatch.setattr(noticed, "handle", lambda message, **_: handled.append(message.body))
    short = enqueue(stack, {"analyzer": "sleep", "input": None, "max_runtime_s": 30})
    noticed.poll_once()
    assert [json.loads(body)["job_id"] for body in handled] == [short]

    long = enqueue(stack, {"analyzer": "sleep", "input": None})  # the stack's cap: an hour
    noticed.poll_once()
    assert len(handled) == 1
    message = receive_one(stack)
    assert json.loads(message.body)["job_id"] == long
    assert message.receive_count == 2, "given back at once, not after the visibility window"
    record = JobStore(boto3.client("dynamodb"), stack.ref("JobsTable")).get(long)
    assert (record.status, record.attempts) == (JobStatus.QUEUED, 0), "never an attempt"


def test_a_job_declined_twice_comes_back_after_the_deadline_not_to_the_same_worker(
    stack: Stack, noticed: Worker
) -> None:
    enqueue(stack, {"analyzer": "sleep", "input": None})
    noticed.poll_once()  # declined: visible at once
    noticed.poll_once()  # the same message again: hidden until this instance is gone
    queue = JobQueue(boto3.client("sqs"), stack.ref("JobsQueue"))
    assert queue.receive(wait_s=0, visibility_s=30) == []
    visible, in_flight = queue.approximate_counts()
    assert (visible, in_flight) == (0, 1)


def test_a_decline_never_walks_a_message_into_the_redrive(stack: Stack, noticed: Worker) -> None:
    # maxReceiveCount 4 here: a copy received for the third time is re-sent fresh instead.
    job_id = enqueue(stack, {"analyzer": "sleep", "input": None})
    queue = JobQueue(boto3.client("sqs"), stack.ref("JobsQueue"))
    for _ in range(2):
        (message,) = queue.receive(wait_s=0, visibility_s=30)
        queue.change_visibility(message.receipt_handle, 0)
    noticed.poll_once()
    fresh = receive_one(stack)
    assert json.loads(fresh.body)["job_id"] == job_id
    assert fresh.receive_count == 1


def test_a_job_prepared_ahead_that_does_not_fit_goes_back_uncounted_and_declined(
    stack: Stack, noticed: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    handled: list[str] = []
    monkeypatch.setattr(noticed, "handle", lambda message, **_: handled.append(message.body))
    long = enqueue(stack, {"analyzer": "sleep", "input": None})  # the stack's cap: an hour
    attempt = Attempt(receive_one(stack))
    assert noticed.claimer.claim(attempt, prepared=True).verdict is ClaimVerdict.RUN
    store = JobStore(boto3.client("dynamodb"), stack.ref("JobsTable"))
    assert store.get(long).prepared
    prepared = [Prepared(attempt, Claim(ClaimVerdict.RUN))]
    monkeypatch.setattr(noticed.intake, "take", lambda: prepared.pop() if prepared else None)
    noticed.poll_once()
    assert handled == [], "it would not end before the cutoff: not started"
    record = store.get(long)
    assert (record.status, record.attempts, record.prepared_at) == (JobStatus.QUEUED, 0, None)
    message = receive_one(stack)
    assert json.loads(message.body)["job_id"] == long, "declined: visible again at once"
