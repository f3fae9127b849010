"""Intake: where messages come from and how they are let go.

The idle long poll; on a backlog of short jobs, the prefetcher that holds the next messages
(gpu_worker/prefetch.py), the finisher that records succeeded jobs off the critical path and the
acker that deletes them in batches. Stopping or draining closes it all: held messages go back
at once, succeeded jobs are recorded, pending acks are sent.
"""

from __future__ import annotations

from collections.abc import Callable

from aws_lambda_powertools import Logger

from gpu_worker.config import WorkerConfig
from gpu_worker.prefetch import Acker, Finisher, Prefetcher
from spotline.queue import JobQueue, QueueError, ReceivedMessage

logger = Logger(service="spotline-worker", child=True)

# Succeeded jobs recorded side by side (result to S3, then SUCCEEDED): one job's two calls stay
# in order, two jobs' calls overlap, so recording keeps up with a fast analysis.
FINISHER_THREADS = 2


class Intake:
    def __init__(
        self, queue: JobQueue, config: WorkerConfig, *, may_receive: Callable[[], bool]
    ) -> None:
        self.queue = queue
        self.config = config
        self._may_receive = may_receive
        # Throughput on a backlog; None with WORKER_PREFETCH=0 or once closed.
        self.prefetch: Prefetcher | None = None
        self.finisher: Finisher | None = None
        self.acker: Acker | None = None
        # Prefetch only while jobs are short (WORKER_PREFETCH_MAX_JOB_S): behind a long job a
        # held message would wait the whole job while another GPU may sit idle, and the
        # receive it saves is a negligible part of a long job anyway.
        self.short_jobs = False

    @property
    def backlog(self) -> bool:
        return self.prefetch is not None and self.prefetch.backlog

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
        # As many finished jobs may wait to be recorded as messages may wait to be run.
        self.finisher = Finisher(depth=self.config.prefetch, threads=FINISHER_THREADS).start()
        self.acker = Acker(self.queue, max_delay_s=self.config.ack_delay_s).start()

    def close(self) -> None:
        """Stopping or draining: held messages go back at once, succeeded jobs are recorded,
        pending acks are sent. Later outcomes take the synchronous path."""
        prefetch, finisher, acker = self.prefetch, self.finisher, self.acker
        self.prefetch, self.finisher, self.acker = None, None, None
        if prefetch is not None:
            prefetch.close()
        if finisher is not None:
            finisher.close()
        if acker is not None:
            acker.close()

    def take(self) -> tuple[ReceivedMessage, float] | None:
        """A held message and when it was last extended, if the prefetcher holds one."""
        return self.prefetch.take() if self.prefetch is not None else None

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
                self.queue.send_body(message.body)
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
