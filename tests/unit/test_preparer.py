"""The next job prepared while the current one runs: claimed ahead under the lease, never counted
as an attempt until it starts, shown as not started, given back at once on a stop or a drain."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from devstack.motoserver import wait_until
from gpu_worker.analyzers import Job
from gpu_worker.attempt import Attempt
from gpu_worker.checkpoint import InputError
from gpu_worker.claim import Claimer
from gpu_worker.decisions import ClaimVerdict
from gpu_worker.prefetch import Prefetcher
from gpu_worker.preparer import Prepared, Preparer
from spotline.contract import JobStatus, RequestPolicy
from spotline.jobstore import JobStore, JobStoreError, TransitionRefused
from spotline.queue import JobQueue
from tests.unit.test_prefetch import (  # noqa: F401 - fixtures
    CountingQueue,
    job_store,
    module_stack,
    queue,
    send_jobs,
)


def plain_job(attempt: Attempt) -> tuple[Job, Any]:
    assert attempt.record is not None and attempt.request is not None
    request = attempt.request
    return Job(attempt.record.job_id, request["analyzer"], request.get("input"), {}), None


class Parts:
    """A prefetcher holding the queue's messages and a preparer on top of it."""

    def __init__(
        self,
        jobs_queue: JobQueue,
        store: JobStore,
        counting: CountingQueue | None = None,
        **preparer: Any,
    ) -> None:
        self.queue = counting or CountingQueue(jobs_queue)
        self.store = store
        self.taking = threading.Event()
        self.taking.set()
        self.prefetch = Prefetcher(
            self.queue, capacity=3, visibility_window_s=120, may_receive=self.taking.is_set
        ).start()
        options: dict[str, Any] = {
            "store": store,
            "queue": self.queue,
            "visibility_window_s": 120,
            "may_prepare": self.taking.is_set,
            **preparer,
        }
        claimer = Claimer(store, RequestPolicy(), worker_id="w1", lease_s=120)
        self.preparer = Preparer(
            self.prefetch, claimer, options.pop("prepare_job", plain_job), **options
        ).start()

    def hold(self, count: int) -> None:
        self.prefetch.offer(self.queue.receive(max_messages=count, wait_s=0), backlog=False)

    def close(self) -> None:
        self.preparer.close()
        self.prefetch.close()


@pytest.fixture
def parts(queue: JobQueue, job_store: JobStore) -> Iterator[Parts]:  # noqa: F811
    built = Parts(queue, job_store)
    yield built
    built.close()


def prepared_records(store: JobStore, job_ids: list[str]) -> list[Any]:
    return [r for r in (store.get(j) for j in job_ids) if r is not None and r.prepared]


def test_the_next_job_is_claimed_ahead_and_shows_as_not_started(
    parts: Parts,
    queue: JobQueue,  # noqa: F811
    job_store: JobStore,  # noqa: F811
) -> None:
    job_ids = send_jobs(queue, job_store, 2)
    parts.hold(2)
    wait_until(lambda: prepared_records(job_store, job_ids), timeout=5, what="one prepared")
    (record,) = prepared_records(job_store, job_ids)  # one ahead, never more
    assert record.status == JobStatus.RUNNING and record.owner_token is not None
    assert record.lease_expires_at is not None, "claimed under the lease"
    assert record.started_at is None and record.attempt_ids == frozenset()
    assert record.attempts == 0 and record.to_public()["prepared_at"] is not None
    assert parts.prefetch.held == 1, "the other message stays held, unclaimed"


def test_a_taken_job_counts_from_its_start_mark_on(
    parts: Parts,
    queue: JobQueue,  # noqa: F811
    job_store: JobStore,  # noqa: F811
) -> None:
    (job_id,) = send_jobs(queue, job_store, 1)
    parts.hold(1)
    prepared = parts.preparer.take()
    assert prepared is not None and prepared.verdict().verdict is ClaimVerdict.RUN
    job, _ = prepared.ready()
    assert (job.job_id, job.attempt) == (job_id, 1)
    parts.preparer.mark_started(prepared.attempt)
    prepared.attempt.wait_started(job_store)
    record = job_store.get(job_id)
    assert record is not None and not record.prepared and record.started_at is not None
    assert record.attempt_ids == {prepared.attempt.attempt_id}


def test_a_stop_gives_the_prepared_job_back_at_once_and_counts_nothing(
    parts: Parts,
    queue: JobQueue,  # noqa: F811
    job_store: JobStore,  # noqa: F811
) -> None:
    job_ids = send_jobs(queue, job_store, 2)
    parts.hold(2)
    wait_until(lambda: prepared_records(job_store, job_ids), timeout=5, what="one prepared")
    parts.taking.clear()  # a spot notice, SIGTERM or a drain
    wait_until(lambda: parts.preparer.given_back == 1, timeout=2, what="given back")
    wait_until(lambda: queue.approximate_counts() == (2, 0), timeout=2, what="both visible")
    for job_id in job_ids:
        record = job_store.get(job_id)
        assert record is not None
        assert (record.status, record.attempts, record.interruptions) == (JobStatus.QUEUED, 0, 0)
        assert record.prepared_at is None and record.started_at is None
        assert record.owner_token is None and record.attempt_ids == frozenset()
    assert parts.preparer.take(wait_s=0.2) is None, "a stopping worker starts nothing"


def test_close_gives_back_the_prepared_job(
    parts: Parts,
    queue: JobQueue,  # noqa: F811
    job_store: JobStore,  # noqa: F811
) -> None:
    job_ids = send_jobs(queue, job_store, 1)
    parts.hold(1)
    wait_until(lambda: prepared_records(job_store, job_ids), timeout=5, what="prepared")
    assert parts.preparer.close() == 1
    record = job_store.get(job_ids[0])
    assert record is not None and (record.status, record.attempts) == (JobStatus.QUEUED, 0)
    assert queue.approximate_counts() == (1, 0)


def test_a_long_job_in_the_child_sends_the_prepared_one_back(
    queue: JobQueue,  # noqa: F811
    job_store: JobStore,  # noqa: F811
) -> None:
    short = threading.Event()
    short.set()
    parts = Parts(queue, job_store, may_prepare=short.is_set)
    try:
        job_ids = send_jobs(queue, job_store, 1)
        parts.hold(1)
        wait_until(lambda: prepared_records(job_store, job_ids), timeout=5, what="prepared")
        short.clear()  # the job in the child passed WORKER_PREFETCH_MAX_JOB_S
        wait_until(lambda: parts.preparer.given_back == 1, timeout=2, what="given back")
        record = job_store.get(job_ids[0])
        assert record is not None and (record.status, record.attempts) == (JobStatus.QUEUED, 0)
    finally:
        parts.close()


def test_what_claiming_or_preparing_raised_reaches_the_loop(
    queue: JobQueue,  # noqa: F811
    job_store: JobStore,  # noqa: F811
) -> None:
    def unreadable(attempt: Attempt) -> tuple[Job, Any]:
        raise InputError("input_uri outside inputs/")

    parts = Parts(queue, job_store, prepare_job=unreadable)
    try:
        send_jobs(queue, job_store, 1)
        parts.hold(1)
        prepared = parts.preparer.take()
        assert prepared is not None and prepared.verdict().verdict is ClaimVerdict.RUN
        with pytest.raises(InputError, match="outside inputs"):
            prepared.ready()
    finally:
        parts.close()
    failed = Prepared(Attempt(prepared.attempt.message), error=JobStoreError("throttled"))
    with pytest.raises(JobStoreError, match="throttled"):
        failed.verdict()


def test_a_failed_start_mark_is_written_again_before_an_outcome(
    queue: JobQueue,  # noqa: F811
    job_store: JobStore,  # noqa: F811
) -> None:
    (job_id,) = send_jobs(queue, job_store, 1)
    message = queue.receive(max_messages=1, wait_s=0)[0]
    attempt = Attempt(message)
    claimer = Claimer(job_store, RequestPolicy(), worker_id="w1", lease_s=120)
    assert claimer.claim(attempt, prepared=True).verdict is ClaimVerdict.RUN
    failed: concurrent.futures.Future[None] = concurrent.futures.Future()
    failed.set_exception(JobStoreError("update_item failed: throttled"))
    attempt.start_mark = failed
    attempt.wait_started(job_store)
    record = job_store.get(job_id)
    assert record is not None and record.started_at is not None and not record.prepared
    # Not ours any more: the outcome must not be written.
    job_store.give_back(job_id, attempt.token or "")
    failed_again: concurrent.futures.Future[None] = concurrent.futures.Future()
    failed_again.set_exception(JobStoreError("timeout"))
    attempt.start_mark = failed_again
    with pytest.raises(TransitionRefused):
        attempt.wait_started(job_store)


class GatedQueue(CountingQueue):
    """Short polls after the first receive (the prefetcher's refills) wait for ``gate``."""

    def __init__(self, jobs_queue: JobQueue) -> None:
        super().__init__(jobs_queue)
        self.gate = threading.Event()
        self.waiting = threading.Event()

    def receive(self, **kwargs: Any) -> list[Any]:
        if kwargs.get("wait_s") == 0 and self.receives:
            self.waiting.set()
            assert self.gate.wait(10), "the test never opened the gate"
        return super().receive(**kwargs)


def test_the_loop_waits_for_a_refill_in_flight_instead_of_polling_itself(
    queue: JobQueue,  # noqa: F811
    job_store: JobStore,  # noqa: F811
) -> None:
    gated = GatedQueue(queue)
    parts = Parts(queue, job_store, counting=gated)
    try:
        send_jobs(queue, job_store, 3)
        parts.prefetch.offer(gated.receive(max_messages=1, wait_s=1), backlog=True)
        first = parts.preparer.take()
        assert first is not None, "the held message, prepared"
        wait_until(gated.waiting.is_set, timeout=5, what="a refill in flight")
        taken: list[Prepared | None] = []
        waiter = threading.Thread(target=lambda: taken.append(parts.preparer.take(wait_s=5)))
        waiter.start()
        waiter.join(0.3)
        assert waiter.is_alive(), "no long poll of its own while a refill is on its way"
        gated.gate.set()
        waiter.join(5)
        assert taken and taken[0] is not None and taken[0].verdict().verdict is ClaimVerdict.RUN
        parts.preparer.give_back(first)
    finally:
        gated.gate.set()
        parts.close()
