"""Escalate instead of repeating: an OOM moves a job to the next larger tier, a job preempted
too often moves to the on-demand lane (README "Capacity tiers").

Retried on the same kind of box, a job that ran out of memory runs out again, and a long job on
a spot type that is being reclaimed is preempted again. ``escalate`` reads the decision the
table made (gpu_worker/decisions.py) and this worker's tier settings, and turns

| decision              | when                                           | becomes               |
|-----------------------|------------------------------------------------|-----------------------|
| RETRY or DEAD_LETTER  | OOM, not permanent, a larger tier configured   | ESCALATE to that tier |
| DEAD_LETTER after OOM | tiers, and this is the largest                 | the same, saying so   |
| REQUEUE               | preemption budget spent, a lane, default tier  | ESCALATE to the lane  |

``WORKER_MAX_INTERRUPTIONS`` still caps the total (past it the table says DEAD_LETTER, which
no preemption escalates). A tier or lane that is misconfigured (no queue URL, or this tier's own
queue) never loses the job: the decision stays as the table made it, and the reason is logged.
The lane has the default tier's memory, so a job on the larger tier stays on spot.

``Escalator`` carries an ESCALATE out: send the copy to the target queue, then record the move
(QUEUED, the tier history), then delete the message in hand. A send that fails changes nothing,
and the settler carries out the table's own decision instead (``Decision.fallback``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools import Logger

from gpu_worker.attempt import Attempt
from gpu_worker.config import WorkerConfig
from gpu_worker.decisions import Action, Decision
from gpu_worker.faults import describe
from spotline.contract import ErrorKind, JobStatus
from spotline.jobstore import JobError, JobStore, utc_now
from spotline.queue import JobQueue
from spotline.tiers import (
    DEFAULT_TIER,
    ON_DEMAND_TIER,
    TIER,
    TIER_HISTORY,
    gib,
    largest_tier_message,
)

logger = Logger(service="spotline-worker", child=True)


@dataclass(frozen=True)
class TierSettings:
    """This worker's place among the tiers (the user data writes them from the instance's
    ``spotline-tier`` tag); ``tier`` empty: a one-pool stack, nothing escalates."""

    tier: str = ""
    queue_url: str = ""
    larger_tier: str = ""
    larger_queue_url: str = ""
    on_demand_queue_url: str = ""
    preemptions_before_on_demand: int = 2

    @classmethod
    def from_config(cls, config: WorkerConfig) -> TierSettings:
        return cls(
            tier=config.tier,
            queue_url=config.queue_url,
            larger_tier=config.escalation_tier,
            larger_queue_url=config.escalation_queue_url,
            on_demand_queue_url=config.on_demand_queue_url,
            preemptions_before_on_demand=config.preemptions_before_on_demand,
        )


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    error: JobError | None
    # Why an escalation that was due did not happen (a misconfigured tier): logged.
    fallback_reason: str = ""


def escalate(
    decision: Decision,
    error: JobError | None,
    *,
    permanent: bool,
    interruptions: int,
    limit_bytes: int | None,
    settings: TierSettings,
) -> Verdict:
    """``interruptions``: the job's count before this attempt's failure."""
    verdict = _escalate(decision, error, permanent, interruptions, limit_bytes, settings)
    if verdict.fallback_reason:
        logger.warning("escalation skipped", extra={"reason": verdict.fallback_reason})
    return verdict


def _escalate(
    decision: Decision,
    error: JobError | None,
    permanent: bool,
    interruptions: int,
    limit_bytes: int | None,
    settings: TierSettings,
) -> Verdict:
    if error is None or not settings.tier:
        return Verdict(decision, error)
    error = dataclasses.replace(error, tier=settings.tier)
    oom = error.kind == ErrorKind.OOM and not permanent
    if oom and decision.action in (Action.RETRY, Action.DEAD_LETTER):
        return _larger_tier(decision, error, limit_bytes, settings)
    if error.kind == ErrorKind.INTERRUPTED and decision.action is Action.REQUEUE:
        return _on_demand(decision, error, interruptions, settings)
    return Verdict(decision, error)


def _larger_tier(
    decision: Decision, error: JobError, limit_bytes: int | None, settings: TierSettings
) -> Verdict:
    peak, limit = error.peak_memory_bytes, error.limit_bytes or limit_bytes
    if not settings.larger_tier and not settings.larger_queue_url:
        # The largest tier: the usual retries; its dead letter tells what no tier has.
        if decision.action is Action.DEAD_LETTER:
            message = f"{largest_tier_message(peak, limit)}: {error.message}"
            return Verdict(decision, dataclasses.replace(error, message=message))
        return Verdict(decision, error)
    target = settings.larger_tier or "larger"
    problem = _misconfigured(
        settings.larger_queue_url, settings, f"tier {target}", "WORKER_ESCALATION_QUEUE_URL"
    )
    if problem:
        return Verdict(decision, error, problem)
    reason = (
        f"OOM on tier {settings.tier} (peak {gib(peak)} GiB of {gib(limit)}): "
        f"to tier {target}, not again on the same box"
    )
    escalated = Decision(
        Action.ESCALATE,
        reason,
        queue_url=settings.larger_queue_url,
        tier=target,
        fallback=decision,
    )
    return Verdict(escalated, error)


def _on_demand(
    decision: Decision, error: JobError, interruptions: int, settings: TierSettings
) -> Verdict:
    preempted = interruptions + 1
    if (
        not settings.on_demand_queue_url
        or preempted < settings.preemptions_before_on_demand
        or settings.tier == ON_DEMAND_TIER
        or settings.tier != DEFAULT_TIER  # the lane has the default tier's memory
    ):
        return Verdict(decision, error)
    problem = _misconfigured(
        settings.on_demand_queue_url, settings, "the on-demand lane", "WORKER_ON_DEMAND_QUEUE_URL"
    )
    if problem:
        return Verdict(decision, error, problem)
    reason = (
        f"preempted {preempted} times (budget {settings.preemptions_before_on_demand}): "
        "to the on-demand lane"
    )
    escalated = Decision(
        Action.ESCALATE,
        reason,
        queue_url=settings.on_demand_queue_url,
        tier=ON_DEMAND_TIER,
        fallback=decision,
    )
    return Verdict(escalated, error)


def _misconfigured(url: str, settings: TierSettings, what: str, variable: str) -> str:
    if not url:
        return f"{what} has no queue URL ({variable} is empty): the ordinary path instead"
    if url == settings.queue_url:
        return f"{what} is this tier's own queue ({variable}): the ordinary path instead"
    return ""


class Escalator:
    """Carries an ESCALATE out: send to the target queue, record the move, delete ours."""

    def __init__(self, sqs: Any, store: JobStore) -> None:
        self.sqs = sqs
        self.store = store
        self._queues: dict[str, JobQueue] = {}

    def _queue(self, url: str) -> JobQueue:
        if url not in self._queues:
            self._queues[url] = JobQueue(self.sqs, url)
        return self._queues[url]

    def carry_out(
        self, attempt: Attempt, error: JobError, decision: Decision, source: JobQueue
    ) -> bool:
        """True when the job moved; False when the copy could not be sent (nothing changed:
        the caller carries out ``decision.fallback``)."""
        assert attempt.record is not None and attempt.token is not None
        assert attempt.job_message is not None
        record = attempt.record
        interrupted = error.kind == ErrorKind.INTERRUPTED
        interruptions = record.interruptions + (1 if interrupted else 0)
        try:
            # First the copy: a crash after it leaves two copies, and the lease lets one run.
            self._queue(decision.queue_url).send(
                attempt.job_message.with_interruptions(interruptions)
            )
        except Exception as exc:  # noqa: BLE001 - any failure: the ordinary path instead
            logger.warning(
                "escalation not sent: the ordinary path instead",
                extra={"target_tier": decision.tier, "error": describe(exc)},
            )
            return False
        entry = {
            "from": error.tier,
            "to": decision.tier,
            "attempt": record.attempts + 1,
            "error_kind": str(error.kind),
            "peak_memory_bytes": error.peak_memory_bytes,
            "limit_bytes": error.limit_bytes,
            "at": utc_now(),
        }
        history = [*(record.extra.get(TIER_HISTORY) or []), _without_none(entry)]
        self.store.transition(
            record.job_id,
            JobStatus.QUEUED,
            expect_owner=attempt.token,
            set_values={"last_error": error.to_dict(), TIER_HISTORY: history, TIER: decision.tier},
            remove=("owner_token",),
            increment={"interruptions" if interrupted else "attempts": 1},
        )
        source.delete(attempt.message.receipt_handle)
        logger.warning(
            "job escalated",
            extra={
                "from_tier": error.tier,
                "target_tier": decision.tier,
                "reason": decision.reason,
            },
        )
        return True


def _without_none(entry: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in entry.items() if value is not None}
