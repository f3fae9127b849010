"""Prepare the next job while the current one runs, so the device never waits on AWS.

On a backlog of short jobs the gap between two jobs on the device was the next job's claim: one
conditional write to DynamoDB (a network round trip, more under load), then its input and its
checkpoint, all while the analysis child sat idle. The ``Preparer`` does that work on a thread
of its own while the current job runs: it takes the next held message from the prefetcher,
claims its job **ahead** (``prepared``: RUNNING under our token and lease, ``prepared_at`` set,
no attempt id), loads its input and restores its checkpoint, and holds the result ready. When
the child is free the loop takes it and sends it at once; the start mark (``mark_started``:
``started_at``, the attempt id, ``prepared_at`` gone) is written on another thread right after
the job is sent, and every outcome of the attempt is written only once the mark is durable.

A prepared job is never started on anyone's word but the loop's, so:

- it is never counted as an attempt: its attempt id comes with the start mark, and giving it
  back (``give_back``: QUEUED, nothing incremented) leaves no trace but a receive;
- it is given back at once (job first, then its message at visibility 0) when the worker
  stops taking jobs (a notice, SIGTERM, a drain) or the job in the child runs past
  ``WORKER_PREFETCH_MAX_JOB_S`` (a long job: another GPU may be idle), and on ``close``;
- its record shows it claimed but not started (``prepared_at``, no ``started_at`` of its own);
- while it waits, its message and lease are extended by the heartbeat rule.

At most one job is prepared ahead: one is what closes the gap, and each more would hold a job
RUNNING that no device runs.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools import Logger

from gpu_worker.analyzers import Job
from gpu_worker.attempt import Attempt
from gpu_worker.claim import Claim, Claimer
from gpu_worker.decisions import ClaimVerdict
from gpu_worker.heartbeat import Heartbeat
from gpu_worker.prefetch import Prefetcher
from spotline.jobstore import JobStore
from spotline.queue import JobQueue, QueueError

logger = Logger(service="spotline-worker", child=True)

# How often the preparer looks whether it must give its job back (a stop, a drain, a long job).
_CHECK_S = 0.05
# Start marks written side by side: one job's mark may still be in flight when the next starts.
START_MARK_THREADS = 2


@dataclass
class Prepared:
    """A message made ready on the preparer's thread; the loop settles it as if it had done the
    work itself. ``claim`` is None when claiming raised (``error``); ``job`` is None when the
    verdict is not RUN or preparing the job raised (``error``)."""

    attempt: Attempt
    claim: Claim | None = None
    job: Job | None = None
    restored: Any = None
    error: Exception | None = None
    heartbeat: Heartbeat | None = None

    def verdict(self) -> Claim:
        """The claim's verdict; raises what claiming raised."""
        if self.claim is None:
            assert self.error is not None
            raise self.error
        return self.claim

    def ready(self) -> tuple[Job, Any]:
        """The job and the state it resumes from; raises what preparing it raised."""
        if self.job is None:
            assert self.error is not None
            raise self.error
        return self.job, self.restored


PrepareJob = Callable[[Attempt], tuple[Job, Any]]


def give_back(
    prepared: Prepared, store: JobStore, queue: JobQueue, *, release: bool = True
) -> None:
    """Never started: the job goes back QUEUED (nothing counted), then (``release``) its
    message at once."""
    attempt = prepared.attempt
    if attempt.claimed and attempt.record is not None and attempt.token is not None:
        try:
            store.give_back(attempt.record.job_id, attempt.token)
        except Exception:  # our lease runs out instead; the job is taken over then
            logger.warning(
                "could not give a prepared job back; its lease runs out",
                extra={"job_id": attempt.record.job_id},
                exc_info=True,
            )
    if release:
        try:
            queue.change_visibility(attempt.message.receipt_handle, 0)
        except QueueError:
            logger.warning("could not release a prepared job's message", exc_info=True)
    logger.info("prepared job given back, never started", extra={"job_id": attempt.job_id})


class Preparer:
    def __init__(
        self,
        source: Prefetcher,
        claimer: Claimer,
        prepare_job: PrepareJob,
        *,
        store: JobStore,
        queue: JobQueue,
        visibility_window_s: int,
        may_prepare: Callable[[], bool],
    ) -> None:
        self._source = source
        self._claimer = claimer
        self._prepare_job = prepare_job
        self._store = store
        self._queue = queue
        self._window_s = visibility_window_s
        self._may_prepare = may_prepare  # False: stopping, draining or a long job (give back)
        self._ready: Prepared | None = None
        self._preparing = False  # a message taken from the source is being prepared
        self._closed = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="preparer", daemon=True)
        self._marks = concurrent.futures.ThreadPoolExecutor(
            max_workers=START_MARK_THREADS, thread_name_prefix="start-mark"
        )
        self.prepared = 0
        self.given_back = 0

    def start(self) -> Preparer:
        self._thread.start()
        return self

    @property
    def holding(self) -> bool:
        """A job is prepared or being prepared."""
        with self._changed:
            return self._ready is not None or self._preparing

    def take(self, wait_s: float = 30.0) -> Prepared | None:
        """The prepared job, now the caller's to start; waits while one is being prepared or
        the source holds a message the preparer is about to take. None when nothing is held."""
        deadline = time.monotonic() + wait_s
        with self._changed:
            while self._ready is None and not self._closed:
                # Read in this order: the source marks us preparing under its own lock as it
                # hands a message over, so "none held and not preparing" means none in flight.
                # A refill on its way is waited for: a long poll of our own would race it, and
                # its first message would be claimed on the critical path.
                idle = self._source.held == 0 and not self._preparing
                if idle and not self._source.refilling:
                    return None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._changed.wait(min(remaining, _CHECK_S))
            ready, self._ready = self._ready, None
            self._changed.notify_all()
        if ready is not None and ready.heartbeat is not None:
            ready.attempt.extended_at = ready.heartbeat.extended_at
        return ready

    def mark_started(self, attempt: Attempt) -> None:
        """The job claimed ahead is in the child now: write its start mark off the critical
        path. ``Attempt.wait_started`` holds every outcome write until it is durable."""
        if not attempt.prepared or attempt.token is None or attempt.record is None:
            return
        attempt.start_mark = self._marks.submit(
            self._store.mark_started, attempt.record.job_id, attempt.token
        )

    def close(self) -> int:
        """Give back the prepared job (and the one being prepared, once it is); returns how
        many were given back. Start marks in flight are written first."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        with self._changed:
            ready, self._ready = self._ready, None
        if ready is not None:
            self.give_back(ready)
        self._marks.shutdown(wait=True)
        return self.given_back

    def give_back(self, prepared: Prepared, *, release: bool = True) -> None:
        give_back(prepared, self._store, self._queue, release=release)
        self.given_back += 1

    # -- the preparer's thread -----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._changed:
                if self._closed:
                    return
                give_back = None
                if self._ready is not None and not self._may_prepare():
                    give_back, self._ready = self._ready, None
                ready = self._ready
                want = ready is None and give_back is None and self._may_prepare()
            if give_back is not None:
                self.give_back(give_back)
                continue
            if ready is not None:
                lost = ready.heartbeat.tick() if ready.heartbeat is not None else None
                if lost is not None:  # taken over: not ours to start, nor to give back
                    with self._changed:
                        if self._ready is ready:
                            self._ready = None
                    continue
                with self._changed:
                    if self._ready is ready and not self._closed:
                        self._changed.wait(_CHECK_S)
                continue
            if not want:
                with self._changed:
                    if not self._closed:
                        self._changed.wait(_CHECK_S)
                continue
            taken = self._source.take(wait_s=_CHECK_S, on_take=self._taking)
            if taken is None:
                continue
            prepared = self._prepare(*taken)
            with self._changed:
                self._preparing = False
                keep = not self._closed and self._may_prepare()
                if keep:
                    self._ready = prepared
                    self.prepared += 1
                self._changed.notify_all()
            if not keep:
                self.give_back(prepared)

    def _taking(self) -> None:
        """Called by the source under its lock as it hands a message over."""
        self._preparing = True

    def _prepare(self, message: Any, extended_at: float) -> Prepared:
        attempt = Attempt(message, extended_at=extended_at)
        try:
            claim = self._claimer.claim(attempt, prepared=True)
        except Exception as exc:  # noqa: BLE001 - the loop settles it, as if it had claimed
            return Prepared(attempt, error=exc)
        prepared = Prepared(attempt, claim)
        if claim.verdict is not ClaimVerdict.RUN:
            return prepared
        assert attempt.record is not None and attempt.token is not None
        prepared.heartbeat = Heartbeat(
            self._queue,
            message.receipt_handle,
            self._window_s,
            extended_at,
            store=self._store,
            job_id=attempt.record.job_id,
            token=attempt.token,
        )
        try:
            prepared.job, prepared.restored = self._prepare_job(attempt)
        except Exception as exc:  # noqa: BLE001 - an input error is the job's; the loop decides
            prepared.error = exc
        return prepared
