"""``python -m devstack demo``: the whole pipeline on this machine, a live view, a verdict."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from devstack.stack import Devstack
from pipeline.contract import TERMINAL_STATUSES, JobStatus
from pipeline.jobstore import JobRecord

console = Console()
QUIET_HANDLERS = {"POWERTOOLS_LOG_LEVEL": "WARNING", "POWERTOOLS_METRICS_DISABLED": "true"}


@dataclass
class Expectation:
    job_id: str
    label: str
    status: JobStatus
    # Returns a problem description, or None when the finished job is as it should be.
    check: Callable[[Devstack, JobRecord], str | None] | None = None


@dataclass
class Check:
    label: str
    ok: bool
    detail: str = ""


def _echo_result_matches(expected_input: Any) -> Callable[[Devstack, JobRecord], str | None]:
    def check(dev: Devstack, record: JobRecord) -> str | None:
        if record.result_uri is None:
            return "no result_uri"
        result = dev.read_result(record.result_uri)
        return None if result == expected_input else f"result {result!r} != input"

    return check


def _sleep_result_ok(dev: Devstack, record: JobRecord) -> str | None:
    if record.result_uri is None:
        return "no result_uri"
    result = dev.read_result(record.result_uri)
    if sorted(result["ran"]) != list(range(result["steps"])):
        return f"steps ran {result['ran']} (expected each of {result['steps']} once)"
    return None


def submit_jobs(dev: Devstack) -> tuple[list[Expectation], list[Check]]:
    expectations: list[Expectation] = []
    checks: list[Check] = []
    for index in range(12):
        payload = {"text": f"document {index}", "n": index}
        status, body = dev.submit({"analyzer": "echo", "input": payload})
        checks.append(Check(f"submit echo #{index}", status == 202, f"HTTP {status}"))
        if status == 202:
            expectations.append(
                Expectation(
                    body["job_id"], "echo", JobStatus.SUCCEEDED, _echo_result_matches(payload)
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
                    body["job_id"], "sleep (checkpoints)", JobStatus.SUCCEEDED, _sleep_result_ok
                )
            )
    # The same Idempotency-Key twice is one job and one message.
    request = {"analyzer": "echo", "input": {"order": 42}}
    first = dev.submit(request, idempotency_key="order-42")
    second = dev.submit(request, idempotency_key="order-42")
    same = first[0] == second[0] == 202 and first[1]["job_id"] == second[1]["job_id"]
    checks.append(Check("Idempotency-Key twice -> one job", same, first[1].get("job_id", "")[:8]))
    if first[0] == 202:
        expectations.append(
            Expectation(
                first[1]["job_id"],
                "echo (idempotent)",
                JobStatus.SUCCEEDED,
                _echo_result_matches({"order": 42}),
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
    return expectations, checks


def _progress_table(counts: Counter[str], total: int, elapsed: float) -> Table:
    table = Table(title=f"spotline demo: {total} jobs, {elapsed:4.1f}s", title_justify="left")
    for status in JobStatus:
        table.add_column(str(status), justify="right")
    table.add_column("progress")
    done = counts[JobStatus.SUCCEEDED] + counts[JobStatus.DEAD_LETTERED]
    width = 30
    filled = int(width * done / total) if total else width
    table.add_row(*(str(counts[s]) for s in JobStatus), "█" * filled + "░" * (width - filled))
    return table


def wait_for_jobs(
    dev: Devstack, expectations: list[Expectation], timeout_s: float
) -> dict[str, JobRecord]:
    started = time.monotonic()
    records: dict[str, JobRecord] = {}
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        while True:
            counts: Counter[str] = Counter()
            for expectation in expectations:
                record = dev.job(expectation.job_id)
                if record is not None:
                    records[expectation.job_id] = record
                    counts[record.status] += 1
            elapsed = time.monotonic() - started
            live.update(_progress_table(counts, len(expectations), elapsed))
            finished = all(r.status in TERMINAL_STATUSES for r in records.values()) and len(
                records
            ) == len(expectations)
            if finished or elapsed > timeout_s:
                return records
            time.sleep(0.25)  # bounded by timeout_s above


def summarize(
    dev: Devstack,
    expectations: list[Expectation],
    records: dict[str, JobRecord],
    checks: list[Check],
) -> bool:
    table = Table(title="jobs", title_justify="left")
    for column in ("job", "kind", "expected", "actual", "attempts", "interruptions", "check"):
        table.add_column(column)
    all_ok = all(c.ok for c in checks)
    for expectation in expectations:
        record = records.get(expectation.job_id)
        actual = str(record.status) if record else "missing"
        problem = None
        if record is None or record.status != expectation.status:
            problem = f"expected {expectation.status}"
        elif expectation.check is not None:
            problem = expectation.check(dev, record)
        all_ok &= problem is None
        table.add_row(
            expectation.job_id[:8],
            expectation.label,
            str(expectation.status),
            actual,
            str(record.attempts if record else "-"),
            str(record.interruptions if record else "-"),
            "[green]ok[/]" if problem is None else f"[red]{problem}[/]",
        )
    console.print(table)
    depths = dev.queue_depths()
    empty = depths["jobs"] == (0, 0)
    checks.append(Check("analysis queue empty", empty, f"visible/in flight {depths['jobs']}"))
    all_ok &= empty
    checks_table = Table(title="checks", title_justify="left")
    checks_table.add_column("check")
    checks_table.add_column("result")
    checks_table.add_column("detail")
    for check in checks:
        checks_table.add_row(
            check.label, "[green]ok[/]" if check.ok else "[red]FAILED[/]", check.detail
        )
    console.print(checks_table)
    return all_ok


def run(timeout_s: float = 45.0) -> int:
    started = time.monotonic()
    console.rule("spotline demo")
    console.print(
        "moto server as AWS, resources from template.yaml, the real enqueue handler, "
        "a real `python -m gpu_worker` process"
    )
    # The handlers run in this process: keep their JSON logs and EMF metrics off the live view.
    with Devstack(handler_env=QUIET_HANDLERS) as dev:
        worker = dev.start_worker("worker-a", WORKER_VISIBILITY_WINDOW_S="6")
        console.print(f"worker-a pid {worker.pid}; logs in {dev.workdir}")
        expectations, checks = submit_jobs(dev)
        records = wait_for_jobs(dev, expectations, timeout_s)
        ok = summarize(dev, expectations, records, checks)
        ok &= worker.alive()
    elapsed = time.monotonic() - started
    verdict = "[green]every job reached its expected state[/]" if ok else "[red]demo FAILED[/]"
    console.print(f"{verdict} in {elapsed:.1f}s")
    return 0 if ok else 1
