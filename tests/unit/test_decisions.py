from __future__ import annotations

import pytest

from gpu_worker.analyzers import InvalidInput, PermanentError, RetryableError
from gpu_worker.child import classify
from gpu_worker.decisions import DECISION_TABLE, Action, backoff_s, decide
from spotline.contract import ErrorKind
from spotline.jobstore import JobError
from spotline_drills import OutOfMemoryError

LIMITS = {
    "max_attempts": 3,
    "max_interruptions": 10,
    "backoff_base_s": 10.0,
    "backoff_max_s": 900.0,
}


def after(kind: ErrorKind, *, attempts: int = 0, permanent: bool = False, interruptions: int = 0):
    return decide(
        JobError(kind, "x"),
        permanent=permanent,
        attempts=attempts,
        interruptions=interruptions,
        **LIMITS,
    )


def test_every_error_kind_has_a_row() -> None:
    assert set(DECISION_TABLE) == set(ErrorKind)


def test_success_is_acknowledged() -> None:
    decision = decide(None, permanent=False, attempts=2, interruptions=0, **LIMITS)
    assert decision.action is Action.ACK


@pytest.mark.parametrize(
    "kind", [ErrorKind.OOM, ErrorKind.TIMEOUT, ErrorKind.ANALYZER_ERROR, ErrorKind.UNKNOWN]
)
def test_retryable_kinds_retry_with_doubling_backoff_then_dead_letter(kind: ErrorKind) -> None:
    first, second, third = (after(kind, attempts=n) for n in range(3))
    assert (first.action, first.backoff_s) == (Action.RETRY, 10.0)
    assert (second.action, second.backoff_s) == (Action.RETRY, 20.0)
    assert third.action is Action.DEAD_LETTER
    assert third.reason == f"{kind} on attempt 3 of 3"


@pytest.mark.parametrize("kind", [ErrorKind.INVALID_INPUT, ErrorKind.ANALYZER_ERROR])
def test_permanent_failures_dead_letter_at_once(kind: ErrorKind) -> None:
    decision = after(kind, permanent=True)
    assert decision.action is Action.DEAD_LETTER and "permanent" in decision.reason


def test_invalid_input_is_dead_lettered_even_when_not_flagged_permanent() -> None:
    assert after(ErrorKind.INVALID_INPUT).action is Action.DEAD_LETTER


def test_interruptions_requeue_and_never_count_as_attempts() -> None:
    decision = after(ErrorKind.INTERRUPTED, attempts=2, interruptions=3)
    assert decision.action is Action.REQUEUE
    assert after(ErrorKind.INTERRUPTED, interruptions=10).action is Action.DEAD_LETTER


def test_one_attempt_allowed_means_no_retry() -> None:
    decision = decide(
        JobError(ErrorKind.OOM, "x"),
        permanent=False,
        attempts=0,
        interruptions=0,
        **{**LIMITS, "max_attempts": 1},
    )
    assert decision.action is Action.DEAD_LETTER


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [backoff_s(n, 10, 60) for n in range(1, 6)] == [10, 20, 40, 60, 60]


class AnalysisFailed(RuntimeError):
    pass


def _wrapped_gpu_oom() -> BaseException:
    try:
        try:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        except OutOfMemoryError as exc:
            raise AnalysisFailed("batch 3 failed") from exc
    except AnalysisFailed as outer:
        return outer


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (MemoryError(), (ErrorKind.OOM, False)),
        (OutOfMemoryError("CUDA out of memory"), (ErrorKind.OOM, False)),
        (RuntimeError("CUDA error: out of memory"), (ErrorKind.OOM, False)),
        (_wrapped_gpu_oom(), (ErrorKind.OOM, False)),
        (InvalidInput("no"), (ErrorKind.INVALID_INPUT, True)),
        (PermanentError("no"), (ErrorKind.ANALYZER_ERROR, True)),
        (RetryableError("later"), (ErrorKind.ANALYZER_ERROR, False)),
        (ValueError("bug"), (ErrorKind.ANALYZER_ERROR, False)),
        (RuntimeError("host out of memory in the cache"), (ErrorKind.ANALYZER_ERROR, False)),
    ],
)
def test_analyzer_exceptions_are_classified(exc: BaseException, expected: tuple) -> None:
    assert classify(exc) == expected
