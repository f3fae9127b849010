"""Submitting a job: store it QUEUED first, then send the message."""

from __future__ import annotations

from typing import Any

from spotline.contract import (
    JobMessage,
    input_key,
    job_id_for_idempotency_key,
    new_job_id,
)
from spotline.jobstore import JobRecord, JobStore
from spotline.queue import JobQueue

MAX_IDEMPOTENCY_KEY_LENGTH = 255


class PayloadTooLarge(ValueError):
    """The job message would exceed the queue's message size limit (HTTP 413)."""


class IdempotencyConflict(ValueError):
    """An Idempotency-Key was reused with a different request (HTTP 409)."""


class InvalidIdempotencyKey(ValueError):
    """The Idempotency-Key header is empty or too long (HTTP 400)."""


def submit(
    request: dict[str, Any],
    *,
    store: JobStore,
    queue: JobQueue,
    max_message_bytes: int,
    idempotency_key: str | None = None,
    input_bucket: str | None = None,
    submitter: str | None = None,
) -> JobRecord:
    """Store the job as QUEUED, then send its message; return the job record.

    ``submitter`` (the caller, see callers.py) is kept on the record and scopes the
    Idempotency-Key: the same key from two callers names two jobs.

    The record is written before the message is sent, so a worker never receives a job it
    cannot find. If the send fails after the record was written, the record stays unsent and
    a retry with the same Idempotency-Key sends it (a duplicate message is harmless: the
    worker's conditional writes give exactly-once effect).
    """
    if "input_uri" in request:
        # The contract's one rule (parse_request applied it already; a caller that built the
        # request itself gets the same answer): an object under inputs/ of the stack's bucket.
        input_key(request["input_uri"], input_bucket)
    if idempotency_key is not None:
        key = idempotency_key.strip()
        if not key or len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
            raise InvalidIdempotencyKey(
                f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters"
            )
        job_id = job_id_for_idempotency_key(key, submitter or "")
    else:
        job_id = new_job_id()
    message = JobMessage(job_id=job_id, request=request)
    size = len(message.to_json().encode("utf-8"))
    if size > max_message_bytes:
        raise PayloadTooLarge(
            f"job message is {size} bytes; the queue accepts at most {max_message_bytes}"
            " (put large inputs in the input bucket and pass input_uri)"
        )
    record, created = store.create(job_id, request, submitter=submitter)
    if not created:
        if record.request != request:
            raise IdempotencyConflict("Idempotency-Key was already used with a different request")
        if record.sent:
            return record
    queue.send(message)
    store.mark_sent(job_id)
    return record
