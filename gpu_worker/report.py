"""The worker's "job finished" line (spotline/log_lines.py says who else reads it). An
error's text can quote the job's input (an analyzer's "ValueError: could not convert string to
float: '<input>'", a traceback's frames): the line carries its first line only, at most 300
characters. The job record keeps the fuller message.
"""

from __future__ import annotations

from aws_lambda_powertools import Logger

from gpu_worker.child import first_line
from gpu_worker.decisions import Action, Decision
from gpu_worker.supervisor import AttemptOutcome
from spotline.log_lines import JOB_FINISHED, JobFinished

logger = Logger(service="spotline-worker", child=True)


def job_finished(
    decision: Decision,
    outcome: AttemptOutcome,
    *,
    heartbeats: int,
    max_attempts: int,
    peak_bytes: int,
    limit_bytes: int,
) -> None:
    error = outcome.error
    line = JobFinished(
        action=str(decision.action),
        reason=decision.reason,
        duration_s=round(outcome.duration_s, 3),
        error_kind=str(error.kind) if error else None,
        heartbeats=heartbeats,
        max_attempts=max_attempts,
        backoff_s=decision.backoff_s if decision.action is Action.RETRY else None,
        peak_memory_bytes=(error.peak_memory_bytes if error else None) or peak_bytes or None,
        memory_limit_bytes=(error.limit_bytes if error else None) or limit_bytes,
        error_message=(first_line(error.message) if error else "") or None,
    )
    logger.info(JOB_FINISHED, extra=line.extra())
