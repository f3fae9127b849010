"""The worker's "job finished" log line: one per attempt, read by more than this process.

The template's log subscription filters it, the alarm fan-out turns a child that fell over into
a chat notice from it (functions/alarm_fanout/child_notices.py), and devstack, the tests and the benchmarks count it.
An error's text can quote the job's input (an analyzer's "ValueError: could not convert string
to float: '<input>'", a traceback's frames): the line carries its first line only, at most 300
characters. The job record keeps the fuller message.
"""

from __future__ import annotations

from aws_lambda_powertools import Logger

from gpu_worker.child import first_line
from gpu_worker.decisions import Action, Decision
from gpu_worker.supervisor import Outcome

logger = Logger(service="spotline-worker", child=True)


def job_finished(
    decision: Decision,
    outcome: Outcome,
    *,
    heartbeats: int,
    max_attempts: int,
    peak_bytes: int,
    limit_bytes: int,
) -> None:
    error = outcome.error
    error_line = first_line(error.message) if error else ""
    logger.info(
        "job finished",
        extra={
            "action": str(decision.action),
            "reason": decision.reason,
            "duration_s": round(outcome.duration_s, 3),
            "error_kind": str(error.kind) if error else None,
            "heartbeats": heartbeats,
            "max_attempts": max_attempts,
            "backoff_s": decision.backoff_s if decision.action is Action.RETRY else None,
            "peak_memory_bytes": (error.peak_memory_bytes if error else None) or peak_bytes or None,
            "memory_limit_bytes": (error.limit_bytes if error else None) or limit_bytes,
            "error_message": error_line or None,
        },
    )
