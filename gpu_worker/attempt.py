"""One value carries what the worker knows about the message in hand and its job's attempt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gpu_worker.analyzers import Job
from gpu_worker.checkpoint import CheckpointStore, FileCheckpointStore, ResultStore
from spotline.contract import JobMessage
from spotline.jobstore import JobRecord, attempt_id
from spotline.queue import ReceivedMessage


@dataclass
class Attempt:
    """Filled in as handling goes: the message, its parsed body, the job's record, the checked
    request, our ownership token once claimed. Whatever ends the handling reads it."""

    message: ReceivedMessage
    extended_at: float | None = None  # monotonic: a prefetched message's last extension
    job_message: JobMessage | None = None
    record: JobRecord | None = None
    request: dict[str, Any] | None = None
    token: str | None = None
    ran_before: bool = False  # the job started before: it may have left a checkpoint

    @property
    def claimed(self) -> bool:
        return self.record is not None and self.token is not None

    @property
    def attempt_id(self) -> str:
        return attempt_id(self.token or "")

    @property
    def job_id(self) -> str | None:
        return self.job_message.job_id if self.job_message is not None else None


def prepare(
    attempt: Attempt,
    results: ResultStore,
    checkpoints: CheckpointStore | FileCheckpointStore,
    max_input_bytes: int,
) -> tuple[Job, Any | None]:
    """The job as the analyzer sees it, and the state it resumes from. Raises InputError for
    an input the job may not read or cannot use."""
    assert attempt.record is not None and attempt.request is not None
    record, request = attempt.record, attempt.request
    job_input = request.get("input")
    if "input_uri" in request:
        job_input = results.load_input(request["input_uri"], max_input_bytes)
    # Only a job that started before can have left a checkpoint: skip the GET (a 404).
    restored = checkpoints.load(record.job_id) if attempt.ran_before else None
    job = Job(
        job_id=record.job_id,
        analyzer=request["analyzer"],
        input=job_input,
        params=request.get("params") or {},
        attempt=record.attempts + 1,
        interruptions=record.interruptions,
    )
    return job, restored
