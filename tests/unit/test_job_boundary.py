"""One message costs one job: whatever escapes its handling is an outcome of that job, AWS faults
are never the job's attempt, and the lease keeps a job from running twice (issue 16)."""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import boto3
import pytest
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    ParamValidationError,
    ReadTimeoutError,
)

from devstack.cfn import Stack
from gpu_worker.analyzers import Job
from gpu_worker.child_process import ChildStartError
from gpu_worker.consumer import Worker
from gpu_worker.faults import FaultTracker, is_infra_fault
from gpu_worker.health import worker_snapshot
from gpu_worker.supervisor import RunningJob, Supervisor
from spotline.contract import ErrorKind, JobMessage, JobStatus, new_job_id
from spotline.jobstore import (
    HOLDER_MESSAGE_ID,
    LEASE_EXPIRES_AT,
    JobError,
    JobStore,
    JobStoreError,
    TransitionRefused,
)
from spotline.queue import JobQueue
from tests.unit.conftest import stack_workers


def client_error(code: str, status: int = 400) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "Op",
    )


def wrapped(exc: Exception) -> JobStoreError:
    try:
        raise JobStoreError("update_item failed") from exc
    except JobStoreError as outer:
        return outer


def raised_while_handling(first: ClientError, second: TypeError) -> TypeError:
    try:
        try:
            raise first
        except ClientError:
            raise second  # noqa: B904 - the point: an implicit __context__, no "from"
    except TypeError as outer:
        return outer


# -- whose fault -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "infra"),
    [
        (client_error("ThrottlingException"), True),
        (client_error("ProvisionedThroughputExceededException"), True),
        (client_error("SlowDown", 503), True),
        (client_error("InternalError", 500), True),
        (client_error("SomethingNew", 502), True),
        (client_error("AccessDenied", 403), True),
        (client_error("ValidationException"), False),
        (client_error("NoSuchKey", 404), False),
        (EndpointConnectionError(endpoint_url="http://x"), True),
        (ReadTimeoutError(endpoint_url="http://x"), True),
        (ParamValidationError(report="Invalid length for parameter Key, value: 0"), False),
        (OSError(errno.ENOSPC, "No space left on device"), True),
        (wrapped(client_error("ThrottlingException")), True),
        (wrapped(ParamValidationError(report="bad")), False),
        (ValueError("could not convert string to float"), False),
        (ChildStartError("analysis child did not start in 120s"), True),
        (raised_while_handling(client_error("ThrottlingException"), TypeError("bug")), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else str(value),
)
def test_aws_and_machine_faults_are_told_apart_from_the_jobs(exc: Exception, infra: bool) -> None:
    assert is_infra_fault(exc) is infra


def test_faults_in_a_row_degrade_and_one_clean_job_resets() -> None:
    tracker = FaultTracker(degraded_after=2)
    tracker.fault(client_error("ThrottlingException"))
    assert not tracker.degraded
    tracker.fault(EndpointConnectionError(endpoint_url="http://x"))
    assert tracker.degraded and tracker.report().consecutive == 2
    assert tracker.report().last_error.startswith("EndpointConnectionError")
    tracker.ok()
    assert not tracker.degraded and tracker.report().total == 2


# -- the lease -------------------------------------------------------------------------------


def expire_lease(job_store: JobStore, job_id: str) -> None:
    job_store.set_fields(job_id, {LEASE_EXPIRES_AT: time.time() - 1})


def test_a_job_under_a_live_lease_is_never_taken_over(job_store: JobStore) -> None:
    job_store.create("j", {"analyzer": "echo", "input": 1})
    record, _ = job_store.claim_queued("j", "w1/m1/a", "w1", lease_s=120, message_id="m1")
    assert record.lease_expires_at is not None and record.holder_message_id == "m1"
    assert job_store.get("j").lease_live(time.time())
    with pytest.raises(TransitionRefused):
        job_store.claim("j", "w2/m2/b", "w2", expect_owner="w1/m1/a", lease_s=120)
    expire_lease(job_store, "j")
    taken = job_store.claim("j", "w2/m2/b", "w2", expect_owner="w1/m1/a", lease_s=120)
    assert taken.owner_token == "w2/m2/b" and taken.lease_live(time.time())


def test_only_the_holder_renews_and_a_lost_lease_says_so(job_store: JobStore) -> None:
    job_store.create("j", {"analyzer": "echo", "input": 1})
    job_store.claim_queued("j", "t1", "w1", lease_s=1, message_id="m1")
    before = job_store.get("j").lease_expires_at
    job_store.renew_lease("j", "t1", 120)
    assert job_store.get("j").lease_expires_at > before + 100
    with pytest.raises(TransitionRefused):
        job_store.renew_lease("j", "someone-else", 120)


def test_every_move_out_of_running_ends_the_lease(job_store: JobStore) -> None:
    job_store.create("j", {"analyzer": "echo", "input": 1})
    job_store.claim_queued("j", "t1", "w1", lease_s=120, message_id="m1")
    job_store.give_back("j", "t1")
    record = job_store.get("j")
    assert record.status == JobStatus.QUEUED and record.attempts == 0
    assert record.lease_expires_at is None and record.holder_message_id is None
    assert LEASE_EXPIRES_AT not in record.extra and HOLDER_MESSAGE_ID not in record.extra
    job_store.claim_queued("j", "t2", "w1", lease_s=120, message_id="m2")
    job_store.complete_quietly("j", "t2", "s3://b/results/j/result-t2.json")
    assert job_store.get("j").lease_expires_at is None


def test_redrive_forgets_the_dead_letterings_dlq_send(job_store: JobStore) -> None:
    job_store.create("j", {"analyzer": "echo", "input": 1})
    job_store.dead_letter("j", JobError(ErrorKind.ANALYZER_ERROR, "boom"))
    job_store.set_fields("j", {"dlq_sent": True, "dlq_sent_for": "x"})
    record = job_store.redrive("j")
    assert "dlq_sent" not in record.extra


# -- the per-job boundary, in process ----------------------------------------------------------


@pytest.fixture
def make_worker(stack: Stack) -> Iterator[Callable[..., Worker]]:
    with stack_workers(
        stack,
        worker_id="unit-boundary",
        wait_s=0,
        visibility_window_s=30,
        metrics_sink="off",
        backoff_base_s=7,
    ) as make:
        yield make


def queue_job(job_store: JobStore, queue: JobQueue, request: dict[str, Any]) -> str:
    job_id = new_job_id()
    job_store.create(job_id, request)
    queue.send(JobMessage(job_id, request))
    return job_id


def fail_with(exc: Exception) -> Callable[..., Any]:
    def raising(*args: Any, **kwargs: Any) -> Any:
        raise exc

    return raising


def test_an_aws_fault_releases_the_job_without_counting_an_attempt(
    make_worker: Callable[..., Worker], job_store: JobStore, queue: JobQueue, stack: Stack
) -> None:
    worker = make_worker()
    key = "inputs/a.json"
    boto3.client("s3").put_object(Bucket=stack.ref("DataBucket"), Key=key, Body=b'{"a": 1}')
    request = {"analyzer": "echo", "input_uri": f"s3://{stack.ref('DataBucket')}/{key}"}
    job_id = queue_job(job_store, queue, request)
    worker.results.load_input = fail_with(client_error("SlowDown", 503))  # type: ignore[method-assign]

    worker.poll_once()  # returns: the fault never leaves the job's boundary

    record = job_store.get(job_id)
    assert record.status == JobStatus.QUEUED and record.attempts == 0
    assert record.last_error is None and record.owner_token is None
    assert queue.approximate_counts() == (0, 1), "released with backoff, not at once"
    assert worker.faults.report().consecutive == 1
    assert "SlowDown" in (worker.faults.report().last_error or "")


def test_an_unexpected_error_is_the_jobs_attempt_never_the_workers_exit(
    make_worker: Callable[..., Worker], job_store: JobStore, queue: JobQueue, stack: Stack
) -> None:
    worker = make_worker()
    job_id = queue_job(job_store, queue, {"analyzer": "echo", "input": {"x": 1}})
    worker.checkpoints.load = fail_with(ParamValidationError(report="Key is empty"))  # type: ignore[method-assign]
    worker.results.put = fail_with(ParamValidationError(report="never reached"))  # type: ignore[method-assign]

    worker.poll_once()

    record = job_store.get(job_id)
    # The first attempt never reads a checkpoint; the failure is the result write's.
    assert record.status == JobStatus.QUEUED and record.attempts == 1
    assert record.last_error.kind == ErrorKind.UNKNOWN
    assert "ParamValidationError" in record.last_error.message
    assert worker.faults.report().total == 0


def test_a_message_the_worker_cannot_read_is_dead_lettered_not_fatal(
    make_worker: Callable[..., Worker], job_store: JobStore, queue: JobQueue, stack: Stack
) -> None:
    worker = make_worker()
    queue.send_body("[" * 100_000 + "]" * 100_000)  # deeper than Python's recursion limit
    worker.poll_once()
    dlq = JobQueue(boto3.client("sqs"), stack.ref("JobsDeadLetterQueue"))
    assert dlq.approximate_counts()[0] == 1
    assert queue.approximate_counts() == (0, 0)


def test_a_drill_is_refused_by_a_worker_without_the_flag(
    make_worker: Callable[..., Worker], job_store: JobStore, queue: JobQueue
) -> None:
    worker = make_worker(enable_drills=False)
    job_id = queue_job(job_store, queue, {"analyzer": "crash", "input": None})
    worker.poll_once()
    record = job_store.get(job_id)
    assert record.status == JobStatus.DEAD_LETTERED
    assert record.last_error.kind == ErrorKind.INVALID_INPUT
    assert "drill" in record.last_error.message
    assert worker.supervisor.restarts == 0, "the crash drill never ran"


def test_a_duplicate_under_a_live_lease_is_deleted_and_never_run(
    make_worker: Callable[..., Worker], job_store: JobStore, queue: JobQueue
) -> None:
    worker = make_worker()
    request = {"analyzer": "echo", "input": 1}
    job_id = new_job_id()
    job_store.create(job_id, request)
    job_store.claim_queued(job_id, "other/m-holder/x", "other", lease_s=120, message_id="m-holder")
    queue.send(JobMessage(job_id, request))  # a duplicate: another message id

    worker.poll_once()

    record = job_store.get(job_id)
    assert record.status == JobStatus.RUNNING and record.owner_token == "other/m-holder/x"
    assert queue.approximate_counts() == (0, 0), "the holder's own message recovers the job"


def test_the_holders_own_message_waits_for_the_lease_to_run_out(
    make_worker: Callable[..., Worker], job_store: JobStore, queue: JobQueue
) -> None:
    worker = make_worker()
    request = {"analyzer": "echo", "input": 1}
    job_id = new_job_id()
    job_store.create(job_id, request)
    queue.send(JobMessage(job_id, request))
    (message,) = queue.receive(wait_s=0, visibility_s=0)
    job_store.claim_queued(job_id, "other/x/y", "other", lease_s=60, message_id=message.message_id)

    worker.poll_once()  # the same message comes back while its holder's lease is live

    assert job_store.get(job_id).owner_token == "other/x/y"
    assert queue.approximate_counts() == (0, 1), "kept, invisible until the lease ends"


def test_a_job_past_its_limit_is_unhealthy(make_worker: Callable[..., Worker]) -> None:
    worker = make_worker()
    job = RunningJob("j", "sleep", 1, runtime_s=100.0, runtime_limit_s=10, progress={})
    snapshot = worker_snapshot(replace(worker.state(), job=job), stale_poll_s=90)
    assert snapshot["ok"] is False and snapshot["job"]["past_limit"] is True
    job = replace(job, runtime_limit_s=1000)
    assert worker_snapshot(replace(worker.state(), job=job), stale_poll_s=90)["ok"] is True


def test_aws_faults_in_a_row_show_as_degraded(make_worker: Callable[..., Worker]) -> None:
    worker = make_worker(degraded_after_faults=2)
    for _ in range(2):
        worker.faults.fault(client_error("ThrottlingException"))
    state = replace(worker.state(), last_poll_at=time.time())
    snapshot = worker_snapshot(state, stale_poll_s=90)
    assert snapshot["status"] == "degraded" and snapshot["ok"] is True
    assert snapshot["infra_faults"]["consecutive"] == 2


# -- checkpoints that cannot be stored ---------------------------------------------------------


def run_sleep(on_checkpoint: Callable[[str, Any], None]) -> Any:
    supervisor = Supervisor(on_checkpoint=on_checkpoint, tick_s=0.05)
    try:
        job = Job(
            job_id="j",
            analyzer="sleep",
            input=None,
            params={"seconds": 0.6, "checkpoint_every_s": 0.1},
        )
        return supervisor.run(job, None, max_runtime_s=30, on_tick=lambda: None)
    finally:
        supervisor.close()


def test_a_full_disk_costs_the_checkpoint_not_the_job() -> None:
    def full(job_id: str, state: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    outcome = run_sleep(full)
    assert outcome.succeeded and outcome.checkpoint_failures >= 1 and outcome.checkpoints == 0


def test_a_state_no_store_can_hold_fails_the_job_permanently() -> None:
    def unserialisable(job_id: str, state: Any) -> None:
        raise TypeError("Object of type set is not JSON serializable")

    outcome = run_sleep(unserialisable)
    assert not outcome.succeeded and outcome.permanent
    assert outcome.error.kind == ErrorKind.ANALYZER_ERROR
    assert "JSON or bytes" in outcome.error.message


def test_a_stopped_child_is_killed_at_the_limit() -> None:
    supervisor = Supervisor(on_checkpoint=lambda *_: None, tick_s=0.05)
    try:
        job = Job(job_id="j", analyzer="crash", input=None, params={"signal": "SIGSTOP"})
        started = time.monotonic()
        outcome = supervisor.run(job, None, max_runtime_s=1, on_tick=lambda: None)
        assert time.monotonic() - started < 10
        assert outcome.error.kind == ErrorKind.TIMEOUT
        assert supervisor.restarts == 1
    finally:
        supervisor.close()
