"""Keep the analysis busy when there is a backlog: hold the next message, finish in the background.

Three helpers of the supervisor, each on a thread of its own:

``Prefetcher`` holds at most ``capacity`` (``WORKER_PREFETCH``) received-but-not-started
messages, and only while the queue has a backlog: the worker's idle long poll asks for
``1 + capacity`` messages, and only when it brings more than one does the prefetcher refill,
with short polls (``WaitTimeSeconds=0``) that take what is already waiting. A short poll that
comes back short ends the backlog. So a busy worker never competes with an idle worker's long
poll for a message that just arrived (on a long-job GPU fleet that would park the job behind
the running one while a GPU sits idle), and an empty queue costs no extra calls. A held
message is kept invisible by the heartbeat rule (extended every third of the window) and
released at once (visibility 0) when the worker stops or drains. It is never claimed, so a
release never counts as an attempt; it does add an SQS receive, which is why the template's
``MaxReceiveCount`` keeps ``PREFETCH_RELEASE_ALLOWANCE`` receives above ``MaxAttempts``
(``python -m spotline_ops.doctor`` and a test check it).

``Finisher`` records succeeded jobs (result to S3, ``SUCCEEDED``, then the ack), two side by
side, while the next held job already runs. Every step keeps its order and its guard: the
result is keyed by job id, the completion is conditional on the ownership token, the ack is
queued only once the completion is durable. A holder that dies here leaves a RUNNING job whose
message comes back within a window: taken over, as after any crash.

``Acker`` deletes the messages of jobs already recorded ``SUCCEEDED`` with DeleteMessageBatch.
A delete that is lost only brings back a duplicate of a succeeded job, which the worker
acknowledges without running it. Retries, requeues and dead letters still delete in their own
order, synchronously.

With no backlog (nothing held) the worker finishes and deletes synchronously, as without
prefetch: the last job of a burst is acknowledged at once.

Length note: about 410 lines for three small thread classes that share one shutdown order
(prefetcher released first, then the finisher drained, then the acker flushed); kept together
so that order is read in one place.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from aws_lambda_powertools import Logger

from gpu_worker.heartbeat import extension_due_in
from spotline.queue import JobQueue, QueueError, ReceivedMessage

logger = Logger(service="spotline-worker", child=True)

# How many unstarted releases of one message (a worker that held it stopped, drained or died)
# the queue's redrive must tolerate on top of WORKER_MAX_ATTEMPTS before it counts as a crash
# loop. spotline_ops.doctor requires maxReceiveCount > MaxAttempts + this.
PREFETCH_RELEASE_ALLOWANCE = 2
BATCH_LIMIT = 10  # SQS ReceiveMessage / DeleteMessageBatch limit
# The prefetcher looks at least this often whether the worker stopped (then it releases).
_CHECK_S = 0.1


@dataclass
class _Held:
    message: ReceivedMessage
    extended_at: float  # monotonic time of the last visibility extension (or the receive)


class Prefetcher:
    def __init__(
        self,
        queue: JobQueue,
        *,
        capacity: int,
        visibility_window_s: int,
        may_receive: Callable[[], bool] = lambda: True,
        may_refill: Callable[[], bool] = lambda: True,
        error_backoff_s: float = 2.0,
    ) -> None:
        if not 1 <= capacity <= BATCH_LIMIT:
            raise ValueError(f"prefetch capacity must be between 1 and {BATCH_LIMIT}")
        self._queue = queue
        self.capacity = capacity
        self._window_s = visibility_window_s
        self._may_receive = may_receive  # False: stopping or draining (release what is held)
        self._may_refill = may_refill  # False: hold what we have, take no more
        self._error_backoff_s = error_backoff_s
        self._held: collections.deque[_Held] = collections.deque()
        self._changed = threading.Condition()
        self._backlog = False
        self._closed = False
        self._retry_at = 0.0
        self._thread = threading.Thread(target=self._run, name="prefetch", daemon=True)
        self.received = 0
        self.released = 0
        self.extensions = 0

    def start(self) -> Prefetcher:
        self._thread.start()
        return self

    @property
    def held(self) -> int:
        with self._changed:
            return len(self._held)

    @property
    def refilling(self) -> bool:
        """Nothing may be held now, but a short poll is due or in flight: more is coming."""
        with self._changed:
            return not self._closed and self._wants_receive()

    @property
    def backlog(self) -> bool:
        """The last receive brought all it asked for: more messages are likely waiting."""
        with self._changed:
            return self._backlog or bool(self._held)

    def offer(self, messages: list[ReceivedMessage], *, backlog: bool) -> None:
        """The idle long poll's extra messages (at most ``capacity``); ``backlog``: it brought
        all it asked for, so more are likely waiting."""
        now = time.monotonic()
        with self._changed:
            if self._closed:
                extra = list(messages)
            else:
                room = self.capacity - len(self._held)
                self._held.extend(_Held(m, now) for m in messages[:room])
                extra = list(messages[room:])
                self.received += len(messages) - len(extra)
                self._backlog = backlog
                self._changed.notify_all()
        for message in extra:
            self._release(message)

    def take(
        self, wait_s: float = 0.0, on_take: Callable[[], None] | None = None
    ) -> tuple[ReceivedMessage, float] | None:
        """The oldest held message, now the caller's to run, with the monotonic time its
        visibility was last extended; None when nothing is held (after waiting up to
        ``wait_s`` for one). ``on_take`` runs under the lock as a message is handed over."""
        with self._changed:
            if not self._held and wait_s > 0 and not self._closed:
                self._changed.wait(wait_s)
            if not self._held:
                return None
            held = self._held.popleft()
            if on_take is not None:
                on_take()
            self._changed.notify_all()  # room for the receiver
        return held.message, held.extended_at

    def close(self) -> int:
        """Stop receiving and release every held message at once; returns how many.

        Short polls return at once, so the join is quick: after it, nothing of ours is in
        flight (a requeue's fresh copy cannot be taken by this worker on its way out)."""
        with self._changed:
            self._closed = True
            held = [item.message for item in self._held]
            self._held.clear()
            self._changed.notify_all()
        self._release_all(held)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        return len(held)

    # -- the receiver thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._changed:
                if self._closed:
                    return
                if not self._wants_receive():
                    self._changed.wait(min(_CHECK_S, self._seconds_to_next_extension()))
                if self._closed:
                    return
                released: list[ReceivedMessage] = []
                if not self._may_receive():  # stopping or draining: hand everything back
                    released = [item.message for item in self._held]
                    self._held.clear()
                    self._backlog = False
                due = self._due_for_extension()
                want = self._wants_receive()
                room = self.capacity - len(self._held)
            self._release_all(released)
            self._extend(due)
            if want:
                self._refill(room)

    def _wants_receive(self) -> bool:
        """Called with the lock held."""
        return (
            self._backlog
            # Refill at half empty: a deeper prefetch receives in batches, not one by one.
            and len(self._held) <= self.capacity // 2
            and time.monotonic() >= self._retry_at
            and self._may_receive()
            and self._may_refill()
        )

    def _refill(self, room: int) -> None:
        try:
            # A short poll: only what is waiting now, never a message an idle worker's long
            # poll is about to get.
            messages = self._queue.receive(max_messages=room, wait_s=0, visibility_s=self._window_s)
        except QueueError:
            logger.warning("prefetch receive failed; backing off", exc_info=True)
            self._retry_at = time.monotonic() + self._error_backoff_s
            return
        now = time.monotonic()
        with self._changed:
            keep = not self._closed and self._may_receive()
            if keep:
                self._held.extend(_Held(m, now) for m in messages)
                self.received += len(messages)
                self._backlog = len(messages) >= room
                self._changed.notify_all()
        if not keep:
            for message in messages:
                self._release(message)

    def _seconds_to_next_extension(self) -> float:
        if not self._held:
            return _CHECK_S
        oldest = min(item.extended_at for item in self._held)
        return max(0.0, extension_due_in(oldest, self._window_s))

    def _due_for_extension(self) -> list[_Held]:
        now = time.monotonic()
        return [
            item
            for item in self._held
            if extension_due_in(item.extended_at, self._window_s, now) <= 0
        ]

    def _extend(self, due: list[_Held]) -> None:
        """Heartbeat for held messages (one the main thread took meanwhile gets one extra
        extension: harmless, its job's own heartbeat does the same)."""
        for item in due:
            try:
                self._queue.change_visibility(item.message.receipt_handle, self._window_s)
            except QueueError:
                logger.warning("prefetched message extension failed", exc_info=True)
                continue
            with self._changed:
                item.extended_at = time.monotonic()
            self.extensions += 1

    def _release_all(self, messages: list[ReceivedMessage]) -> None:
        for message in messages:
            self._release(message)
        if messages:
            logger.info("prefetched messages released", extra={"released": len(messages)})

    def _release(self, message: ReceivedMessage) -> None:
        try:
            self._queue.change_visibility(message.receipt_handle, 0)
            self.released += 1
        except QueueError:
            # It comes back by itself when its window ends; it was never claimed.
            logger.warning("could not release a prefetched message", exc_info=True)


class Acker:
    """Deletes acknowledged messages in batches of up to 10, at most ``max_delay_s`` late."""

    def __init__(self, queue: JobQueue, *, max_delay_s: float = 0.2) -> None:
        self._queue = queue
        self._max_delay_s = max_delay_s
        self._pending: list[str] = []
        self._first_at = 0.0
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="acker", daemon=True)
        self.deleted = 0
        self.failed = 0

    def start(self) -> Acker:
        self._thread.start()
        return self

    def ack(self, receipt_handle: str, *, now: bool = False) -> None:
        """Queue a delete; ``now`` (or a closed acker) deletes it and everything pending at
        once, on the caller's thread."""
        with self._changed:
            if not (now or self._closed):
                if not self._pending:
                    self._first_at = time.monotonic()
                self._pending.append(receipt_handle)
                if len(self._pending) in (1, BATCH_LIMIT):  # a deadline starts, or a batch is full
                    self._changed.notify_all()
                return
            batch, self._pending = [*self._pending, receipt_handle], []
        self._delete_all(batch)

    def flush(self) -> None:
        """Delete what is pending now (the backlog ended: no batch is coming to fill)."""
        with self._changed:
            batch, self._pending = self._pending, []
        self._delete_all(batch)

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush what is pending (a stopping worker leaves no ack behind) and stop."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._thread.join(timeout_s)
        with self._changed:
            rest, self._pending = self._pending, []
        self._delete_all(rest)

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._closed:
                    if len(self._pending) >= BATCH_LIMIT:
                        break
                    if self._pending:
                        remaining = self._first_at + self._max_delay_s - time.monotonic()
                        if remaining <= 0:
                            break
                        self._changed.wait(remaining)
                    else:
                        self._changed.wait()
                if self._closed:
                    return  # close() flushes the rest
                batch, self._pending = self._pending[:BATCH_LIMIT], self._pending[BATCH_LIMIT:]
                self._first_at = time.monotonic()
            self._delete_all(batch)

    def _delete_all(self, receipts: list[str]) -> None:
        for start in range(0, len(receipts), BATCH_LIMIT):
            batch = receipts[start : start + BATCH_LIMIT]
            try:
                failed = self._queue.delete_batch(batch)
            except QueueError:
                logger.warning("batched delete failed", exc_info=True)
                failed = list(batch)
            self.deleted += len(batch) - len(failed)
            self.failed += len(failed)
            if failed:
                # Their jobs are SUCCEEDED: a redelivered copy is acknowledged without a rerun.
                logger.warning("batched delete left messages", extra={"failed": len(failed)})


class Finisher:
    """Runs succeeded jobs' recording steps while the next job runs, at most ``depth`` behind;
    ``drain`` waits for them (shutdown, or before a synchronous path).

    ``threads`` steps run side by side, started in submission order: one job's step keeps its
    own order (result, then SUCCEEDED, then the ack), and the steps of different jobs share
    nothing, so two of them may overlap. One thread would cap a fast analysis at one
    result-and-completion round trip per job."""

    def __init__(self, *, depth: int = 1, threads: int = 1) -> None:
        if threads < 1:
            raise ValueError("a finisher needs at least one thread")
        self._pending: collections.deque[tuple[str, Callable[[], None]]] = collections.deque()
        self._depth = depth
        self._changed = threading.Condition()
        self._busy = 0
        self._closed = False
        self._threads = [
            threading.Thread(target=self._run, name=f"finisher-{index}", daemon=True)
            for index in range(threads)
        ]
        self.finished = 0
        self.failed = 0

    def start(self) -> Finisher:
        for thread in self._threads:
            thread.start()
        return self

    def submit(self, job_id: str, step: Callable[[], None]) -> None:
        """Queue ``step``; waits while ``depth`` steps already wait (back-pressure)."""
        with self._changed:
            while len(self._pending) >= self._depth and not self._closed:
                self._changed.wait()
            run_now = self._closed
            if not run_now:
                self._pending.append((job_id, step))
                self._changed.notify_all()
        if run_now:
            self._finish(job_id, step)

    def drain(self, timeout_s: float = 30.0) -> bool:
        """Wait until every submitted step ran; False if ``timeout_s`` ran out."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self._pending or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    def close(self, timeout_s: float = 30.0) -> None:
        self.drain(timeout_s)
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._pending and not self._closed:
                    self._changed.wait()
                if not self._pending:
                    return
                job_id, step = self._pending.popleft()
                self._busy += 1
                self._changed.notify_all()
            try:
                self._finish(job_id, step)
            finally:
                with self._changed:
                    self._busy -= 1
                    self._changed.notify_all()

    def _finish(self, job_id: str, step: Callable[[], None]) -> None:
        try:
            step()
            self.finished += 1
        except Exception:  # the message comes back; its copy takes the job over
            self.failed += 1
            logger.exception("finishing a succeeded job failed", extra={"job_id": job_id})
