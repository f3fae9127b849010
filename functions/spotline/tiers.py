"""Capacity tiers: what more than one side knows about them (README "Capacity tiers").

A stack may run more than one worker pool, each with its own queue: the default tier, a
larger-memory tier, and the on-demand lane (the standby). The worker re-sends a job that ran out
of memory to the next larger tier and one preempted too often to the lane
(gpu_worker/escalation.py); enqueue starts a job on the smallest tier that fits its analyzer's
declared memory (``JOB_TIERS``); the job record keeps where it ran (``tier``, ``tier_history``)
and ``GET /jobs/{id}`` shows it; the dead-letter side tells the user when a job needs more memory
than the largest tier has.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from spotline.contract import ErrorKind
from spotline.job_record import TIER as TIER  # the record's field names, re-exported
from spotline.job_record import TIER_HISTORY as TIER_HISTORY
from spotline.job_record import JobError

ON_DEMAND_TIER = "on-demand"
DEFAULT_TIER = "default"
# What the dead-letter alert and the user notice say of a job no tier has memory enough for.
LARGEST_TIER_NEED = "needs more memory than the largest tier"


_MIB = 1024 * 1024
_GIB = 1024 * _MIB


class InvalidTiers(ValueError):
    """``JOB_TIERS`` is not ``name=MiB=queue_url`` entries separated by commas."""


@dataclass(frozen=True)
class Tier:
    name: str
    job_memory_bytes: int
    queue_url: str


def parse_tiers(text: str) -> tuple[Tier, ...]:
    """``default=11264=https://...,large=47104=https://...`` -> tiers, smallest first."""
    tiers = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        fields = entry.split("=", 2)
        if len(fields) != 3 or not fields[0] or not fields[2].startswith("https://"):
            raise InvalidTiers(f"JOB_TIERS entry {entry[:80]!r} is not name=MiB=https://queue")
        name, mib, url = fields
        try:
            memory = int(mib) * _MIB
        except ValueError as exc:
            raise InvalidTiers(f"JOB_TIERS entry {name!r}: {mib!r} is not MiB") from exc
        tiers.append(Tier(name, memory, url))
    return tuple(sorted(tiers, key=lambda tier: tier.job_memory_bytes))


def tier_for(tiers: Sequence[Tier], memory_bytes: int | None) -> Tier | None:
    """The smallest tier whose job memory holds ``memory_bytes``; the largest when none does
    (it fails there with the usual dead letter); None without tiers or a declared need."""
    if not tiers or not memory_bytes:
        return None
    return next((t for t in tiers if t.job_memory_bytes >= memory_bytes), tiers[-1])


def gib(value: int | None) -> str:
    return "?" if value is None else f"{value / _GIB:.1f}"


def largest_tier_message(peak_bytes: int | None, limit_bytes: int | None) -> str:
    return f"{LARGEST_TIER_NEED} (peak {gib(peak_bytes)} GiB of {gib(limit_bytes)})"


def largest_tier_reason(error: JobError | None) -> str | None:
    """The user's reason for an OOM that outgrew the largest tier, else None."""
    if error is not None and error.kind == ErrorKind.OOM:
        return error.message if error.message.startswith(LARGEST_TIER_NEED) else None
    return None
