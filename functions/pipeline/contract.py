"""The job contract: statuses, failure kinds, the request schema and the queue message.

One source of truth for the enqueue function, the dead-letter function, the worker,
devstack and the tests. Nobody restates a status string or an attribute name.
"""

from __future__ import annotations

import enum
import functools
import json
import uuid
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match


class JobStatus(enum.StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    DEAD_LETTERED = "DEAD_LETTERED"


class ErrorKind(enum.StrEnum):
    OOM = "OOM"
    TIMEOUT = "TIMEOUT"
    ANALYZER_ERROR = "ANALYZER_ERROR"
    INVALID_INPUT = "INVALID_INPUT"
    INTERRUPTED = "INTERRUPTED"
    UNKNOWN = "UNKNOWN"


# Status moves only forward. RUNNING -> RUNNING is an ownership takeover (the previous holder is
# presumed dead because SQS redelivered its message); DEAD_LETTERED -> QUEUED is the operator's
# explicit redrive, never something a worker does.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.DEAD_LETTERED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.RUNNING, JobStatus.QUEUED, JobStatus.SUCCEEDED, JobStatus.DEAD_LETTERED}
    ),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.DEAD_LETTERED: frozenset({JobStatus.QUEUED}),
}

TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.DEAD_LETTERED})


def can_transition(current: JobStatus, new: JobStatus) -> bool:
    return new in TRANSITIONS[current]


class MessageAttribute(enum.StrEnum):
    """SQS message attributes the worker sets when it dead-letters a job itself."""

    JOB_ID = "job_id"
    ERROR_KIND = "error_kind"
    ERROR_MESSAGE = "error_message"
    ATTEMPTS = "attempts"
    PEAK_MEMORY_BYTES = "peak_memory_bytes"


@dataclass(frozen=True)
class SchemaViolation:
    path: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


class InvalidJob(ValueError):
    """A job request that can never succeed as sent (HTTP 400, or INVALID_INPUT in the worker)."""

    def __init__(self, message: str, violations: list[SchemaViolation] | None = None) -> None:
        super().__init__(message)
        self.violations = violations or []


@functools.cache
def job_schema() -> dict[str, Any]:
    text = resources.files("pipeline").joinpath("job_schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    Draft202012Validator.check_schema(schema)
    return schema


@functools.cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(job_schema())


def analyzer_names() -> list[str]:
    return list(job_schema()["properties"]["analyzer"]["enum"])


def _json_path(parts: Any) -> str:
    path = "$"
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _describe(error: Any) -> str:
    # oneOf on input/input_uri produces an unreadable default message; say what the rule is.
    if error.validator == "oneOf" and not error.path:
        return "exactly one of 'input' or 'input_uri' is required"
    return str(error.message)


def validate_request(request: Any) -> dict[str, Any]:
    """Validate a decoded job request; raise InvalidJob listing every failing path."""
    if not isinstance(request, dict):
        raise InvalidJob(
            "job request must be a JSON object",
            [SchemaViolation("$", "expected an object")],
        )
    errors = sorted(_validator().iter_errors(request), key=lambda e: list(e.absolute_path))
    if not errors:
        return request
    violations: list[SchemaViolation] = []
    seen: set[tuple[str, str]] = set()
    for error in errors:
        # Descend into if/then and oneOf to the deepest error so the path names the field.
        leaf = best_match([error]) if error.context and error.validator != "oneOf" else error
        item = (_json_path(leaf.absolute_path), _describe(leaf))
        if item not in seen:
            seen.add(item)
            violations.append(SchemaViolation(*item))
    raise InvalidJob("job request does not match the schema", violations)


def parse_request(body: str | bytes | None) -> dict[str, Any]:
    """Decode and validate a raw request body."""
    if body is None or body in ("", b""):
        raise InvalidJob(
            "request body is empty", [SchemaViolation("$", "a JSON object is required")]
        )
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidJob(
            "request body is not valid JSON", [SchemaViolation("$", f"invalid JSON: {exc}")]
        ) from exc
    return validate_request(request)


def new_job_id() -> str:
    return str(uuid.uuid4())


_IDEMPOTENCY_NAMESPACE = uuid.UUID("8a1f6a2e-4f7b-4c53-9d57-2f0b7d0c6d11")


def job_id_for_idempotency_key(key: str) -> str:
    """Same key, same job id: the store's conditional create then makes the submit idempotent."""
    return str(uuid.uuid5(_IDEMPOTENCY_NAMESPACE, key))


def is_job_id(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value.lower()
    except (ValueError, AttributeError, TypeError):
        return False


@dataclass(frozen=True)
class JobMessage:
    """The SQS message body for one job."""

    job_id: str
    request: dict[str, Any]
    interruptions: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        body = {
            "job_id": self.job_id,
            "request": self.request,
            "interruptions": self.interruptions,
            **self.extra,
        }
        return json.dumps(body, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, body: str) -> JobMessage:
        """Parse a message body; raise InvalidJob for anything that is not a job message."""
        try:
            data = json.loads(body)
        except (ValueError, TypeError) as exc:
            raise InvalidJob(f"message body is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise InvalidJob("message body is not a JSON object")
        job_id = data.pop("job_id", None)
        if not isinstance(job_id, str) or not is_job_id(job_id):
            raise InvalidJob("message has no valid job_id")
        request = data.pop("request", None)
        interruptions = data.pop("interruptions", 0)
        if not isinstance(interruptions, int) or interruptions < 0:
            raise InvalidJob("message has an invalid interruptions count")
        return cls(job_id=job_id, request=request, interruptions=interruptions, extra=data)

    def with_interruptions(self, interruptions: int) -> JobMessage:
        return JobMessage(self.job_id, self.request, interruptions, dict(self.extra))


def job_id_from_body(body: str) -> str | None:
    """Best-effort job id from a body that may be malformed (used on the dead-letter side)."""
    try:
        data = json.loads(body)
    except (ValueError, TypeError):
        return None
    if isinstance(data, dict):
        job_id = data.get("job_id")
        if isinstance(job_id, str) and is_job_id(job_id):
            return job_id
    return None
