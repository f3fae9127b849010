"""Dead-lettering is record -> DLQ send -> mark sent -> delete. The process may die between any
two steps; the redelivered copy must finish the rest, losing nothing and changing nothing."""

from __future__ import annotations

import json
from collections.abc import Callable

import boto3
import pytest

from devstack.cfn import Stack, provision
from gpu_worker.consumer import Worker
from spotline.contract import JobMessage, JobStatus, job_id_from_body, new_job_id
from spotline.jobstore import JobStore
from spotline.queue import JobQueue, ReceivedMessage
from tests.unit.conftest import stack_worker_config


class Crash(BaseException):
    """Stands in for the process dying (BaseException: nothing on the way may catch it)."""


@pytest.fixture
def make_worker(stack: Stack) -> Callable[[], Worker]:
    def make() -> Worker:
        config = stack_worker_config(
            stack,
            worker_id="unit",
            wait_s=0,
            visibility_window_s=30,
            metrics_sink="off",
        )
        return Worker(
            config,
            sqs=boto3.client("sqs"),
            dynamodb=boto3.client("dynamodb"),
            s3=boto3.client("s3"),
        )

    return make


@pytest.fixture
def dlq(stack: Stack) -> JobQueue:
    return JobQueue(boto3.client("sqs"), stack.ref("JobsDeadLetterQueue"))


def queue_invalid_job(job_store: JobStore, queue: JobQueue) -> str:
    """A job the worker dead-letters without running it (its request fails the schema)."""
    job_id = new_job_id()
    request = {"analyzer": "no-such-analyzer", "input": 1}
    job_store.create(job_id, request)
    queue.send(JobMessage(job_id, request))
    return job_id


def crash_at(worker: Worker, step: str, seen: list[ReceivedMessage]) -> None:
    def crash_point(name: str) -> None:
        if name == step:
            raise Crash(name)

    original = worker.handle

    def handle(message: ReceivedMessage) -> None:
        seen.append(message)
        original(message)

    worker.settle.crash_point = crash_point
    worker.handle = handle  # type: ignore[method-assign]


@pytest.mark.parametrize(
    ("step", "dlq_copies"),
    [("after_record", 1), ("after_dlq_send", 2), ("after_dlq_marked", 1)],
)
def test_a_crash_between_dead_letter_steps_loses_nothing(
    make_worker: Callable[[], Worker],
    job_store: JobStore,
    queue: JobQueue,
    dlq: JobQueue,
    step: str,
    dlq_copies: int,
) -> None:
    job_id = queue_invalid_job(job_store, queue)
    first = make_worker()
    seen: list[ReceivedMessage] = []
    crash_at(first, step, seen)
    with pytest.raises(Crash):
        first.poll_once()
    crashed = job_store.get(job_id)
    assert crashed.status == JobStatus.DEAD_LETTERED
    assert queue.approximate_counts() == (0, 1), "the message must survive the crash"
    # The visibility window of the dead holder runs out: the message comes back.
    queue.change_visibility(seen[0].receipt_handle, 0)

    make_worker().poll_once()

    assert queue.approximate_counts() == (0, 0)
    final = job_store.get(job_id)
    assert (final.status, final.last_error, final.attempts, final.finished_at) == (
        crashed.status,
        crashed.last_error,
        crashed.attempts,
        crashed.finished_at,
    )
    assert final.extra["dlq_sent"] is True
    copies = dlq.receive(max_messages=10, wait_s=0)
    # Crashing after the send but before the mark sends an identical second copy: at-least-once
    # to the DLQ, whose consumer keys its effects on the job_id attribute.
    assert len(copies) == dlq_copies
    for copy in copies:
        assert copy.message_attributes["job_id"]["StringValue"] == job_id
        assert copy.message_attributes["error_kind"]["StringValue"] == "INVALID_INPUT"
        assert json.loads(copy.body)["job_id"] == job_id


def test_no_crash_means_one_dlq_copy_and_no_source_message(
    make_worker: Callable[[], Worker], job_store: JobStore, queue: JobQueue, dlq: JobQueue
) -> None:
    job_id = queue_invalid_job(job_store, queue)
    make_worker().poll_once()
    (copy,) = dlq.receive(max_messages=10, wait_s=0)
    assert copy.message_attributes["attempts"]["StringValue"] == "0"  # it never ran
    assert job_store.get(job_id).status == JobStatus.DEAD_LETTERED
    assert queue.approximate_counts() == (0, 0)


def test_queue_redrive_after_max_receive_count_keeps_the_job_id(aws: None) -> None:
    """The hard-crash net: a worker that dies on every receive never dead-letters the job
    itself; SQS does, and the DLQ side still finds the job from the body."""
    # moto keeps a message's receive count when it moves it, so the DLQ's own redrive (to the
    # notification-failures queue) must not fire on the first look here: give it room.
    stack = provision(
        boto3.Session(region_name="us-east-1"),
        stack_name="redrive",
        parameters={"NotificationMaxReceiveCount": 100},
    )
    job_store = JobStore(boto3.client("dynamodb"), stack.ref("JobsTable"))
    queue = JobQueue(boto3.client("sqs"), stack.ref("JobsQueue"))
    dlq = JobQueue(boto3.client("sqs"), stack.ref("JobsDeadLetterQueue"))
    job_id = queue_invalid_job(job_store, queue)
    max_receives = int(stack.parameters["MaxReceiveCount"])
    assert max_receives > 3, "redrive must leave room above WORKER_MAX_ATTEMPTS (3)"
    for _ in range(max_receives):
        (message,) = queue.receive(wait_s=0, visibility_s=0)
    assert queue.receive(wait_s=0, visibility_s=0) == []
    (redriven,) = dlq.receive(wait_s=0)
    assert redriven.message_id == message.message_id
    assert job_id_from_body(redriven.body) == job_id
