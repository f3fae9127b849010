"""What happens to a job after an attempt: one table, in one place.

| outcome                                  | action                                        |
|------------------------------------------|-----------------------------------------------|
| success                                  | ACK: result to S3, SUCCEEDED, delete message  |
| INVALID_INPUT, or a PermanentError       | DEAD_LETTER at once                           |
| OOM, TIMEOUT, ANALYZER_ERROR, UNKNOWN    | RETRY with backoff; DEAD_LETTER at MaxAttempts|
| INTERRUPTED                              | REQUEUE fresh copy; DEAD_LETTER past the cap  |
| an AWS fault (throttled, network, 5xx)   | RELEASE with backoff; no attempt is counted   |
| OOM with a larger tier; the preemption   | ESCALATE: the next tier's queue (or the lane) |
| budget spent with an on-demand lane      | (gpu_worker/escalation.py turns RETRY,        |
|                                          | DEAD_LETTER or REQUEUE into it)               |
| the job is no longer ours (lease lost)   | ABANDON: record nothing, leave the message    |

Before any attempt, the claim has its verdicts, and they are rows of the same table
(``CLAIM_TABLE``): only ``RUN`` starts an attempt.

| claim verdict                                   | action                                  |
|-------------------------------------------------|-----------------------------------------|
| RUN: claimed (QUEUED, or a lease that ran out)  | supervise the attempt, then the above   |
| UNREADABLE: not a job message, or no record     | DEAD_LETTER_MESSAGE (INVALID_INPUT)     |
| INVALID: the request breaks this stack's rules  | DEAD_LETTER (INVALID_INPUT), uncounted  |
| SUCCEEDED: a copy of a succeeded job            | DELETE (exactly-once effect)            |
| DEAD_LETTERED: a holder died mid dead-lettering | FINISH_DEAD_LETTER (the missing steps)  |
| DUPLICATE: another copy under a live lease      | DELETE (the holder's message recovers)  |
| HOLDERS_OWN: the holder's message came back     | HOLD until the lease ends               |
| TAKEN: another holder won the claim             | LEAVE this copy alone                   |
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from spotline.contract import ErrorKind
from spotline.jobstore import JobError
from spotline.tiers import ON_DEMAND_TIER


class Action(enum.StrEnum):
    ACK = "ACK"
    RETRY = "RETRY"
    DEAD_LETTER = "DEAD_LETTER"
    REQUEUE = "REQUEUE"
    RELEASE = "RELEASE"
    ABANDON = "ABANDON"
    ESCALATE = "ESCALATE"
    # -- before an attempt (claim verdicts) --
    DELETE = "DELETE"
    FINISH_DEAD_LETTER = "FINISH_DEAD_LETTER"
    DEAD_LETTER_MESSAGE = "DEAD_LETTER_MESSAGE"
    HOLD = "HOLD"
    LEAVE = "LEAVE"


class ClaimVerdict(enum.StrEnum):
    """What the claim found (gpu_worker/claim.py); CLAIM_TABLE says what happens next."""

    RUN = "RUN"
    UNREADABLE = "UNREADABLE"
    INVALID = "INVALID"
    SUCCEEDED = "SUCCEEDED"
    DEAD_LETTERED = "DEAD_LETTERED"
    DUPLICATE = "DUPLICATE"
    HOLDERS_OWN = "HOLDERS_OWN"
    TAKEN = "TAKEN"


# Every verdict but RUN settles the message without an attempt.
CLAIM_TABLE: dict[ClaimVerdict, Action] = {
    ClaimVerdict.UNREADABLE: Action.DEAD_LETTER_MESSAGE,
    ClaimVerdict.INVALID: Action.DEAD_LETTER,
    ClaimVerdict.SUCCEEDED: Action.DELETE,
    ClaimVerdict.DEAD_LETTERED: Action.FINISH_DEAD_LETTER,
    ClaimVerdict.DUPLICATE: Action.DELETE,
    ClaimVerdict.HOLDERS_OWN: Action.HOLD,
    ClaimVerdict.TAKEN: Action.LEAVE,
}


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
    # ESCALATE only: where the job goes, and the decision carried out if it cannot go there.
    queue_url: str = ""
    tier: str = ""
    fallback: Decision | None = None

    @property
    def stops_intake(self) -> bool:
        """A requeue or a move to the lane: the job goes back because this worker stops."""
        return self.action is Action.REQUEUE or (
            self.action is Action.ESCALATE and self.tier == ON_DEMAND_TIER
        )


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
