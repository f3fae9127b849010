"""The heartbeat rule, in one place: a held message (and its job's lease) is extended every
third of the visibility window, so a dead holder's message is back within one window."""

from __future__ import annotations

import time

from aws_lambda_powertools import Logger

from spotline.contract import ErrorKind
from spotline.jobstore import JobError, JobStore, TransitionRefused
from spotline.queue import JobQueue, QueueError

logger = Logger(service="spotline-worker", child=True)

# Extend at a third of the window: two tries are left before the message would show again.
EXTEND_AT_FRACTION = 1 / 3


def extension_due_in(extended_at: float, window_s: float, now: float | None = None) -> float:
    """Seconds until a message last extended at ``extended_at`` (monotonic) is due again."""
    now = time.monotonic() if now is None else now
    return extended_at + window_s * EXTEND_AT_FRACTION - now


class Heartbeat:
    """Keeps a received message invisible while its job runs, and the job's lease with it.
    ``tick()`` returns an error once the job is no longer ours."""

    def __init__(
        self,
        queue: JobQueue,
        receipt_handle: str,
        window_s: int,
        extended_at: float | None,
        *,
        store: JobStore,
        job_id: str,
        token: str,
    ) -> None:
        self._queue = queue
        self._receipt = receipt_handle
        self._window_s = window_s
        self._store = store
        self._job_id = job_id
        self._token = token
        # A prefetched message was last extended while it was held, not when its job began.
        self._last = time.monotonic() if extended_at is None else extended_at
        self.extensions = 0

    @property
    def extended_at(self) -> float:
        """Monotonic time of the last extension (or of the receive)."""
        return self._last

    def tick(self) -> JobError | None:
        if extension_due_in(self._last, self._window_s) > 0:
            return None
        self._last = time.monotonic()
        try:
            self._queue.change_visibility(self._receipt, self._window_s)
            self.extensions += 1
        except QueueError:
            # The next tick tries again; if the receipt is gone, the job's outcome write will
            # be refused by the ownership check, so nothing is recorded twice.
            logger.warning("visibility extension failed", exc_info=True)
        try:
            self._store.renew_lease(self._job_id, self._token, self._window_s)
        except TransitionRefused as refused:
            current = refused.current
            logger.warning(
                "lease lost: the job is no longer ours; stopping its analysis",
                extra={"status": str(current.status) if current else None},
            )
            return JobError(ErrorKind.INTERRUPTED, "ownership lost: the job was taken over")
        except Exception:  # AWS failing: the next tick tries again
            logger.warning("lease renewal failed", exc_info=True)
        return None
