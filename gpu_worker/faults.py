"""Whose fault is it? An AWS fault is not the job's: it never counts as the job's attempt.

Everything that goes wrong while one message is handled ends as an outcome of that job, never as
an exit of the worker (issue 16: one ``input_uri`` made ``head_object`` raise a
``ParamValidationError`` that nothing caught, and the worker died on every redelivery). What the
outcome is depends on whose fault it was:

- **infrastructure** (throttling, a network error, a 5xx, a full or failing disk, an analysis
  child that never came up to take the job): the message is
  released with backoff and no attempt is counted; if such faults persist the worker says so
  (health ``degraded``, the ``InfraFaults`` metric and its alarm) and never dead-letters for them;
- **anything else** (a bug, a hostile body, an analyzer that breaks the protocol): the job's
  attempt failed, and the decision table decides as for any failed attempt.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from gpu_worker.child_process import ChildStartError

# Error codes AWS answers when it, not the request, is the problem (botocore's own retry tables,
# plus S3's and DynamoDB's spellings): throttling, timeouts and 5xx.
INFRA_ERROR_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "RequestThrottled",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "SlowDown",
        "EC2ThrottledException",
        "PriorRequestNotComplete",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "InternalFailure",
        "InternalServerError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        # Credentials or permissions that fail are the stack's problem, not the job's: a job
        # can only name objects under inputs/, which the worker role may always read.
        "AccessDenied",
        "AccessDeniedException",
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "KMS.ThrottlingException",
    }
)


def is_infra_fault(exc: BaseException) -> bool:
    """True when ``exc`` (or what it was raised from) is AWS or the machine failing, not the job.

    ``ParamValidationError`` is botocore refusing a request *we* built from the job's data: it is
    the job's fault (and a bug of ours if it happens at all), never AWS's.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ParamValidationError):
            return False
        if isinstance(current, ClientError):
            error = current.response.get("Error", {})
            status = int(current.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            return error.get("Code") in INFRA_ERROR_CODES or status >= 500
        if isinstance(current, BotoCoreError | ConnectionError | TimeoutError):
            return True
        if isinstance(current, OSError):  # a disk that is full or failing (ENOSPC, EIO)
            return True
        if isinstance(current, ChildStartError):
            # The analysis child never came up to take the job (stopped, hung or killed while
            # starting): the machine's failure, before the job was even handed over.
            return True
        # Only an explicit ``raise ... from``: a bug raised while handling an AWS error must
        # stay a bug, or it would be released (not counted) forever.
        current = current.__cause__
    return False


def describe(exc: BaseException) -> str:
    """``Type: first line of the message``, at most 300 characters (it may quote the job)."""
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return line if len(line) <= 300 else line[:299] + "…"


@dataclass(frozen=True)
class FaultReport:
    total: int
    consecutive: int
    last_at: float | None
    last_error: str | None


class FaultTracker:
    """Counts infrastructure faults so health and metrics can say "AWS is failing".

    ``consecutive`` resets on the next job that settles without one: a single throttled call is
    weather, ``degraded_after`` in a row is an outage an operator should see.
    """

    def __init__(self, degraded_after: int = 3) -> None:
        self.degraded_after = degraded_after
        self._lock = threading.Lock()
        self._total = 0
        self._consecutive = 0
        self._last_at: float | None = None
        self._last_error: str | None = None

    def fault(self, exc: BaseException) -> int:
        """Record one; returns how many happened in a row."""
        with self._lock:
            self._total += 1
            self._consecutive += 1
            self._last_at = time.time()
            self._last_error = describe(exc)
            return self._consecutive

    def ok(self) -> None:
        with self._lock:
            self._consecutive = 0

    @property
    def degraded(self) -> bool:
        return self._consecutive >= self.degraded_after

    def report(self) -> FaultReport:
        with self._lock:
            return FaultReport(self._total, self._consecutive, self._last_at, self._last_error)
