"""Ordinary jobs: echo results equal their inputs, checkpointing sleep jobs, the API's refusals."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from devstack.drills.base import Check, Drill, Expectation
from devstack.stack import Devstack
from spotline.contract import JobStatus
from spotline.jobstore import JobRecord


def echo_result_matches(expected_input: Any) -> Callable[[Devstack, JobRecord], str | None]:
    def check(dev: Devstack, record: JobRecord) -> str | None:
        if record.result_uri is None:
            return "no result_uri"
        result = dev.read_result(record.result_uri)
        return None if result == expected_input else f"result {result!r} != input"

    return check


def sleep_result_ok(dev: Devstack, record: JobRecord) -> str | None:
    if record.result_uri is None:
        return "no result_uri"
    result = dev.read_result(record.result_uri)
    if sorted(result["ran"]) != list(range(result["steps"])):
        return f"steps ran {result['ran']} (expected each of {result['steps']} once)"
    return None


class BasicJobs(Drill):
    name = "basic"

    def __init__(self) -> None:
        self._checks: list[Check] = []

    def submit(self, dev: Devstack) -> list[Expectation]:
        expectations: list[Expectation] = []
        checks = self._checks
        for index in range(12):
            payload = {"text": f"document {index}", "n": index}
            status, body = dev.submit({"analyzer": "echo", "input": payload})
            checks.append(Check(f"submit echo #{index}", status == 202, f"HTTP {status}"))
            if status == 202:
                expectations.append(
                    Expectation(
                        body["job_id"], "echo", JobStatus.SUCCEEDED, echo_result_matches(payload)
                    )
                )
        for seconds in (3, 4):
            request = {
                "analyzer": "sleep",
                "input": {"label": f"{seconds}s of work"},
                "params": {"seconds": seconds, "step_s": 0.25, "checkpoint_every_s": 1},
            }
            status, body = dev.submit(request)
            checks.append(Check(f"submit sleep {seconds}s", status == 202, f"HTTP {status}"))
            if status == 202:
                expectations.append(
                    Expectation(
                        body["job_id"], "sleep (checkpoints)", JobStatus.SUCCEEDED, sleep_result_ok
                    )
                )
        # The same Idempotency-Key twice is one job and one message.
        request = {"analyzer": "echo", "input": {"order": 42}}
        first = dev.submit(request, idempotency_key="order-42")
        second = dev.submit(request, idempotency_key="order-42")
        same = first[0] == second[0] == 202 and first[1]["job_id"] == second[1]["job_id"]
        checks.append(
            Check("Idempotency-Key twice -> one job", same, first[1].get("job_id", "")[:8])
        )
        if first[0] == 202:
            expectations.append(
                Expectation(
                    first[1]["job_id"],
                    "echo (idempotent)",
                    JobStatus.SUCCEEDED,
                    echo_result_matches({"order": 42}),
                )
            )
        # Bad input is refused at the door, with every failing path.
        status, body = dev.submit({"analyzer": "nope", "input": 1, "input_uri": "s3://x/y"})
        paths = sorted({e["path"] for e in body.get("errors", [])})
        checks.append(
            Check("invalid request -> 400", status == 400, f"HTTP {status}: {', '.join(paths)}")
        )
        status, _ = dev.call_api("GET", "/jobs/00000000-0000-4000-8000-000000000000")
        checks.append(Check("unknown job -> 404", status == 404, f"HTTP {status}"))
        return expectations

    def checks(self, dev: Devstack, records: dict[str, JobRecord]) -> list[Check]:
        return self._checks
