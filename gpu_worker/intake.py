"""Intake: where messages come from and how they are let go.

The idle long poll; on a backlog of short jobs, the prefetcher that holds the next messages
(gpu_worker/prefetch.py), the preparer that claims and prepares the next job while the current
one runs (gpu_worker/preparer.py), the finisher that records succeeded jobs off the critical
path and the acker that deletes them in batches. Stopping or draining closes it all: the
prepared job and the held messages go back at once, succeeded jobs are recorded, pending acks
are sent.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable

from aws_lambda_powertools import Logger

from gpu_worker.claim import Claimer
from gpu_worker.config import WorkerConfig
from gpu_worker.prefetch import Acker, Finisher, Prefetcher
from gpu_worker.preparer import Prepared, PrepareJob, Preparer, give_back
from gpu_worker.queues import home_of
from spotline.jobstore import JobStore, JobStoreError
from spotline.queue import JobQueue, QueueError, ReceivedMessage

logger = Logger(service="spotline-worker", child=True)

# Succeeded jobs recorded side by side (result to S3, then SUCCEEDED): one job's two calls stay
# in order, two jobs' calls overlap, so recording keeps up with a fast analysis.
FINISHER_THREADS = 2


class Intake:
    def __init__(
        self,
        queue: JobQueue,
        config: WorkerConfig,
        *,
        may_receive: Callable[[], bool],
        claimer: Claimer,
        store: JobStore,
        prepare_job: PrepareJob,
        job_in_hand_is_short: Callable[[], bool],
    ) -> None:
        self.queue = queue
        self.config = config
        self._may_receive = may_receive
        self._claimer, self._store, self._prepare_job = claimer, store, prepare_job
        # A job in the child past WORKER_PREFETCH_MAX_JOB_S: the prepared one goes back.
        self._job_in_hand_is_short = job_in_hand_is_short
        # Throughput on a backlog; None with WORKER_PREFETCH=0 or once closed.
        self.prefetch: Prefetcher | None = None
        self.preparer: Preparer | None = None
        self.finisher: Finisher | None = None
        self.acker: Acker | None = None
        # Prefetch only while jobs are short (WORKER_PREFETCH_MAX_JOB_S): behind a long job a
        # held message would wait the whole job while another GPU may sit idle, and the
        # receive it saves is a negligible part of a long job anyway.
        self.short_jobs = False

    @property
    def backlog(self) -> bool:
        return (self.prefetch is not None and self.prefetch.backlog) or (
            self.preparer is not None and self.preparer.holding
        )

    def start(self) -> None:
        """The prefetcher, finisher and acker threads (WORKER_PREFETCH > 0)."""
        if not self.config.prefetch or self.prefetch is not None:
            return
        self.prefetch = Prefetcher(
            self.queue,
            capacity=self.config.prefetch,
            visibility_window_s=self.config.visibility_window_s,
            may_receive=self._may_receive,
            may_refill=lambda: self.short_jobs,
        ).start()
        self.preparer = Preparer(
            self.prefetch,
            self._claimer,
            self._prepare_job,
            store=self._store,
            queue=self.queue,
            visibility_window_s=self.config.visibility_window_s,
            may_prepare=lambda: self._may_receive() and self._job_in_hand_is_short(),
        ).start()
        # As many finished jobs may wait to be recorded as messages may wait to be run.
        self.finisher = Finisher(depth=self.config.prefetch, threads=FINISHER_THREADS).start()
        self.acker = Acker(self.queue, max_delay_s=self.config.ack_delay_s).start()

    def close(self) -> None:
        """Stopping or draining: held messages go back at once, succeeded jobs are recorded,
        pending acks are sent. Later outcomes take the synchronous path."""
        prefetch, finisher, acker = self.prefetch, self.finisher, self.acker
        preparer, self.preparer = self.preparer, None
        self.prefetch, self.finisher, self.acker = None, None, None
        if preparer is not None:
            preparer.close()  # the prepared job first: nothing may start after a stop
        if prefetch is not None:
            prefetch.close()
        if finisher is not None:
            finisher.close()
        if acker is not None:
            acker.close()

    def take(self) -> Prepared | None:
        """The next job, claimed and prepared ahead, if there is a backlog (None otherwise)."""
        preparer = self.preparer
        return preparer.take() if preparer is not None else None

    def mark_started(self, prepared: Prepared) -> None:
        """A job claimed ahead was sent to the child: its start mark, off the critical path."""
        preparer = self.preparer
        if preparer is not None:
            preparer.mark_started(prepared.attempt)
        else:  # closed meanwhile (a stop): the first outcome write writes it first
            unwritten: concurrent.futures.Future[None] = concurrent.futures.Future()
            unwritten.set_exception(JobStoreError("start mark not written: the intake closed"))
            prepared.attempt.start_mark = unwritten

    def give_back(self, prepared: Prepared, *, release: bool = True) -> None:
        """A job claimed ahead that will not start here; ``release``: its message too, at once
        (False: the caller lets the message go its own way, e.g. ``decline``)."""
        preparer = self.preparer
        if preparer is not None:
            preparer.give_back(prepared, release=release)
        else:
            give_back(prepared, self._store, self.queue, release=release)

    def receive(self) -> list[ReceivedMessage]:
        """The idle long poll. With prefetch it asks for more: if it gets all it asked for,
        there is a backlog, and the prefetcher keeps the rest at hand. Returns what to run now.
        Raises QueueError (and whatever a signal raises to cut the poll short)."""
        if self.acker is not None:
            self.acker.flush()  # a burst ended: its last acks need not wait for a batch
        prefetching = self.prefetch is not None and self.short_jobs
        wanted = 1 + (self.config.prefetch if prefetching else 0)
        messages = self.queue.receive(
            max_messages=wanted,
            wait_s=self.config.wait_s,
            visibility_s=self.config.visibility_window_s,
        )
        if self.prefetch is not None and prefetching and messages:
            self.prefetch.offer(messages[1:], backlog=len(messages) >= wanted)
            messages = messages[:1]
        return messages

    def release_unstarted(self, message: ReceivedMessage) -> None:
        """Received but not started: give it back at once, not after a window."""
        try:
            self.queue.change_visibility(message.receipt_handle, 0)
        except QueueError:
            logger.warning("could not release unstarted message", exc_info=True)

    def decline(self, message: ReceivedMessage, *, hide_s: int, max_receive_count: int) -> None:
        """Give back a message this worker will not start (it does not fit a notice's time
        left): visible again after ``hide_s``. Never an attempt; a message whose next receive
        would reach the queue's redrive is re-sent fresh instead, so declines never
        dead-letter a job."""
        if message.receive_count >= max_receive_count - 1:
            try:
                home_of(self.queue, message.receipt_handle).send_body(message.body)
                self.queue.delete(message.receipt_handle)
                return
            except QueueError:  # fall back to releasing this copy
                logger.warning("could not re-send the declined message fresh", exc_info=True)
        try:
            self.queue.change_visibility(message.receipt_handle, max(0, min(hide_s, 43200)))
        except QueueError:
            logger.warning("could not give back the declined message", exc_info=True)

    def acknowledge(self, message: ReceivedMessage, *, now: bool) -> None:
        """Delete a succeeded job's message (its SUCCEEDED is durable: the delete may wait)."""
        acker = self.acker
        if acker is not None:
            acker.ack(message.receipt_handle, now=now)
        else:
            self.queue.delete(message.receipt_handle)
