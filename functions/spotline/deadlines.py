"""Time limits for outbound calls: a deadline on the monotonic clock, a Lambda invocation's time
shared out among its items, and a call run in a thread the caller waits for only until the
deadline (webhooks.py shuts the call's sockets at that moment)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


class DeadlineExceeded(TimeoutError):
    """The delivery's deadline passed before it finished."""


@dataclass(frozen=True, order=True)
class Deadline:
    """A moment on the monotonic clock by which something must be done."""

    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + max(0.0, seconds))

    def remaining_s(self) -> float:
        return max(0.0, self.at - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.at

    def part(self, fraction: float) -> Deadline:
        """A deadline ``fraction`` of the way from now to this one."""
        return Deadline.after(self.remaining_s() * fraction)


@dataclass(frozen=True)
class TimeBudget:
    """A Lambda invocation's remaining time, shared out among the items it still has to do.

    Each item's deadline is set when it starts: the time left, less a reserve kept for what
    follows the last item (the batch response, the last writes), split evenly among the items
    not yet done. A slow item costs at most its share; one that finishes early leaves its time
    to the rest.
    """

    remaining_ms: Callable[[], int]  # the context's get_remaining_time_in_millis
    reserve_s: float

    def share(self, items_left: int) -> Deadline:
        usable_s = self.remaining_ms() / 1000 - self.reserve_s
        return Deadline.after(max(0.0, usable_s) / max(1, items_left))

    def shares(self, items: int) -> Iterator[Deadline]:
        """One deadline per item, each computed when it is asked for (when its item starts)."""
        for left in range(items, 0, -1):
            yield self.share(left)


def run_within(
    deadline: Deadline, call: Callable[[], T], *, on_expiry: Callable[[], None] | None = None
) -> T:
    """``call()``'s result (or its exception), or DeadlineExceeded at the deadline.

    ``call`` runs in a daemon thread so that nothing it blocks on (a DNS lookup, a socket)
    can hold the caller past the deadline; ``on_expiry`` should make it stop soon after.
    """
    outcome: list[tuple[bool, Any]] = []
    finished = threading.Event()

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, which re-raises it
            outcome.append((False, exc))
        finally:
            finished.set()

    threading.Thread(target=run, name="outbound-call", daemon=True).start()
    if not finished.wait(deadline.remaining_s()):
        if on_expiry is not None:
            on_expiry()
        raise DeadlineExceeded("the deadline passed")
    ok, value = outcome[0]
    if ok:
        return value  # type: ignore[no-any-return]
    raise value
