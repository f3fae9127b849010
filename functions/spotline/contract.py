"""The job contract: statuses, failure kinds, the request schema and the queue message.

One source of truth for the enqueue function, the dead-letter function, the worker,
devstack and the tests. Nobody restates a status string or an attribute name.
"""

from __future__ import annotations

import enum
import functools
import json
import math
import posixpath
import uuid
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from spotline.catalog import Catalog, catalog_violations, load_catalog
from spotline.violations import InvalidJob, SchemaViolation, describe_error, json_path

__all__ = ["InvalidJob", "SchemaViolation"]  # re-exported: the contract's errors


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


class MessageAttribute(enum.StrEnum):
    """SQS message attributes the worker sets when it dead-letters a job itself."""

    JOB_ID = "job_id"
    ERROR_KIND = "error_kind"
    ERROR_MESSAGE = "error_message"
    ATTEMPTS = "attempts"
    PEAK_MEMORY_BYTES = "peak_memory_bytes"


# -- a job's boundaries (DESIGN.md "A job's boundaries") ------------------------------------

# A job reads only objects under this prefix of the stack's bucket; it writes only under
# results/{job_id} and checkpoints/{job_id}. Enqueue, the worker and IAM all enforce it.
INPUT_PREFIX = "inputs/"
# Every attempt's runtime limit when the stack sets none (WorkerMaxRuntimeS); a request's
# max_runtime_s may lower it, never raise it.
DEFAULT_MAX_RUNTIME_S = 6 * 3600
# Bounds on any request, checked before the schema: a 200 KB "[[[[...]]]]" must be a 400, not
# a RecursionError in the handler (a 500 and a critical alarm) or in the worker.
MAX_NESTING_DEPTH = 32
MAX_STRING_CHARS = 262144
MAX_ARRAY_ITEMS = 100000
MAX_OBJECT_KEYS = 10000
MAX_INTEGER_DIGITS = 30


@dataclass(frozen=True)
class RequestPolicy:
    """What this stack accepts beyond the schema: the same rules in enqueue and the worker."""

    bucket: str | None = None  # input_uri must name s3://{bucket}/inputs/...
    # Analyzers that exist to break things (spotline-drills, declared ``drill``): only a stack
    # that enables them (EnableDrillAnalyzers) accepts them; in production any caller could
    # wedge a GPU with one.
    drills_enabled: bool = False
    max_runtime_s: int = DEFAULT_MAX_RUNTIME_S
    # The analyzers this side accepts, with their schemas and limits: the deployed catalog in
    # enqueue, the installed plug-ins in the worker. None: the deployed catalog.
    catalog: Catalog | None = None

    def analyzers(self) -> Catalog:
        return self.catalog if self.catalog is not None else load_catalog()

    def runtime_limit_s(self, request: dict[str, Any]) -> int:
        """The attempt's runtime limit: the stack's cap, lowered (never raised) by the
        analyzer's declared default and largest runtime and by the request."""
        limit = self.max_runtime_s
        entry = self.analyzers().get(str(request.get("analyzer")))
        if entry is not None:
            declared_max = entry.limit("max_runtime_s")
            if declared_max:
                limit = min(limit, int(declared_max))
        asked = request.get("max_runtime_s")
        if asked:
            return min(int(asked), limit)
        declared_default = entry.limit("default_runtime_s") if entry is not None else None
        return min(int(declared_default), limit) if declared_default else limit


@functools.cache
def job_schema() -> dict[str, Any]:
    text = resources.files("spotline").joinpath("job_schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    Draft202012Validator.check_schema(schema)
    return schema


@functools.cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(job_schema())


def analyzer_names() -> list[str]:
    """The analyzers of the deployed catalog (drills included where it has them)."""
    return load_catalog().names()


def drill_analyzers() -> list[str]:
    """The deployed catalog's drills (declared ``drill``)."""
    catalog = load_catalog()
    return sorted(set(catalog.names()) - set(catalog.names(drills=False)))


def bound_violations(value: Any) -> list[SchemaViolation]:
    """Where a decoded value breaks the size bounds (depth, numbers, strings, arrays, objects).

    Iterative, so a value nested deeper than Python's recursion limit is measured, not fatal.
    """
    found: list[SchemaViolation] = []
    stack: list[tuple[Any, list[Any]]] = [(value, [])]
    while stack and len(found) < 20:
        item, path = stack.pop()
        where = json_path(path)
        if len(path) > MAX_NESTING_DEPTH:
            found.append(SchemaViolation(where, f"nested deeper than {MAX_NESTING_DEPTH} levels"))
            continue
        if isinstance(item, bool) or item is None:
            continue
        if isinstance(item, int):
            if len(str(abs(item))) > MAX_INTEGER_DIGITS:
                found.append(
                    SchemaViolation(where, f"integer longer than {MAX_INTEGER_DIGITS} digits")
                )
        elif isinstance(item, float):
            if not math.isfinite(item):
                found.append(SchemaViolation(where, "number is not finite"))
        elif isinstance(item, str):
            if len(item) > MAX_STRING_CHARS:
                found.append(
                    SchemaViolation(where, f"string longer than {MAX_STRING_CHARS} characters")
                )
        elif isinstance(item, list):
            if len(item) > MAX_ARRAY_ITEMS:
                found.append(SchemaViolation(where, f"array longer than {MAX_ARRAY_ITEMS} items"))
                continue
            stack.extend((child, [*path, index]) for index, child in enumerate(item))
        elif isinstance(item, dict):
            if len(item) > MAX_OBJECT_KEYS:
                found.append(
                    SchemaViolation(where, f"object with more than {MAX_OBJECT_KEYS} keys")
                )
                continue
            stack.extend((child, [*path, key]) for key, child in item.items())
    return found


def loads_bounded(text: str | bytes, what: str = "request body") -> Any:
    """``json.loads`` that answers InvalidJob, never RecursionError, for hostile nesting."""
    try:
        return json.loads(text)
    except RecursionError as exc:
        raise InvalidJob(
            f"{what} is nested too deeply",
            [SchemaViolation("$", f"nested deeper than {MAX_NESTING_DEPTH} levels")],
        ) from exc
    except (ValueError, UnicodeDecodeError, TypeError) as exc:
        raise InvalidJob(
            f"{what} is not valid JSON", [SchemaViolation("$", f"invalid JSON: {exc}")]
        ) from exc


def input_key(uri: str, bucket: str | None) -> str:
    """The S3 key an ``input_uri`` names, if it is one a job may read: an object under
    ``inputs/`` of the stack's bucket. No empty key, no ``.``/``..`` or empty segments, no
    query string or fragment. Raises InvalidJob naming ``$.input_uri``."""

    def refuse(reason: str) -> InvalidJob:
        where = f"s3://{bucket}/{INPUT_PREFIX}..." if bucket else f"s3://<bucket>/{INPUT_PREFIX}..."
        return InvalidJob(
            f"input_uri {reason}",
            [SchemaViolation("$.input_uri", f"{reason}; expected {where}")],
        )

    if not isinstance(uri, str):
        raise refuse("is not a string")
    if "?" in uri or "#" in uri:
        raise refuse("must not carry a query string or fragment")
    if any(ord(char) < 32 or char == "\\" for char in uri):
        raise refuse("contains control characters or backslashes")
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        raise refuse("must be an s3:// URI")
    if bucket is not None and parts.netloc != bucket:
        raise refuse("must point into the stack's input bucket")
    key = parts.path.removeprefix("/")
    if not key.startswith(INPUT_PREFIX) or len(key) == len(INPUT_PREFIX):
        raise refuse(f"must name an object under {INPUT_PREFIX}")
    segments = key.split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        raise refuse("must not have empty, '.' or '..' segments")
    if posixpath.normpath(key) != key:
        raise refuse("must be a normalised key")
    return key


def validate_request(request: Any, policy: RequestPolicy | None = None) -> dict[str, Any]:
    """Validate a decoded job request; raise InvalidJob listing every failing path.

    The size bounds and the shape of ``input_uri`` always apply; ``policy`` adds this stack's
    rules (its bucket, whether drill analyzers run, the runtime cap).
    """
    if not isinstance(request, dict):
        raise InvalidJob(
            "job request must be a JSON object",
            [SchemaViolation("$", "expected an object")],
        )
    bounds = bound_violations(request)
    if bounds:
        raise InvalidJob("job request exceeds the size bounds", bounds)
    violations = _schema_violations(request)
    # The analyzer's own rules too (policy None: every analyzer of the deployed catalog), so
    # one answer names every failing path.
    rules = policy or RequestPolicy(drills_enabled=True)
    summary, found = catalog_violations(request, rules.analyzers(), drills=rules.drills_enabled)
    violations += [item for item in found if item not in violations]
    if violations:
        raise InvalidJob(
            summary if violations == found else "job request does not match the schema", violations
        )
    if "input_uri" in request:
        input_key(request["input_uri"], policy.bucket if policy else None)
    if policy is not None:
        _check_policy(request, policy)
    return request


def _check_policy(request: dict[str, Any], policy: RequestPolicy) -> None:
    asked = request.get("max_runtime_s")
    if asked is not None and asked > policy.max_runtime_s:
        raise InvalidJob(
            "max_runtime_s is above the stack's cap",
            [
                SchemaViolation(
                    "$.max_runtime_s", f"at most {policy.max_runtime_s} (WorkerMaxRuntimeS)"
                )
            ],
        )


def accepted_analyzers(policy: RequestPolicy | None = None) -> list[str]:
    """The analyzers a stack with ``policy`` accepts (every one without a policy)."""
    if policy is None:
        return analyzer_names()
    return policy.analyzers().names(drills=policy.drills_enabled)


def _schema_violations(request: dict[str, Any]) -> list[SchemaViolation]:
    errors = sorted(_validator().iter_errors(request), key=lambda e: list(e.absolute_path))
    violations: list[SchemaViolation] = []
    seen: set[tuple[str, str]] = set()
    for error in errors:
        # Descend into if/then and oneOf to the deepest error so the path names the field.
        leaf = best_match([error]) if error.context and error.validator != "oneOf" else error
        item = (json_path(leaf.absolute_path), describe_error(leaf))
        if item not in seen:
            seen.add(item)
            violations.append(SchemaViolation(*item))
    return violations


def parse_request(body: str | bytes | None, policy: RequestPolicy | None = None) -> dict[str, Any]:
    """Decode and validate a raw request body."""
    if body is None or body in ("", b""):
        raise InvalidJob(
            "request body is empty", [SchemaViolation("$", "a JSON object is required")]
        )
    return validate_request(loads_bounded(body), policy)


def new_job_id() -> str:
    return str(uuid.uuid4())


_IDEMPOTENCY_NAMESPACE = uuid.UUID("8a1f6a2e-4f7b-4c53-9d57-2f0b7d0c6d11")


def job_id_for_idempotency_key(key: str, caller: str = "") -> str:
    """Same caller and key, same job id: the store's conditional create then makes the submit
    idempotent. Keys are scoped to the caller: two callers' equal keys are two jobs."""
    return str(uuid.uuid5(_IDEMPOTENCY_NAMESPACE, f"{caller}\n{key}" if caller else key))


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
        data = loads_bounded(body, "message body")
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
    except (ValueError, TypeError, RecursionError):
        return None
    if isinstance(data, dict):
        job_id = data.get("job_id")
        if isinstance(job_id, str) and is_job_id(job_id):
            return job_id
    return None
