"""``spotline`` (or ``python -m spotline_ops.cli``): the operator's view of jobs and dead letters.

    spotline --stack-name spotline jobs status JOB_ID
    spotline --stack-name spotline dlq list
    spotline --stack-name spotline dlq redrive --job JOB_ID [--reset-attempts] [--dry-run]
    spotline --stack-name spotline dlq redrive --all [--reset-attempts] [--dry-run]

Names come from the stack's outputs (``--stack-name``), or explicitly (``--table``,
``--queue-url``, ``--dlq-url``). ``--endpoint-url`` points every client at devstack's moto
server, where a stack provisioned by devstack is found by its resource names.

A redrive works from the job record, not from the DLQ message (the dead-letter function has
usually consumed it): the job goes DEAD_LETTERED -> QUEUED (attempts reset on request), a fresh
message goes to the analysis queue, and any copy still waiting in the DLQ is removed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from spotline.contract import JobMessage, JobStatus, is_job_id, job_id_from_body
from spotline.jobstore import JobRecord, JobStore, JobStoreError, TransitionRefused, utc_now
from spotline.notified import delivered_for
from spotline.queue import JobQueue, QueueError

PROGRESS_FROM = 5  # show a progress bar from this many jobs on


class CliError(RuntimeError):
    """A problem the operator can fix (missing names, unknown stack); printed, exit 2."""


@dataclass(frozen=True)
class Names:
    table: str
    queue_url: str
    dlq_url: str


@dataclass
class Clients:
    dynamodb: Any
    sqs: Any
    names: Names

    @property
    def store(self) -> JobStore:
        return JobStore(self.dynamodb, self.names.table)

    @property
    def queue(self) -> JobQueue:
        return JobQueue(self.sqs, self.names.queue_url)

    @property
    def dlq(self) -> JobQueue:
        return JobQueue(self.sqs, self.names.dlq_url)


def _stack_outputs(session: boto3.Session, endpoint_url: str | None, stack: str) -> dict[str, str]:
    cloudformation = session.client("cloudformation", endpoint_url=endpoint_url)
    try:
        described = cloudformation.describe_stacks(StackName=stack)["Stacks"][0]
    except ClientError as exc:
        if endpoint_url is None:
            raise CliError(f"stack {stack!r} not found: {exc}") from exc
        return {}
    return {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}


def resolve_names(args: argparse.Namespace, session: boto3.Session) -> Names:
    """Explicit names win; else the stack's outputs; else (devstack) its resource names."""
    table, queue_url, dlq_url = args.table, args.queue_url, args.dlq_url
    if not (table and queue_url and dlq_url):
        if not args.stack_name:
            raise CliError("give --stack-name, or all of --table, --queue-url and --dlq-url")
        outputs = _stack_outputs(session, args.endpoint_url, args.stack_name)
        table = table or outputs.get("JobsTableName")
        queue_url = queue_url or outputs.get("JobsQueueUrl")
        dlq_url = dlq_url or outputs.get("JobsDeadLetterQueueUrl")
        if args.endpoint_url and not (table and queue_url and dlq_url):
            # devstack names its resources <stack>-<logical id> (devstack/cfn.py).
            sqs = session.client("sqs", endpoint_url=args.endpoint_url)
            table = table or f"{args.stack_name}-JobsTable"
            try:
                queue_url = (
                    queue_url
                    or sqs.get_queue_url(QueueName=f"{args.stack_name}-JobsQueue")["QueueUrl"]
                )
                dlq_url = (
                    dlq_url
                    or sqs.get_queue_url(QueueName=f"{args.stack_name}-JobsDeadLetterQueue")[
                        "QueueUrl"
                    ]
                )
            except ClientError as exc:
                raise CliError(f"no queues for stack {args.stack_name!r}: {exc}") from exc
        if not (table and queue_url and dlq_url):
            raise CliError(f"stack {args.stack_name!r} lacks the job table or queue outputs")
    return Names(table, queue_url, dlq_url)


def connect(args: argparse.Namespace) -> Clients:
    session = boto3.Session(region_name=args.region) if args.region else boto3.Session()
    names = resolve_names(args, session)
    return Clients(
        dynamodb=session.client("dynamodb", endpoint_url=args.endpoint_url),
        sqs=session.client("sqs", endpoint_url=args.endpoint_url),
        names=names,
    )


def _age(timestamp: str | None, now: datetime | None = None) -> str:
    if not timestamp:
        return "-"
    try:
        moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "-"
    seconds = int(((now or datetime.now(UTC)) - moment).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


# -- jobs status ------------------------------------------------------------------------------


def jobs_status(clients: Clients, job_id: str, console: Console, *, as_json: bool) -> int:
    record = clients.store.get(job_id) if is_job_id(job_id) else None
    if record is None:
        console.print(f"no job {job_id}")
        return 1
    view = {
        **record.to_public(),
        "worker": record.worker,
        "finished_at": record.finished_at,
        "notified": delivered_for(record) if record.status == JobStatus.DEAD_LETTERED else {},
    }
    if as_json:
        console.print_json(json.dumps(view))
        return 0
    table = Table(title=f"job {job_id}", title_justify="left", show_header=False)
    for key, value in view.items():
        shown = json.dumps(value) if isinstance(value, dict) else str(value)
        table.add_row(key, "-" if value is None else shown)
    console.print(table)
    return 0


# -- dlq list ---------------------------------------------------------------------------------


def dlq_list(clients: Clients, console: Console, *, as_json: bool) -> int:
    records = sorted(
        clients.store.dead_lettered(),
        key=lambda r: r.finished_at or "",
    )
    waiting, in_flight = clients.dlq.approximate_counts()
    rows = [
        {
            "job_id": r.job_id,
            "analyzer": r.request.get("analyzer"),
            "error_kind": str(r.last_error.kind) if r.last_error else None,
            "attempts": r.attempts,
            "dead_lettered_at": r.finished_at,
            "age": _age(r.finished_at),
        }
        for r in records
    ]
    if as_json:
        console.print_json(json.dumps({"jobs": rows, "dlq_messages": waiting + in_flight}))
        return 0
    table = Table(title=f"{len(rows)} dead-lettered job(s)", title_justify="left")
    for column in ("job id", "analyzer", "error kind", "attempts", "age"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["job_id"],
            str(row["analyzer"]),
            str(row["error_kind"] or "-"),
            str(row["attempts"]),
            row["age"],
        )
    console.print(table)
    console.print(f"DLQ: {waiting} message(s) waiting, {in_flight} being handled")
    return 0


# -- dlq redrive --------------------------------------------------------------------------------


@dataclass
class RedriveResult:
    job_id: str
    ok: bool
    detail: str


def redrive_job(
    clients: Clients, record: JobRecord, *, reset_attempts: bool, dry_run: bool
) -> RedriveResult:
    # QUEUED and never sent: an earlier redrive stopped between its two steps; finish it.
    resuming = record.status == JobStatus.QUEUED and not record.sent
    if record.status != JobStatus.DEAD_LETTERED and not resuming:
        return RedriveResult(record.job_id, False, f"is {record.status}, not DEAD_LETTERED")
    attempts = 0 if reset_attempts else record.attempts
    if dry_run:
        return RedriveResult(record.job_id, True, f"would re-enqueue (attempts {attempts})")
    try:
        if not resuming:
            record = clients.store.redrive(record.job_id, reset_attempts=reset_attempts)
            # A DLQ copy sent before this moment is history: the dead-letter function skips it.
            clients.store.set_fields(record.job_id, {"redriven_at": utc_now()})
        # Status first, message second: a worker never receives a job still DEAD_LETTERED.
        clients.queue.send(JobMessage(record.job_id, record.request))
        clients.store.mark_sent(record.job_id)
    except TransitionRefused as refused:
        return RedriveResult(record.job_id, False, str(refused))
    except (JobStoreError, QueueError) as exc:
        return RedriveResult(record.job_id, False, f"{exc} (run the redrive again to finish)")
    return RedriveResult(record.job_id, True, f"QUEUED (attempts {record.attempts})")


def remove_from_dlq(clients: Clients, job_ids: set[str], *, max_batches: int = 100) -> int:
    """Delete DLQ messages of ``job_ids``; give every other message straight back."""
    removed = 0
    seen: set[str] = set()
    for _ in range(max_batches):
        messages = clients.dlq.receive(max_messages=10, wait_s=0, visibility_s=30)
        if not messages or all(m.message_id in seen for m in messages):
            for message in messages:
                clients.dlq.change_visibility(message.receipt_handle, 0)
            break
        for message in messages:
            seen.add(message.message_id)
            attribute = message.message_attributes.get("job_id", {}).get("StringValue")
            job_id = attribute if attribute and is_job_id(attribute) else None
            job_id = job_id or job_id_from_body(message.body)
            if job_id in job_ids:
                clients.dlq.delete(message.receipt_handle)
                removed += 1
            else:
                clients.dlq.change_visibility(message.receipt_handle, 0)
    return removed


def dlq_redrive(
    clients: Clients,
    console: Console,
    *,
    job_ids: Sequence[str],
    redrive_all: bool,
    reset_attempts: bool,
    dry_run: bool,
) -> int:
    if redrive_all:
        records: list[JobRecord | None] = list(clients.store.dead_lettered())
        missing: list[str] = []
    else:
        fetched = {
            job_id: clients.store.get(job_id) if is_job_id(job_id) else None for job_id in job_ids
        }
        missing = [job_id for job_id, record in fetched.items() if record is None]
        records = [record for record in fetched.values() if record is not None]
    results = [RedriveResult(job_id, False, "no such job") for job_id in missing]
    todo = [r for r in records if r is not None]
    with Progress(
        TextColumn("redrive"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        disable=len(todo) < PROGRESS_FROM,
        transient=True,
    ) as progress:
        task = progress.add_task("redrive", total=len(todo))
        for record in todo:
            results.append(
                redrive_job(clients, record, reset_attempts=reset_attempts, dry_run=dry_run)
            )
            progress.advance(task)
    redriven = {r.job_id for r in results if r.ok}
    removed = 0 if dry_run or not redriven else remove_from_dlq(clients, redriven)
    table = Table(title="dry run: nothing changed" if dry_run else "redrive", title_justify="left")
    for column in ("job id", "result"):
        table.add_column(column)
    for result in results:
        colour = "green" if result.ok else "red"
        table.add_row(result.job_id, f"[{colour}]{result.detail}[/]")
    console.print(table)
    verb = "would redrive" if dry_run else "redrove"
    console.print(
        f"{verb} {len(redriven)} of {len(results)} job(s); {removed} DLQ message(s) removed"
    )
    return 0 if all(r.ok for r in results) else 1


# -- entry point ------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="spotline", description="spotline operator CLI: jobs and dead letters"
    )
    root.add_argument("--stack-name", help="the SAM stack (its outputs name everything)")
    root.add_argument("--table", help="job table name (instead of --stack-name)")
    root.add_argument("--queue-url", help="analysis queue URL (instead of --stack-name)")
    root.add_argument("--dlq-url", help="dead-letter queue URL (instead of --stack-name)")
    root.add_argument("--endpoint-url", help="AWS endpoint (devstack: the moto server URL)")
    root.add_argument("--region", help="AWS region (default: your AWS configuration's)")
    commands = root.add_subparsers(dest="area", required=True)

    jobs = commands.add_parser("jobs", help="look at jobs")
    jobs_commands = jobs.add_subparsers(dest="command", required=True)
    status = jobs_commands.add_parser("status", help="one job's record")
    status.add_argument("job_id")
    status.add_argument("--json", action="store_true", help="print JSON")

    dlq = commands.add_parser("dlq", help="dead-lettered jobs")
    dlq_commands = dlq.add_subparsers(dest="command", required=True)
    listing = dlq_commands.add_parser("list", help="dead-lettered jobs: id, error kind, age")
    listing.add_argument("--json", action="store_true", help="print JSON")
    redrive = dlq_commands.add_parser("redrive", help="re-enqueue dead-lettered jobs")
    which = redrive.add_mutually_exclusive_group(required=True)
    which.add_argument("--job", action="append", dest="jobs", metavar="ID", help="repeatable")
    which.add_argument("--all", action="store_true", help="every DEAD_LETTERED job")
    redrive.add_argument("--reset-attempts", action="store_true", help="start from attempt 1")
    redrive.add_argument("--dry-run", action="store_true", help="say what would happen")
    return root


def main(argv: Sequence[str] | None = None, console: Console | None = None) -> int:
    args = parser().parse_args(argv)
    console = console or Console()
    try:
        clients = connect(args)
        if args.area == "jobs":
            return jobs_status(clients, args.job_id, console, as_json=args.json)
        if args.command == "list":
            return dlq_list(clients, console, as_json=args.json)
        return dlq_redrive(
            clients,
            console,
            job_ids=args.jobs or [],
            redrive_all=args.all,
            reset_attempts=args.reset_attempts,
            dry_run=args.dry_run,
        )
    except CliError as exc:
        console.print(f"[red]{exc}[/]")
        return 2
    except (BotoCoreError, ClientError, JobStoreError) as exc:
        console.print(f"[red]AWS call failed: {exc}[/]")
        return 1


if __name__ == "__main__":
    sys.exit(main())
