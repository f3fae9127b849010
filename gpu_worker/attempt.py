"""One value carries what the worker knows about the message in hand and its job's attempt."""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass
from typing import Any

from gpu_worker.analyzers import Job
from gpu_worker.checkpoint import CheckpointStore, FileCheckpointStore, ResultStore
from spotline.contract import JobMessage
from spotline.jobstore import JobRecord, JobStore, JobStoreError, attempt_id
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
    # Claimed ahead of its start (gpu_worker/preparer.py): it counts from its start mark on.
    prepared: bool = False
    start_mark: concurrent.futures.Future[None] | None = None

    @property
    def claimed(self) -> bool:
        return self.record is not None and self.token is not None

    def wait_started(self, store: JobStore, timeout_s: float = 60.0) -> None:
        """Every outcome of an attempt claimed ahead is written after its start mark: a job
        released before its mark landed would look never started (its checkpoint skipped).
        A mark that failed for AWS's fault is written once more here; TransitionRefused (the
        job is not ours) and a second AWS fault reach the caller."""
        mark, self.start_mark = self.start_mark, None
        if mark is None:
            return
        try:
            mark.result(timeout=timeout_s)
        except (JobStoreError, concurrent.futures.TimeoutError):
            assert self.record is not None and self.token is not None
            store.mark_started(self.record.job_id, self.token)

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
