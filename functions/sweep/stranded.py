"""Stranded jobs: stored QUEUED by enqueue, their message never sent.

Enqueue writes the job record first and sends its message second, so a worker never receives a
job it cannot find. If enqueue stops between the two (a timeout, an SQS outage, a killed
container) and the client never retries with its Idempotency-Key, nothing else would ever send
the message: the job would wait QUEUED forever. This sweep sends it. A duplicate message (enqueue
did send, and only the write after it failed) is harmless: the worker gives exactly-once effect.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError

from spotline.contract import JobMessage, JobStatus
from spotline.jobstore import JobStore, JobStoreError
from spotline.queue import JobQueue, QueueError
from spotline.settings import JobResources, env_int, job_tiers_from_env
from spotline.tiers import TIER, Tier

# Longer than the enqueue function's Timeout (30 s): a younger unsent job may still be on its
# way from a running enqueue (template StrandedJobAfterSeconds; the doctor checks the two).
DEFAULT_STRANDED_AFTER_S = 120
# One run's share; the rest waits for the next run (the function's Timeout bounds a run).
MAX_JOBS_PER_RUN = 500


@dataclass(frozen=True)
class SweepSettings:
    jobs: JobResources
    stranded_after_s: int = DEFAULT_STRANDED_AFTER_S
    # JOB_TIERS (stacks with WorkerTiers): a stranded job goes to the queue of the tier enqueue
    # chose for it (its record's ``tier``), as enqueue would have sent it.
    tiers: tuple[Tier, ...] = ()

    @classmethod
    def from_env(cls) -> SweepSettings:
        return cls(
            jobs=JobResources.from_env(),
            stranded_after_s=env_int("STRANDED_AFTER_S", DEFAULT_STRANDED_AFTER_S),
            tiers=job_tiers_from_env(),
        )


@dataclass
class SweepResult:
    sent: list[str] = field(default_factory=list)
    # Already past QUEUED: a worker received its message (the send succeeded, the write after
    # it did not), so only the unsent marker was left to clear.
    cleared: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "cleared": self.cleared, "failed": self.failed}


class StrandedJobsNotSent(RuntimeError):
    """Some stranded jobs could not be sent this run (the next run tries again)."""


def sweep(
    store: JobStore,
    queue: JobQueue,
    *,
    now: datetime,
    stranded_after_s: float,
    logger: Any,
    limit: int = MAX_JOBS_PER_RUN,
    tier_queues: Mapping[str, JobQueue] | None = None,
) -> SweepResult:
    """Send the message of every job stored more than ``stranded_after_s`` before ``now`` and
    never sent, then mark it sent. One job's failure does not stop the others. A job stored
    for a tier goes to that tier's queue (``tier_queues``); a tier with no queue here sends it
    to ``queue``, logged: never left unsent."""
    result = SweepResult()
    cutoff = now - timedelta(seconds=stranded_after_s)
    for record in store.unsent_before(cutoff, limit=limit):
        try:
            if record.status == JobStatus.QUEUED:
                # Sent as stored: a request that no longer validates (the rules changed since)
                # is the worker's to refuse as INVALID_INPUT, which dead-letters and alerts.
                target = (
                    _tier_queue(_stored_tier(store, record.job_id), queue, tier_queues, logger)
                    if tier_queues
                    else queue
                )
                target.send(JobMessage(record.job_id, record.request))
                store.mark_sent(record.job_id)
                result.sent.append(record.job_id)
                logger.warning(
                    "stranded job sent",
                    extra={"job_id": record.job_id, "analyzer": record.request.get("analyzer")},
                )
            else:
                store.mark_sent(record.job_id)
                result.cleared.append(record.job_id)
                logger.info(
                    "unsent marker cleared",
                    extra={"job_id": record.job_id, "status": str(record.status)},
                )
        except (JobStoreError, QueueError, BotoCoreError) as exc:
            result.failed[record.job_id] = f"{type(exc).__name__}: {exc}"[:500]
            logger.exception("stranded job not sent", extra={"job_id": record.job_id})
    return result


def _stored_tier(store: JobStore, job_id: str) -> Any:
    """The tier enqueue stored: UnsentIndex projects only status and request (a GSI's
    projection cannot change in place), so one read per stranded job, on stacks with tiers."""
    full = store.get(job_id)
    return None if full is None else full.extra.get(TIER)


def _tier_queue(
    tier: Any, queue: JobQueue, tier_queues: Mapping[str, JobQueue], logger: Any
) -> JobQueue:
    if not tier:
        return queue
    found = tier_queues.get(str(tier))
    if found is None:
        logger.warning(
            "stranded job's tier has no queue here: sent to the jobs queue",
            extra={"tier": str(tier)[:80]},
        )
        return queue
    return found
