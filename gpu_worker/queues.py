"""The queues one worker takes jobs from: its own, then the ones it covers.

With the on-demand lane (README "Capacity tiers") the standby's own queue is the lane's, where a
job preempted too often waits; but the standby exists first to cover spot gaps on the jobs
queue. ``QueueSet`` lets one worker take both: its own queue first (the lane's jobs have waited
through two preemptions already), then each covered queue (``WORKER_COVER_QUEUE_URL``).

A message is settled on the queue it came from: the set remembers each received message's
receipt handle with its route (queue and dead-letter queue), so a delete, a visibility change,
a batch delete, a fresh copy (``home``) and a dead letter (``dead_letters``) go where they
belong. A handle the set never saw (a one-queue worker never records any) is its own queue's.

Receiving: SQS long-polls one queue per call. A quick look at every queue in order first (a
backlog anywhere is served at once, own queue first), then, when all were empty, the long poll
split between them, so a job arriving on any of them waits at most about ``wait_s / n``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools import Logger

from gpu_worker.config import WorkerConfig
from spotline.queue import JobQueue, QueueError, ReceivedMessage

logger = Logger(service="spotline-worker", child=True)

# Receipt handles remembered (most recently used kept): far above what one worker holds at a
# time (the job in hand, the prefetched ones, the prepared one, succeeded ones awaiting acks).
REMEMBERED_HANDLES = 4096


@dataclass(frozen=True)
class Route:
    """A queue and the dead-letter queue its jobs go to."""

    queue: JobQueue
    dlq: JobQueue


class QueueSet(JobQueue):
    """Quacks like the worker's own ``JobQueue``; routes every call about a received message to
    the queue that message came from. ``send`` and ``send_body`` go to the worker's own queue."""

    def __init__(self, routes: Sequence[Route], *, remember: int = REMEMBERED_HANDLES) -> None:
        if not routes:
            raise ValueError("a QueueSet needs at least one queue")
        own = routes[0]
        super().__init__(own.queue.client, own.queue.url)
        self.routes = tuple(routes)
        self._remember = remember
        self._homes: OrderedDict[str, Route] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(route.queue.url for route in self.routes)

    # -- where a message belongs -------------------------------------------------------------

    def route(self, receipt_handle: str) -> Route:
        with self._lock:
            route = self._homes.get(receipt_handle)
            if route is None:
                return self.routes[0]
            self._homes.move_to_end(receipt_handle)
            return route

    def home(self, receipt_handle: str) -> JobQueue:
        """The queue a received message came from (a fresh copy of it goes there)."""
        return self.route(receipt_handle).queue

    def dead_letters(self, receipt_handle: str) -> JobQueue:
        """The dead-letter queue of the queue a received message came from."""
        return self.route(receipt_handle).dlq

    def _note(self, messages: list[ReceivedMessage], route: Route) -> None:
        if len(self.routes) == 1:
            return
        with self._lock:
            for message in messages:
                self._homes[message.receipt_handle] = route
                self._homes.move_to_end(message.receipt_handle)
            while len(self._homes) > self._remember:
                self._homes.popitem(last=False)

    def _forget(self, receipt_handles: list[str]) -> None:
        with self._lock:
            for handle in receipt_handles:
                self._homes.pop(handle, None)

    # -- JobQueue, routed ------------------------------------------------------------------------

    def receive(
        self, *, max_messages: int = 1, wait_s: int = 20, visibility_s: int | None = None
    ) -> list[ReceivedMessage]:
        if len(self.routes) == 1:
            return self.routes[0].queue.receive(
                max_messages=max_messages, wait_s=wait_s, visibility_s=visibility_s
            )
        # A quick look at each queue, own first; then the long poll, split between them.
        polls = [0] * len(self.routes)
        if wait_s > 0:
            polls += [max(1, wait_s // len(self.routes))] * len(self.routes)
        for index, poll_s in enumerate(polls):
            route = self.routes[index % len(self.routes)]
            messages = route.queue.receive(
                max_messages=max_messages, wait_s=poll_s, visibility_s=visibility_s
            )
            if messages:
                self._note(messages, route)
                return messages
        return []

    def delete(self, receipt_handle: str) -> None:
        self.home(receipt_handle).delete(receipt_handle)
        self._forget([receipt_handle])

    def delete_batch(self, receipt_handles: list[str]) -> list[str]:
        """One batch per queue the handles came from; returns the handles that failed."""
        if len(receipt_handles) > 10:
            raise ValueError("DeleteMessageBatch takes at most 10 entries")
        groups: dict[str, tuple[JobQueue, list[str]]] = {}
        for handle in receipt_handles:
            queue = self.home(handle)
            groups.setdefault(queue.url, (queue, []))[1].append(handle)
        failed: list[str] = []
        errors: list[QueueError] = []
        for queue, handles in groups.values():
            try:
                failed += queue.delete_batch(handles)
            except QueueError as exc:  # this queue's batch failed; the others' stand
                errors.append(exc)
                failed += handles
        if errors and len(errors) == len(groups):
            raise errors[-1]
        self._forget([handle for handle in receipt_handles if handle not in failed])
        return failed

    def change_visibility(self, receipt_handle: str, visibility_s: int) -> None:
        self.home(receipt_handle).change_visibility(receipt_handle, visibility_s)


def home_of(queue: JobQueue, receipt_handle: str) -> JobQueue:
    """Where a fresh copy of a received message goes: its own queue."""
    return queue.home(receipt_handle) if isinstance(queue, QueueSet) else queue


def dead_letters_of(queue: JobQueue, dlq: JobQueue, receipt_handle: str) -> JobQueue:
    """Where a received message is dead-lettered: its queue's DLQ (``dlq`` for one queue)."""
    return queue.dead_letters(receipt_handle) if isinstance(queue, QueueSet) else dlq


def worker_queues(sqs: Any, config: WorkerConfig) -> QueueSet:
    """The worker's own queue and DLQ, then the covered one (``WORKER_COVER_QUEUE_URL``).

    A cover that cannot be taken safely is left out with a logged reason, never a refusal to
    start (a standby that will not start is a restart loop): one naming the worker's own queue
    adds nothing, and one with no DLQ would dead-letter its jobs into the wrong queue's."""
    routes = [Route(JobQueue(sqs, config.queue_url), JobQueue(sqs, config.dlq_url))]
    cover, cover_dlq = config.cover_queue_url, config.cover_dlq_url
    problem = ""
    if cover and cover == config.queue_url:
        problem = "WORKER_COVER_QUEUE_URL is this worker's own WORKER_QUEUE_URL"
    elif cover and not cover_dlq:
        problem = "WORKER_COVER_QUEUE_URL has no WORKER_COVER_DLQ_URL (its dead-letter queue)"
    elif cover_dlq and not cover:
        problem = "WORKER_COVER_DLQ_URL is set without WORKER_COVER_QUEUE_URL"
    elif cover:
        routes.append(Route(JobQueue(sqs, cover), JobQueue(sqs, cover_dlq)))
    if problem:
        logger.warning("covered queue left out: own queue only", extra={"reason": problem})
    return QueueSet(routes)
