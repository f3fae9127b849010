"""One worker, two queues (gpu_worker/queues.py): the standby with the on-demand lane takes the
lane's jobs first and covers the jobs queue's spot gaps; every message is settled, re-sent and
dead-lettered on the queue it came from."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from devstack.cfn import Stack
from gpu_worker.config import WorkerConfig
from gpu_worker.consumer import Worker
from gpu_worker.interruption import Interruption, InterruptionAction
from gpu_worker.queues import QueueSet, Route, worker_queues
from gpu_worker.supervisor import AttemptOutcome
from spotline.contract import ErrorKind, JobMessage, JobStatus, new_job_id
from spotline.jobstore import JobError, JobStore
from spotline.queue import JobQueue, QueueError, ReceivedMessage
from spotline.tiers import ON_DEMAND_TIER
from tests.unit.conftest import FailingClient, stack_workers

GIB = 1024**3


@pytest.fixture
def lane(stack: Stack) -> Route:
    sqs = boto3.client("sqs")
    make = sqs.create_queue
    return Route(
        JobQueue(sqs, make(QueueName="unit-lane")["QueueUrl"]),
        JobQueue(sqs, make(QueueName="unit-lane-dlq")["QueueUrl"]),
    )


@pytest.fixture
def jobs(stack: Stack) -> Route:
    sqs = boto3.client("sqs")
    return Route(
        JobQueue(sqs, stack.ref("JobsQueue")), JobQueue(sqs, stack.ref("JobsDeadLetterQueue"))
    )


@pytest.fixture
def both(lane: Route, jobs: Route) -> QueueSet:
    return QueueSet([lane, jobs])


def body(job_id: str) -> str:
    return JobMessage(job_id, {"analyzer": "echo", "input": {"x": 1}}).to_json()


def job_ids(messages: list[ReceivedMessage]) -> list[str]:
    return [json.loads(m.body)["job_id"] for m in messages]


def counts(route: Route) -> tuple[int, int]:
    return route.queue.approximate_counts()


# -- the set of queues ------------------------------------------------------------------------


def test_the_own_queue_is_served_first(both: QueueSet, lane: Route, jobs: Route) -> None:
    jobs.queue.send_body(body("j-jobs"))
    lane.queue.send_body(body("j-lane"))
    assert job_ids(both.receive(wait_s=0, visibility_s=30)) == ["j-lane"]
    assert job_ids(both.receive(wait_s=0, visibility_s=30)) == ["j-jobs"]
    assert both.receive(wait_s=0, visibility_s=30) == []


def test_a_covered_queues_message_is_settled_on_that_queue(
    both: QueueSet, lane: Route, jobs: Route
) -> None:
    jobs.queue.send_body(body("j-1"))
    (message,) = both.receive(wait_s=0, visibility_s=30)
    assert both.home(message.receipt_handle) is jobs.queue
    assert both.dead_letters(message.receipt_handle) is jobs.dlq
    both.change_visibility(message.receipt_handle, 0)  # released: visible again, there
    assert counts(jobs) == (1, 0) and counts(lane) == (0, 0)
    (again,) = both.receive(wait_s=0, visibility_s=30)
    both.delete(again.receipt_handle)
    assert counts(jobs) == (0, 0)


def test_a_batch_delete_goes_to_each_messages_queue(
    both: QueueSet, lane: Route, jobs: Route
) -> None:
    for index in range(3):
        lane.queue.send_body(body(f"lane-{index}"))
        jobs.queue.send_body(body(f"jobs-{index}"))
    held: list[ReceivedMessage] = []
    while len(held) < 6:
        got = both.receive(max_messages=10, wait_s=0, visibility_s=30)
        assert got, "every message is received"
        held += got
    assert both.delete_batch([m.receipt_handle for m in held]) == []
    assert counts(lane) == (0, 0) and counts(jobs) == (0, 0)


def test_one_queues_failed_batch_fails_only_its_messages(lane: Route, jobs: Route) -> None:
    refused = QueueError("delete_message_batch failed: throttled")
    broken = Route(FailingJobQueue(jobs.queue, refused), jobs.dlq)
    queues = QueueSet([lane, broken])
    lane.queue.send_body(body("lane"))
    jobs.queue.send_body(body("jobs"))
    first = queues.receive(wait_s=0, visibility_s=30)
    second = queues.receive(wait_s=0, visibility_s=30)
    handles = [first[0].receipt_handle, second[0].receipt_handle]
    assert queues.delete_batch(handles) == [second[0].receipt_handle]
    assert counts(lane) == (0, 0), "the lane's batch stands"
    with pytest.raises(QueueError):  # every batch failed: the caller hears of it
        queues.delete_batch([second[0].receipt_handle])


class FailingJobQueue(JobQueue):
    def __init__(self, queue: JobQueue, error: QueueError) -> None:
        super().__init__(queue.client, queue.url)
        self.error = error

    def delete_batch(self, receipt_handles: list[str]) -> list[str]:
        raise self.error


class RecordingQueue(JobQueue):
    def __init__(self, url: str) -> None:
        super().__init__(None, url)
        self.polls: list[int] = []

    def receive(
        self, *, max_messages: int = 1, wait_s: int = 20, visibility_s: int | None = None
    ) -> list[ReceivedMessage]:
        self.polls.append(wait_s)
        return []


def test_an_idle_poll_looks_at_each_queue_then_splits_the_long_poll() -> None:
    own, covered = RecordingQueue("https://q/lane"), RecordingQueue("https://q/jobs")
    queues = QueueSet([Route(own, own), Route(covered, covered)])
    assert queues.receive(wait_s=20) == []
    # A job arriving on either queue waits at most about half the long poll.
    assert own.polls == [0, 10] and covered.polls == [0, 10]
    own.polls.clear(), covered.polls.clear()
    assert queues.receive(wait_s=0) == []  # a prefetch refill: quick looks only
    assert own.polls == [0] and covered.polls == [0]


def test_a_one_queue_worker_polls_as_before_and_remembers_nothing(jobs: Route) -> None:
    own = RecordingQueue(jobs.queue.url)
    queues = QueueSet([Route(own, jobs.dlq)])
    queues.receive(wait_s=20)
    assert own.polls == [20]
    assert queues.home("any-handle") is own and queues.dead_letters("any-handle") is jobs.dlq


def test_handles_are_remembered_within_a_bound(both: QueueSet, jobs: Route) -> None:
    small = QueueSet(both.routes, remember=2)
    for index in range(3):
        jobs.queue.send_body(body(f"j-{index}"))
    got = [small.receive(wait_s=0, visibility_s=30)[0] for _ in range(3)]
    assert small.home(got[0].receipt_handle) is small.routes[0].queue, "the oldest forgotten"
    assert small.home(got[2].receipt_handle) is jobs.queue


# -- the worker's settings -----------------------------------------------------------------------


def config(**settings: Any) -> WorkerConfig:
    return WorkerConfig(
        queue_url="https://q/lane", dlq_url="https://q/lane-dlq", table_name="t", bucket="b",
        worker_id="w", **settings,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        ({"cover_queue_url": "https://q/lane", "cover_dlq_url": "https://q/d"}, "own"),
        ({"cover_queue_url": "https://q/jobs"}, "no WORKER_COVER_DLQ_URL"),
        ({"cover_dlq_url": "https://q/jobs-dlq"}, "without WORKER_COVER_QUEUE_URL"),
    ],
    ids=["its-own-queue", "no-dlq", "dlq-alone"],
)
def test_a_cover_that_cannot_be_taken_is_left_out_with_a_reason_not_a_refusal(
    settings: dict[str, str], reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    queues = worker_queues(boto3.client("sqs", region_name="us-east-1"), config(**settings))
    assert queues.urls == ("https://q/lane",)
    (left_out,) = [r for r in caplog.records if r.getMessage().startswith("covered queue")]
    assert reason in left_out.reason


def test_the_cover_variables_are_read_and_documented(
    worker_settings: pytest.MonkeyPatch,
) -> None:
    worker_settings.setenv("WORKER_COVER_QUEUE_URL", " https://q/jobs ")
    worker_settings.setenv("WORKER_COVER_DLQ_URL", "https://q/jobs-dlq")
    loaded = WorkerConfig.from_env()
    assert (loaded.cover_queue_url, loaded.cover_dlq_url) == (
        "https://q/jobs",
        "https://q/jobs-dlq",
    )
    queues = worker_queues(boto3.client("sqs", region_name="us-east-1"), loaded)
    assert queues.urls == ("q", "https://q/jobs")


# -- the standby's worker, end to end on the stack ------------------------------------------------


@pytest.fixture
def standby(stack: Stack, lane: Route, jobs: Route) -> Iterator[Callable[..., Worker]]:
    with stack_workers(
        stack,
        worker_id="unit-standby",
        wait_s=0,
        visibility_window_s=30,
        metrics_sink="off",
        queue_url=lane.queue.url,
        dlq_url=lane.dlq.url,
        cover_queue_url=jobs.queue.url,
        cover_dlq_url=jobs.dlq.url,
        tier=ON_DEMAND_TIER,
    ) as make:
        yield make


def queue_job(store: JobStore, queue: JobQueue, **fields: Any) -> str:
    job_id = new_job_id()
    request = {"analyzer": "echo", "input": {"x": 1}}
    store.create(job_id, request)
    if fields:
        store.set_fields(job_id, fields)
    queue.send(JobMessage(job_id, request, fields.get("interruptions", 0)))
    return job_id


def ending(worker: Worker, error: JobError, ran: list[str] | None = None) -> None:
    """The attempt ends with ``error`` (the supervisor is the seam to the child process)."""

    def attempt(job: Any, *args: Any, **kwargs: Any) -> AttemptOutcome:
        if ran is not None:
            ran.append(job.job_id)
        return AttemptOutcome(False, error=error, duration_s=0.1)

    worker.supervisor.run = attempt  # type: ignore[method-assign]


def test_the_standby_runs_a_jobs_queue_job_while_the_lane_is_empty(
    standby: Callable[..., Worker], job_store: JobStore, lane: Route, jobs: Route
) -> None:
    worker = standby()
    job_id = queue_job(job_store, jobs.queue)
    worker.poll_once()  # the real analysis child runs it
    record = job_store.get(job_id)
    assert record.status == JobStatus.SUCCEEDED and record.worker == "unit-standby"
    assert counts(jobs) == (0, 0), "acknowledged on the jobs queue"
    assert counts(lane) == (0, 0)


def test_the_standby_takes_the_lanes_job_before_the_jobs_queues(
    standby: Callable[..., Worker], job_store: JobStore, lane: Route, jobs: Route
) -> None:
    worker = standby()
    waiting = queue_job(job_store, jobs.queue)
    preempted = queue_job(job_store, lane.queue, interruptions=2)
    ran: list[str] = []
    ending(worker, JobError(ErrorKind.UNKNOWN, "boom"), ran)
    worker.poll_once()
    worker.poll_once()
    assert ran == [preempted, waiting]


def test_a_covered_job_stopped_on_the_standby_goes_back_to_the_jobs_queue(
    standby: Callable[..., Worker], job_store: JobStore, lane: Route, jobs: Route
) -> None:
    worker = standby()
    job_id = queue_job(job_store, jobs.queue)
    ending(worker, JobError(ErrorKind.INTERRUPTED, "standby stopping"))
    worker.poll_once()
    assert counts(lane) == (0, 0), "never onto the lane: it was not preempted on spot"
    (copy,) = jobs.queue.receive(wait_s=0, visibility_s=30)
    assert json.loads(copy.body)["job_id"] == job_id and copy.receive_count == 1
    record = job_store.get(job_id)
    assert (record.status, record.interruptions, record.attempts) == (JobStatus.QUEUED, 1, 0)


def test_a_covered_job_dead_letters_to_the_jobs_dlq(
    standby: Callable[..., Worker], job_store: JobStore, lane: Route, jobs: Route
) -> None:
    worker = standby(max_attempts=1)
    job_id = queue_job(job_store, jobs.queue)
    ending(worker, JobError(ErrorKind.ANALYZER_ERROR, "segfault"))
    worker.poll_once()
    assert job_store.get(job_id).status == JobStatus.DEAD_LETTERED
    (dead,) = jobs.dlq.receive(wait_s=0)
    assert json.loads(dead.body)["job_id"] == job_id
    assert lane.dlq.approximate_counts() == (0, 0) and counts(jobs) == (0, 0)


def test_a_lane_job_dead_letters_to_the_lanes_dlq(
    standby: Callable[..., Worker], job_store: JobStore, lane: Route, jobs: Route
) -> None:
    worker = standby(max_attempts=1)
    job_id = queue_job(job_store, lane.queue, interruptions=2)
    ending(worker, JobError(ErrorKind.ANALYZER_ERROR, "segfault"))
    worker.poll_once()
    (dead,) = lane.dlq.receive(wait_s=0)
    assert json.loads(dead.body)["job_id"] == job_id
    assert jobs.dlq.approximate_counts() == (0, 0)


def test_a_message_that_is_no_job_dead_letters_to_its_own_queues_dlq(
    standby: Callable[..., Worker], lane: Route, jobs: Route
) -> None:
    worker = standby()
    jobs.queue.send_body("not json")
    worker.poll_once()
    (dead,) = jobs.dlq.receive(wait_s=0)
    assert dead.body == "not json"
    assert dead.message_attributes["error_kind"]["StringValue"] == "INVALID_INPUT"
    assert lane.dlq.approximate_counts() == (0, 0) and counts(jobs) == (0, 0)


def test_an_aws_fault_near_the_redrive_re_sends_to_the_messages_own_queue(
    stack: Stack, standby: Callable[..., Worker], job_store: JobStore, lane: Route, jobs: Route
) -> None:
    worker = standby(max_receive_count=2, backoff_base_s=0.1, backoff_max_s=0.1)
    job_id = queue_job(job_store, jobs.queue)
    throttled = ClientError(
        {"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "UpdateItem"
    )
    worker.store._client = FailingClient(worker.store._client, "update_item", throttled)
    worker.poll_once()
    assert counts(lane) == (0, 0), "the copy never lands on the standby's own queue"
    (fresh,) = jobs.queue.receive(wait_s=0, visibility_s=30)
    assert json.loads(fresh.body)["job_id"] == job_id and fresh.receive_count == 1


def notice(seconds: float) -> Interruption:
    now = time.time()
    return Interruption("imds-spot", InterruptionAction.TERMINATE, now, now + seconds)


def test_a_covered_job_declined_under_a_notice_is_re_sent_to_its_own_queue(
    standby: Callable[..., Worker], job_store: JobStore, lane: Route, jobs: Route
) -> None:
    # An on-demand standby is rarely reclaimed, but a stopped one drains the same way.
    worker = standby(imds_endpoint="", prefetch=0, max_receive_count=2)
    try:
        worker.on_interruption(notice(120))
        job_id = new_job_id()
        request = {"analyzer": "sleep", "input": None}  # the stack's cap: it never fits
        job_store.create(job_id, request)
        jobs.queue.send(JobMessage(job_id, request))
        worker.poll_once()
        assert counts(lane) == (0, 0), "never onto the standby's own queue"
        (fresh,) = jobs.queue.receive(wait_s=0, visibility_s=30)
        assert json.loads(fresh.body)["job_id"] == job_id and fresh.receive_count == 1
        assert job_store.get(job_id).attempts == 0
    finally:
        worker.stops.close()
