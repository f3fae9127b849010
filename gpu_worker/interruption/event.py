"""The one event every interruption source produces, and the interface of a source."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


class Source(enum.StrEnum):
    IMDS_SPOT = "imds-spot"
    IMDS_REBALANCE = "imds-rebalance"
    SIGNAL = "signal"
    GCP_PREEMPTED = "gcp-preempted"
    ASG_LIFECYCLE = "asg-lifecycle"
    # The spot-events function's tag: warnings EC2 sends only to EventBridge (termination_tag)
    IMDS_TERMINATION_TAG = "imds-termination-tag"


class InterruptionAction(enum.StrEnum):
    TERMINATE = "terminate"
    STOP = "stop"
    HIBERNATE = "hibernate"
    REBALANCE = "rebalance"  # a recommendation only: the instance is at elevated risk
    SHUTDOWN = "shutdown"  # a signal: the process manager wants us gone


SPOT_ACTIONS = {InterruptionAction.TERMINATE, InterruptionAction.STOP, InterruptionAction.HIBERNATE}


@dataclass(frozen=True)
class Interruption:
    """One interruption, whatever its source. Times are UNIX epoch seconds.

    ``after_release`` is the source's last word, run once the worker has let go of its job
    (the ASG hook: "complete the lifecycle action, the instance may go now")."""

    source: str
    action: InterruptionAction
    noticed_at: float
    deadline: float | None = None  # when the machine goes away, if the source says
    detail: str = ""
    after_release: Callable[[], object] | None = field(default=None, compare=False, repr=False)

    @property
    def advisory(self) -> bool:
        """True when the machine is not (yet) going away: stop taking work, keep running."""
        return self.action is InterruptionAction.REBALANCE

    def seconds_left(self, now: float | None = None) -> float | None:
        if self.deadline is None:
            return None
        return self.deadline - (time.time() if now is None else now)

    def describe(self) -> str:
        text = f"{self.source} {self.action}"
        return f"{text} ({self.detail})" if self.detail else text


class Monitor(Protocol):
    """A polled source. ``check()`` runs on the watch thread: it must not block for long and
    returns None for "nothing now" and for trouble it has already logged."""

    name: str

    @property
    def interval_s(self) -> float: ...

    def check(self) -> Interruption | None: ...


def parse_time(value: Any) -> float | None:
    """IMDS times look like ``2026-11-23T08:22:00Z``; None when absent or unparseable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.timestamp()
