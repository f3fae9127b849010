from __future__ import annotations

from typing import Any

import pytest

from gpu_worker import analyzers
from gpu_worker.analyzers import (
    Interrupted,
    InvalidInput,
    Job,
    PermanentError,
    RetryableError,
)
from gpu_worker.child import classify
from spotline.contract import ErrorKind, InvalidJob, analyzer_names, validate_request


class Context:
    def __init__(self, stop_after: int | None = None) -> None:
        self.progress_calls: list[dict[str, Any]] = []
        self._stop_after = stop_after

    def should_stop(self) -> bool:
        return self._stop_after is not None and len(self.progress_calls) >= self._stop_after

    def checkpoint(self, state: Any) -> None:
        return None

    def restore(self) -> Any | None:
        return None

    def progress(self, **fields: Any) -> None:
        self.progress_calls.append(fields)


def run(name: str, params: dict[str, Any], *, attempt: int = 1, ctx: Context | None = None) -> Any:
    analyzer = analyzers.create(name)
    analyzer.load()
    return analyzer.analyze(Job("j", name, None, params, attempt=attempt), ctx or Context())


def test_drill_analyzers_are_registered_and_in_the_schema() -> None:
    names = set(analyzers.registered_names())
    assert {"memory_hog", "fail", "crash", "cpu_burn"} <= names
    assert {"memory_hog", "fail", "crash", "cpu_burn"} <= set(analyzer_names())


def test_memory_hog_allocates_until_its_cap() -> None:
    mib = 1024 * 1024
    assert run("memory_hog", {"bytes_per_step": mib, "step_s": 0, "max_bytes": 4 * mib}) == {
        "allocated_bytes": 4 * mib
    }


def test_a_stopped_memory_hog_is_interrupted_not_finished() -> None:
    # Found by the chaos drill: a hog that returned when a SIGTERM asked it to stop was
    # recorded SUCCEEDED, so a poison job escaped its dead letter by meeting a spot notice.
    with pytest.raises(Interrupted, match="stopped after allocating"):
        run("memory_hog", {"bytes_per_step": 1024, "step_s": 0}, ctx=Context(stop_after=2))
    assert classify(Interrupted("stopped"))[0] == ErrorKind.INTERRUPTED


@pytest.mark.parametrize(
    ("error", "exception", "kind", "permanent"),
    [
        ("retryable", RetryableError, ErrorKind.ANALYZER_ERROR, False),
        ("permanent", PermanentError, ErrorKind.ANALYZER_ERROR, True),
        ("invalid_input", InvalidInput, ErrorKind.INVALID_INPUT, True),
        ("gpu_oom", RuntimeError, ErrorKind.OOM, False),
    ],
)
def test_fail_raises_what_params_ask(
    error: str, exception: type[BaseException], kind: ErrorKind, permanent: bool
) -> None:
    with pytest.raises(exception) as raised:
        run("fail", {"error": error})
    assert classify(raised.value) == (kind, permanent)


def test_fail_can_be_transient() -> None:
    with pytest.raises(RetryableError):
        run("fail", {"fail_attempts": 1}, attempt=1)
    assert run("fail", {"fail_attempts": 1}, attempt=2) == {"succeeded_on_attempt": 2}


def test_cpu_burn_spins_on_the_requested_cores() -> None:
    result = run("cpu_burn", {"seconds": 0.2, "processes": 2})
    assert result["processes"] == 2 and result["spins"] > 0


def test_drill_params_are_checked_by_the_schema() -> None:
    validate_request({"analyzer": "crash", "input": None, "params": {"signal": "SIGSEGV"}})
    with pytest.raises(InvalidJob):
        validate_request({"analyzer": "fail", "input": None, "params": {"error": "weird"}})
    with pytest.raises(InvalidJob):
        validate_request({"analyzer": "cpu_burn", "input": None, "params": {"processes": 0}})
