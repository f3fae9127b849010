"""The operator CLI against moto (in-process); the round trip against moto server is in e2e."""

from __future__ import annotations

import json
import re

import boto3
import pytest
from rich.console import Console

from dead_letter.ledger import MessageLedger
from devstack.cfn import Stack
from spotline.contract import ErrorKind, JobMessage, JobStatus
from spotline.jobstore import JobError, JobStore
from spotline.queue import JobQueue
from spotline_ops import cli

OOM_JOB = "00000000-0000-4000-8000-00000000000a"
TIMEOUT_JOB = "00000000-0000-4000-8000-00000000000b"
QUEUED_JOB = "00000000-0000-4000-8000-00000000000c"


def run(stack: Stack, *args: str) -> tuple[int, str]:
    console = Console(record=True, width=200, force_terminal=False)
    names = [
        "--table",
        stack.ref("JobsTable"),
        "--queue-url",
        stack.ref("JobsQueue"),
        "--dlq-url",
        stack.ref("JobsDeadLetterQueue"),
    ]
    code = cli.main([*names, *args], console=console)
    return code, console.export_text()


def dead_lettered(store: JobStore, job_id: str, kind: ErrorKind, attempts: int = 3) -> None:
    store.create(job_id, {"analyzer": "echo", "input": {"job": job_id}})
    for attempt in range(attempts):
        store.claim(job_id, f"t{attempt}", "worker-a", expect_owner=None)
        if attempt < attempts - 1:
            store.release(job_id, f"t{attempt}", JobError(kind, "failed"))
    store.dead_letter(job_id, JobError(kind, "failed"), expect_owner=f"t{attempts - 1}")


@pytest.fixture
def dlq(stack: Stack) -> JobQueue:
    return JobQueue(boto3.client("sqs"), stack.ref("JobsDeadLetterQueue"))


@pytest.fixture
def jobs(job_store: JobStore, stack: Stack) -> JobStore:
    dead_lettered(job_store, OOM_JOB, ErrorKind.OOM)
    dead_lettered(job_store, TIMEOUT_JOB, ErrorKind.TIMEOUT)
    job_store.create(QUEUED_JOB, {"analyzer": "echo", "input": 1})
    # A dead letter without a job leaves a ledger item in the table: never listed as a job.
    MessageLedger(boto3.client("dynamodb"), stack.ref("JobsTable")).put("m-1", {"slack": "x"})
    return job_store


def test_dlq_list_shows_dead_lettered_jobs_with_error_kind_and_age(
    stack: Stack, jobs: JobStore
) -> None:
    code, out = run(stack, "dlq", "list")
    assert code == 0
    assert OOM_JOB in out and TIMEOUT_JOB in out and QUEUED_JOB not in out
    assert "OOM" in out and "TIMEOUT" in out
    assert re.search(r"│ \d+s +│", out), "an age in seconds"
    code, out = run(stack, "dlq", "list", "--json")
    listed = json.loads(out)
    assert {j["job_id"]: j["error_kind"] for j in listed["jobs"]} == {
        OOM_JOB: "OOM",
        TIMEOUT_JOB: "TIMEOUT",
    }


def test_jobs_status_shows_one_job_and_unknown_ids_fail(stack: Stack, jobs: JobStore) -> None:
    code, out = run(stack, "jobs", "status", OOM_JOB, "--json")
    assert code == 0 and json.loads(out)["status"] == "DEAD_LETTERED"
    code, out = run(stack, "jobs", "status", "00000000-0000-4000-8000-0000000000ff")
    assert code == 1 and "no job" in out


def test_dry_run_changes_nothing(stack: Stack, jobs: JobStore, queue: JobQueue) -> None:
    code, out = run(stack, "dlq", "redrive", "--all", "--dry-run", "--reset-attempts")
    assert code == 0 and "would redrive 2 of 2" in out
    assert jobs.get(OOM_JOB).status == JobStatus.DEAD_LETTERED
    assert queue.approximate_counts() == (0, 0)


def test_redrive_one_job_resets_attempts_requeues_and_removes_its_dlq_copy(
    stack: Stack, jobs: JobStore, queue: JobQueue, dlq: JobQueue
) -> None:
    dlq.send_body(JobMessage(OOM_JOB, {}).to_json(), attributes={"job_id": OOM_JOB})
    dlq.send_body(JobMessage(TIMEOUT_JOB, {}).to_json())  # another job's copy stays

    code, out = run(stack, "dlq", "redrive", "--job", OOM_JOB, "--reset-attempts")

    assert code == 0 and "redrove 1 of 1 job(s); 1 DLQ message(s) removed" in out
    record = jobs.get(OOM_JOB)
    assert record.status == JobStatus.QUEUED and record.attempts == 0 and record.sent
    assert "redriven_at" in record.extra
    (message,) = queue.receive(max_messages=10, wait_s=0)
    sent = JobMessage.from_json(message.body)
    assert sent.job_id == OOM_JOB and sent.request == record.request
    (left,) = dlq.receive(max_messages=10, wait_s=0)
    assert TIMEOUT_JOB in left.body
    assert jobs.get(TIMEOUT_JOB).status == JobStatus.DEAD_LETTERED


def test_redrive_keeps_attempts_unless_asked(stack: Stack, jobs: JobStore) -> None:
    assert run(stack, "dlq", "redrive", "--job", TIMEOUT_JOB)[0] == 0
    assert jobs.get(TIMEOUT_JOB).attempts == 2


def test_redrive_refuses_jobs_that_are_not_dead_lettered(stack: Stack, jobs: JobStore) -> None:
    jobs.mark_sent(QUEUED_JOB)
    unknown = "00000000-0000-4000-8000-0000000000ff"
    code, out = run(stack, "dlq", "redrive", "--job", QUEUED_JOB, "--job", unknown)
    assert code == 1
    assert "is QUEUED, not DEAD_LETTERED" in out and "no such job" in out


def test_a_half_done_redrive_is_finished_by_running_it_again(
    stack: Stack, jobs: JobStore, queue: JobQueue
) -> None:
    jobs.redrive(OOM_JOB)  # status moved, then the send failed: QUEUED, never sent
    assert run(stack, "dlq", "redrive", "--job", OOM_JOB)[0] == 0
    assert jobs.get(OOM_JOB).sent
    assert len(queue.receive(max_messages=10, wait_s=0)) == 1


def test_redrive_all_with_a_progress_bar(
    stack: Stack, job_store: JobStore, queue: JobQueue
) -> None:
    ids = [f"00000000-0000-4000-8000-1000000000{i:02d}" for i in range(cli.PROGRESS_FROM + 1)]
    for job_id in ids:
        dead_lettered(job_store, job_id, ErrorKind.ANALYZER_ERROR, attempts=1)

    code, out = run(stack, "dlq", "redrive", "--all")

    assert code == 0 and f"redrove {len(ids)} of {len(ids)}" in out
    assert all(job_store.get(j).status == JobStatus.QUEUED for j in ids)
    assert queue.approximate_counts()[0] == len(ids)


def test_names_are_required() -> None:
    console = Console(record=True, width=200)
    assert cli.main(["dlq", "list"], console=console) == 2
    assert "--stack-name" in console.export_text()


def test_redrive_needs_a_job_or_all() -> None:
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["dlq", "redrive"])
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["dlq", "redrive", "--all", "--job", OOM_JOB])
