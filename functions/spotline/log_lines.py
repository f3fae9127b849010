"""Log lines that are an API: one side writes them, another filters or parses them.

``JobFinished`` is the worker's line at the end of every attempt (gpu_worker/report.py writes
it). The template's log subscription filters it by its message and ``error_kind``, the alarm
fan-out turns a child that fell over into a chat notice from it
(functions/alarm_fanout/child_notices.py), and devstack, the tests and the benchmarks count it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

JOB_FINISHED = "job finished"
JOB_STARTED = "job started"


@dataclass(frozen=True)
class JobFinished:
    """The keys of the "job finished" line (besides the logger's own: job_id, attempt, ...)."""

    action: str
    reason: str
    duration_s: float
    error_kind: str | None
    heartbeats: int
    max_attempts: int
    backoff_s: float | None
    peak_memory_bytes: int | None
    memory_limit_bytes: int | None
    # At most its first line, 300 characters: an error's text can quote the job's input.
    error_message: str | None

    def extra(self) -> dict[str, Any]:
        return asdict(self)
