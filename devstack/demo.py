"""``python -m devstack demo``: the whole pipeline on this machine, a live view, a verdict."""

from __future__ import annotations

import time
from collections import Counter

from rich.console import Console
from rich.live import Live
from rich.table import Table

from devstack.drills import DRILLS, Check, Drill, Expectation
from devstack.stack import Devstack
from spotline.contract import TERMINAL_STATUSES, JobStatus
from spotline.jobstore import JobRecord

console = Console()
# The handlers run in this process: keep their JSON logs and EMF metrics off the live view.
QUIET_HANDLERS = {"POWERTOOLS_LOG_LEVEL": "WARNING", "POWERTOOLS_METRICS_DISABLED": "true"}


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
    dev: Devstack, drills: list[Drill], expectations: list[Expectation], timeout_s: float
) -> dict[str, JobRecord]:
    started = time.monotonic()
    records: dict[str, JobRecord] = {}
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        while True:
            elapsed = time.monotonic() - started
            for drill in drills:
                drill.tick(dev, elapsed)
            counts: Counter[str] = Counter()
            for expectation in expectations:
                record = dev.job(expectation.job_id)
                if record is not None:
                    records[expectation.job_id] = record
                    counts[record.status] += 1
            live.update(_progress_table(counts, len(expectations), elapsed))
            finished = len(records) == len(expectations) and all(
                r.status in TERMINAL_STATUSES for r in records.values()
            )
            if (finished and all(d.done(dev) for d in drills)) or elapsed > timeout_s:
                return records
            time.sleep(0.25)  # bounded by timeout_s above


def summarize(
    dev: Devstack,
    expectations: list[Expectation],
    records: dict[str, JobRecord],
    checks: list[Check],
) -> bool:
    table = Table(title="jobs", title_justify="left")
    for column in ("job", "kind", "expected", "actual", "attempts", "interrupts", "last error"):
        table.add_column(column)
    table.add_column("check")
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
            str(record.last_error.kind) if record and record.last_error else "",
            "[green]ok[/]" if problem is None else f"[red]{problem}[/]",
        )
    console.print(table)
    checks_table = Table(title="checks", title_justify="left")
    for column in ("check", "result", "detail"):
        checks_table.add_column(column)
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
        "moto server as AWS, resources from template.yaml, the real handlers, "
        "real `python -m gpu_worker` processes"
    )
    drills = [drill_class() for drill_class in DRILLS]
    worker_env: dict[str, str] = {"WORKER_VISIBILITY_WINDOW_S": "6"}
    for drill in drills:
        worker_env.update(drill.worker_env())
    with Devstack(handler_env=QUIET_HANDLERS) as dev:
        try:
            for drill in drills:
                drill.setup(dev)
            worker = dev.start_worker("worker-a", **worker_env)
            console.print(f"worker-a pid {worker.pid}; logs in {dev.workdir}")
            expectations = [e for drill in drills for e in drill.submit(dev)]
            records = wait_for_jobs(dev, drills, expectations, timeout_s)
            checks = [c for drill in drills for c in drill.checks(dev, records)]
            depths = dev.queue_depths()
            checks.append(
                Check("analysis queue empty", depths["jobs"] == (0, 0), f"{depths['jobs']}")
            )
            checks.append(Check("worker-a still alive", worker.alive(), f"pid {worker.pid}"))
            ok = summarize(dev, expectations, records, checks)
        finally:
            for drill in drills:
                drill.teardown(dev)
    elapsed = time.monotonic() - started
    verdict = "[green]every job reached its expected state[/]" if ok else "[red]demo FAILED[/]"
    console.print(f"{verdict} in {elapsed:.1f}s")
    return 0 if ok else 1
