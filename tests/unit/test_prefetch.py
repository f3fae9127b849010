"""Bounded prefetch, background finishing, batched deletes, and the redrive headroom they need."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from devstack.cfn import Stack, load_template, provision
from devstack.motoserver import wait_until
from enqueue.submission import submit
from gpu_worker.config import WorkerConfig
from gpu_worker.prefetch import PREFETCH_RELEASE_ALLOWANCE, Acker, Finisher, Prefetcher
from spotline.contract import JobStatus
from spotline.jobstore import JobStore, TransitionRefused
from spotline.queue import JobQueue, QueueError, ReceivedMessage
from spotline.settings import MissingSetting
from spotline_ops import doctor
from tests.unit.test_doctor import errors

_queue_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def module_stack() -> Iterator[Stack]:
    """One stack for the module (provisioning the whole template takes a second per test)."""
    with mock_aws():
        yield provision(boto3.Session(region_name="us-east-1"), stack_name="prefetch")


@pytest.fixture
def job_store(module_stack: Stack) -> JobStore:
    return JobStore(boto3.client("dynamodb"), module_stack.ref("JobsTable"))


@pytest.fixture
def queue(module_stack: Stack) -> JobQueue:
    """A fresh queue per test with the job queue's own settings (redrive included)."""
    sqs = boto3.client("sqs")
    settings = sqs.get_queue_attributes(
        QueueUrl=module_stack.ref("JobsQueue"), AttributeNames=["All"]
    )["Attributes"]
    keep = {"VisibilityTimeout", "RedrivePolicy", "MessageRetentionPeriod", "MaximumMessageSize"}
    url = sqs.create_queue(
        QueueName=f"prefetch-{next(_queue_numbers)}",
        Attributes={k: v for k, v in settings.items() if k in keep},
    )["QueueUrl"]
    return JobQueue(sqs, url)


class CountingQueue(JobQueue):
    """The real (moto) queue, recording visibility changes and receives; can fail calls."""

    def __init__(self, queue: JobQueue, *, failing_receives: int = 0) -> None:
        super().__init__(queue.client, queue.url)
        self.visibility_changes: list[int] = []
        self.receives: list[dict[str, Any]] = []
        self.failing_receives = failing_receives
        self.failing_batch_deletes = 0

    def change_visibility(self, receipt_handle: str, visibility_s: int) -> None:
        self.visibility_changes.append(visibility_s)
        super().change_visibility(receipt_handle, visibility_s)

    def receive(self, **kwargs: Any) -> list[ReceivedMessage]:
        self.receives.append(kwargs)
        if self.failing_receives:
            self.failing_receives -= 1
            raise QueueError("receive_message failed: throttled")
        return super().receive(**kwargs)

    def delete_batch(self, receipt_handles: list[str]) -> list[str]:
        if self.failing_batch_deletes:
            self.failing_batch_deletes -= 1
            raise QueueError("delete_message_batch failed: throttled")
        return super().delete_batch(receipt_handles)


def send_jobs(queue: JobQueue, job_store: JobStore, count: int) -> list[str]:
    return [
        submit(
            {"analyzer": "echo", "input": {"n": n}},
            store=job_store,
            queue=queue,
            max_message_bytes=262144,
        ).job_id
        for n in range(count)
    ]


def test_prefetch_refills_only_on_a_backlog_and_never_above_its_capacity(
    queue: JobQueue, job_store: JobStore
) -> None:
    send_jobs(queue, job_store, 6)
    counting = CountingQueue(queue)
    prefetch = Prefetcher(counting, capacity=3, visibility_window_s=120).start()
    try:
        first = queue.receive(max_messages=1, wait_s=0)
        prefetch.offer(first, backlog=False)
        assert prefetch.held == 1
        assert counting.receives == [], "no backlog: no receive of its own"
        taken = prefetch.take()
        assert taken is not None and taken[0].message_id == first[0].message_id
        prefetch.offer(queue.receive(max_messages=1, wait_s=0), backlog=True)
        wait_until(lambda: prefetch.held == 3, timeout=5, what="refilled to capacity")
        assert all(call["wait_s"] == 0 for call in counting.receives), "short polls only"
        assert all(call["max_messages"] <= 2 for call in counting.receives)
        assert queue.approximate_counts() == (2, 4)  # 3 held + the one taken
    finally:
        prefetch.close()


def test_prefetch_takes_no_more_while_jobs_are_long(queue: JobQueue, job_store: JobStore) -> None:
    send_jobs(queue, job_store, 3)
    short_jobs = threading.Event()
    counting = CountingQueue(queue)
    prefetch = Prefetcher(
        counting, capacity=2, visibility_window_s=120, may_refill=short_jobs.is_set
    ).start()
    try:
        prefetch.offer(queue.receive(max_messages=1, wait_s=0), backlog=True)
        assert prefetch.take() is not None
        assert counting.receives == [] and prefetch.held == 0
        short_jobs.set()
        wait_until(lambda: prefetch.held == 2, timeout=5, what="refill once jobs are short")
    finally:
        prefetch.close()


def test_held_messages_are_kept_invisible_by_the_heartbeat(
    queue: JobQueue, job_store: JobStore
) -> None:
    send_jobs(queue, job_store, 1)
    counting = CountingQueue(queue)
    prefetch = Prefetcher(counting, capacity=1, visibility_window_s=3).start()
    try:
        prefetch.offer(queue.receive(max_messages=1, wait_s=0, visibility_s=3), backlog=False)
        wait_until(lambda: counting.visibility_changes == [3], timeout=3, what="an extension")
        assert queue.approximate_counts() == (0, 1)
        assert prefetch.extensions == 1
    finally:
        prefetch.close()


def test_stopping_releases_held_messages_at_once_and_never_as_an_attempt(
    queue: JobQueue, job_store: JobStore
) -> None:
    job_ids = send_jobs(queue, job_store, 3)
    stopping = threading.Event()
    counting = CountingQueue(queue)
    prefetch = Prefetcher(
        counting,
        capacity=3,
        visibility_window_s=120,
        may_receive=lambda: not stopping.is_set(),
    ).start()
    try:
        prefetch.offer(queue.receive(max_messages=3, wait_s=0), backlog=True)
        assert prefetch.held == 3
        stopping.set()  # what a spot notice or SIGTERM does to the worker
        wait_until(lambda: prefetch.held == 0, timeout=2, what="released by the receiver")
        assert counting.visibility_changes == [0, 0, 0]
        assert queue.approximate_counts() == (3, 0), "visible now, not after the window"
        for job_id in job_ids:
            record = job_store.get(job_id)
            assert record is not None
            assert (record.status, record.attempts, record.owner_token) == (
                JobStatus.QUEUED,
                0,
                None,
            )
        assert counting.receives == [], "a stopping worker takes nothing new"
    finally:
        prefetch.close()


def test_close_releases_what_is_held_and_what_is_offered_after(
    queue: JobQueue, job_store: JobStore
) -> None:
    send_jobs(queue, job_store, 3)
    prefetch = Prefetcher(queue, capacity=1, visibility_window_s=120).start()
    prefetch.offer(queue.receive(max_messages=1, wait_s=0), backlog=False)
    assert prefetch.close() == 1
    prefetch.offer(queue.receive(max_messages=2, wait_s=0), backlog=True)
    assert prefetch.held == 0 and prefetch.released == 3
    assert queue.approximate_counts() == (3, 0)


def test_a_failing_receive_backs_off_and_the_receiver_lives_on(
    queue: JobQueue, job_store: JobStore
) -> None:
    send_jobs(queue, job_store, 2)
    counting = CountingQueue(queue, failing_receives=1)
    prefetch = Prefetcher(counting, capacity=1, visibility_window_s=120, error_backoff_s=0.05)
    prefetch.start()
    try:
        prefetch.offer(queue.receive(max_messages=1, wait_s=0), backlog=True)
        assert prefetch.take() is not None
        wait_until(lambda: prefetch.held == 1, timeout=5, what="a receive after the failure")
        assert counting.failing_receives == 0 and len(counting.receives) >= 2
    finally:
        prefetch.close()


def test_acks_are_deleted_in_batches_and_a_failed_entry_is_only_counted(
    queue: JobQueue, job_store: JobStore
) -> None:
    send_jobs(queue, job_store, 12)
    received = queue.receive(max_messages=10, wait_s=0) + queue.receive(max_messages=10, wait_s=0)
    assert len(received) == 12
    acker = Acker(queue, max_delay_s=5).start()
    try:
        for message in received[:10]:
            acker.ack(message.receipt_handle)  # the tenth fills a batch: sent at once
        wait_until(lambda: acker.deleted == 10, timeout=3, what="a full batch deleted")
        acker.ack("not-a-receipt-handle")
        for message in received[10:]:
            acker.ack(message.receipt_handle)
        acker.flush()
        assert (acker.deleted, acker.failed) == (12, 1)
        assert queue.approximate_counts() == (0, 0)
    finally:
        acker.close()


def test_a_failed_batch_delete_leaves_the_messages_for_redelivery(
    queue: JobQueue, job_store: JobStore
) -> None:
    send_jobs(queue, job_store, 2)
    counting = CountingQueue(queue)
    counting.failing_batch_deletes = 1
    received = queue.receive(max_messages=2, wait_s=0)
    acker = Acker(counting, max_delay_s=5).start()
    for message in received:
        acker.ack(message.receipt_handle)
    acker.close()  # the flush fails: nothing raised, both counted, both still on the queue
    assert (acker.deleted, acker.failed) == (0, 2)
    assert queue.approximate_counts() == (0, 2)


def test_acks_now_and_after_close_are_deleted_on_the_callers_thread(
    queue: JobQueue, job_store: JobStore
) -> None:
    send_jobs(queue, job_store, 2)
    first, second = queue.receive(max_messages=2, wait_s=0)
    acker = Acker(queue, max_delay_s=60).start()
    acker.ack(first.receipt_handle, now=True)
    assert acker.deleted == 1
    acker.close()
    acker.ack(second.receipt_handle)
    assert acker.deleted == 2 and queue.approximate_counts() == (0, 0)


def test_finisher_runs_steps_in_order_and_survives_a_failing_one() -> None:
    finisher = Finisher(depth=1).start()
    done: list[str] = []

    def fail() -> None:
        raise RuntimeError("complete refused")

    finisher.submit("a", lambda: done.append("a"))
    finisher.submit("b", fail)
    finisher.submit("c", lambda: done.append("c"))
    assert finisher.drain(timeout_s=5)
    finisher.close()
    finisher.submit("d", lambda: done.append("d"))  # closed: runs at once
    assert done == ["a", "c", "d"]
    assert (finisher.finished, finisher.failed) == (3, 1)


def test_finisher_threads_record_two_jobs_side_by_side_and_drain_waits_for_both() -> None:
    finisher = Finisher(depth=2, threads=2).start()
    second_started = threading.Event()
    release_second = threading.Event()
    done: list[str] = []

    def first() -> None:
        # Finishes only once the second step is running: with one thread this would time out.
        assert second_started.wait(5), "the second job was not recorded alongside the first"
        done.append("a")

    def second() -> None:
        second_started.set()
        assert release_second.wait(5)
        done.append("b")

    finisher.submit("a", first)
    finisher.submit("b", second)
    assert second_started.wait(5)
    assert not finisher.drain(timeout_s=0.05), "drain returned while a step still ran"
    release_second.set()
    assert finisher.drain(timeout_s=5)
    assert sorted(done) == ["a", "b"] and (finisher.finished, finisher.failed) == (2, 0)
    finisher.close()
    assert not any(thread.is_alive() for thread in finisher._threads)


def test_finisher_needs_a_thread() -> None:
    with pytest.raises(ValueError, match="at least one thread"):
        Finisher(threads=0)


def test_claim_queued_is_one_conditional_write_and_refuses_everything_else(
    queue: JobQueue, job_store: JobStore
) -> None:
    (job_id,) = send_jobs(queue, job_store, 1)
    record, ran_before = job_store.claim_queued(job_id, "owner-1", "worker-a")
    assert (record.status, record.owner_token, record.worker, ran_before) == (
        JobStatus.RUNNING,
        "owner-1",
        "worker-a",
        False,
    )
    assert job_store.get(job_id) == record
    with pytest.raises(TransitionRefused):
        job_store.claim_queued(job_id, "owner-2", "worker-b")  # RUNNING: the read path decides
    with pytest.raises(TransitionRefused):
        job_store.claim_queued("no-such-job", "owner-3", "worker-b")
    assert job_store.get("no-such-job") is None, "a refused claim creates no record"
    job_store.release(job_id, "owner-1", job_store.get(job_id).last_error or _error())
    _, ran_before = job_store.claim_queued(job_id, "owner-4", "worker-b")
    assert ran_before, "a job that started before may have left a checkpoint"


def _error() -> Any:
    from spotline.contract import ErrorKind
    from spotline.jobstore import JobError

    return JobError(ErrorKind.TIMEOUT, "slow")


def test_prefetch_settings_are_bounded(worker_settings: pytest.MonkeyPatch) -> None:
    monkeypatch = worker_settings
    assert WorkerConfig.from_env().prefetch == 4
    monkeypatch.setenv("WORKER_PREFETCH", "0")
    assert WorkerConfig.from_env().prefetch == 0
    monkeypatch.setenv("WORKER_PREFETCH", "10")  # the idle receive asks for 1 + this, max 10
    with pytest.raises(MissingSetting, match="WORKER_PREFETCH"):
        WorkerConfig.from_env()


def test_redrive_stays_above_attempts_plus_the_releases_prefetch_can_cause() -> None:
    template = load_template()
    max_receives = int(template["Parameters"]["MaxReceiveCount"]["Default"])
    assert max_receives > WorkerConfig.max_attempts + PREFETCH_RELEASE_ALLOWANCE
    assert errors(template, "max-receive-count") == []
    limit = WorkerConfig.max_attempts + PREFETCH_RELEASE_ALLOWANCE
    (finding,) = errors(template, "max-receive-count", MaxReceiveCount=limit)
    assert "prefetched" in finding.message
    assert f"at least {limit + 1}" in finding.fix
    assert doctor.PREFETCH_RELEASE_ALLOWANCE == PREFETCH_RELEASE_ALLOWANCE
