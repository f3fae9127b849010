"""What happens to a job after an attempt: one table, in one place.

| outcome                                  | action                                        |
|------------------------------------------|-----------------------------------------------|
| success                                  | ACK: result to S3, SUCCEEDED, delete message  |
| INVALID_INPUT, or a PermanentError       | DEAD_LETTER at once                           |
| OOM, TIMEOUT, ANALYZER_ERROR, UNKNOWN    | RETRY with backoff; DEAD_LETTER at MaxAttempts|
| INTERRUPTED                              | REQUEUE fresh copy; DEAD_LETTER past the cap  |
| an AWS fault (throttled, network, 5xx)   | RELEASE with backoff; no attempt is counted   |
| the job is no longer ours (lease lost)   | ABANDON: record nothing, leave the message    |
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pipeline.contract import ErrorKind
from pipeline.jobstore import JobError


class Action(enum.StrEnum):
    ACK = "ACK"
    RETRY = "RETRY"
    DEAD_LETTER = "DEAD_LETTER"
    REQUEUE = "REQUEUE"
    RELEASE = "RELEASE"
    ABANDON = "ABANDON"


# Error kind -> what a non-permanent failure of that kind does, before its cap is applied.
DECISION_TABLE: dict[ErrorKind, Action] = {
    ErrorKind.INVALID_INPUT: Action.DEAD_LETTER,
    ErrorKind.OOM: Action.RETRY,
    ErrorKind.TIMEOUT: Action.RETRY,
    ErrorKind.ANALYZER_ERROR: Action.RETRY,
    ErrorKind.UNKNOWN: Action.RETRY,
    ErrorKind.INTERRUPTED: Action.REQUEUE,
}


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    backoff_s: float = 0.0


def backoff_s(attempts: int, base_s: float, max_s: float) -> float:
    """Exponential backoff after the ``attempts``-th failed attempt."""
    return float(min(max_s, base_s * (2 ** max(0, attempts - 1))))


def decide(
    error: JobError | None,
    *,
    permanent: bool,
    attempts: int,
    interruptions: int,
    max_attempts: int,
    max_interruptions: int,
    backoff_base_s: float,
    backoff_max_s: float,
) -> Decision:
    """``attempts``/``interruptions`` are the counts *before* this attempt's failure."""
    if error is None:
        return Decision(Action.ACK, "succeeded")
    action = Action.DEAD_LETTER if permanent else DECISION_TABLE[error.kind]
    if action is Action.RETRY and attempts + 1 >= max_attempts:
        return Decision(
            Action.DEAD_LETTER, f"{error.kind} on attempt {attempts + 1} of {max_attempts}"
        )
    if action is Action.REQUEUE and interruptions + 1 > max_interruptions:
        return Decision(
            Action.DEAD_LETTER, f"interrupted {interruptions + 1} times (cap {max_interruptions})"
        )
    if action is Action.RETRY:
        return Decision(
            action,
            f"{error.kind} on attempt {attempts + 1} of {max_attempts}",
            backoff_s(attempts + 1, backoff_base_s, backoff_max_s),
        )
    if action is Action.DEAD_LETTER:
        return Decision(action, f"{error.kind} is permanent")
    return Decision(action, f"interruption {interruptions + 1} of at most {max_interruptions}")


def decide_infra_fault(
    consecutive: int, *, backoff_base_s: float, backoff_max_s: float
) -> Decision:
    """An AWS fault is not the job's: release the message with backoff, count nothing. The
    backoff grows with the faults in a row, so a failing AWS is not hammered."""
    return Decision(
        Action.RELEASE,
        f"AWS fault {consecutive} in a row; no attempt counted",
        backoff_s(consecutive, backoff_base_s, backoff_max_s),
    )


def decide_abandoned() -> Decision:
    return Decision(Action.ABANDON, "ownership lost: another holder took the job over")
