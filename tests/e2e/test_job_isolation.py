"""One bad job costs one job, against a real ``python -m gpu_worker`` (issue 16).

Each test ends with the worker that started it still running under the same pid: no request,
message, input, checkpoint store or duplicate may crash, wedge or confuse it.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from devstack.deadletters import DeadLetterRouter, configure_notifications
from devstack.motoserver import wait_until
from devstack.sink import WebhookSink
from devstack.stack import Devstack
from devstack.workers import WorkerProcess
from spotline.contract import ErrorKind, JobMessage, JobStatus
from spotline.jobstore import JobRecord
from spotline.standard_webhooks import generate_key_pair
from tests.e2e.conftest import operator_redrive

pytestmark = pytest.mark.e2e

DRILLS = {"WORKER_ENABLE_DRILLS": "true"}


def send_direct(devstack: Devstack, request: dict[str, Any]) -> str:
    """A job that reached the queue some other way than through enqueue's checks."""
    job_id = str(uuid.uuid4())
    devstack.store.create(job_id, request)
    devstack.queue.send(JobMessage(job_id, request))
    return job_id


def settled(devstack: Devstack, job_id: str, status: JobStatus, timeout: float = 30) -> JobRecord:
    wait_until(
        lambda: devstack.job(job_id).status == status,
        timeout=timeout,
        what=f"{job_id[:8]} {status}",
        detail=lambda: devstack.job(job_id),
    )
    record = devstack.job(job_id)
    assert record is not None
    return record


def still_works(devstack: Devstack, worker: WorkerProcess, pid: int) -> None:
    """Same process, and it still runs a normal job."""
    status, body = devstack.submit({"analyzer": "echo", "input": {"after": "hostility"}})
    assert status == 202
    record = settled(devstack, body["job_id"], JobStatus.SUCCEEDED)
    assert devstack.read_result(record.result_uri) == {"after": "hostility"}
    assert worker.alive() and worker.pid == pid


def log_events(worker: WorkerProcess) -> list[dict[str, Any]]:
    events = []
    for line in worker.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


def test_inputs_outside_inputs_are_refused_by_the_worker_itself(devstack: Devstack) -> None:
    worker = devstack.start_worker(WORKER_MAX_INPUT_BYTES="1000")
    pid = worker.pid
    bucket = devstack.bucket
    s3 = devstack.client("s3")
    # Another job's output and a checkpoint: what an echo job must never copy into its result.
    status, body = devstack.submit({"analyzer": "echo", "input": {"secret": "theirs"}})
    assert status == 202
    victim = settled(devstack, body["job_id"], JobStatus.SUCCEEDED)
    victim_key = victim.result_uri.removeprefix(f"s3://{bucket}/")
    s3.put_object(Bucket=bucket, Key="checkpoints/someone", Body=b'{"step": 3}')
    s3.put_object(Bucket=bucket, Key="inputs/big.json", Body=json.dumps("x" * 5000).encode())
    uris = {
        "empty key, query string": f"s3://{bucket}/?x",
        "another job's result": f"s3://{bucket}/{victim_key}",
        "a checkpoint": f"s3://{bucket}/checkpoints/someone",
        "dot-dot out of inputs/": f"s3://{bucket}/inputs/../{victim_key}",
        "the prefix itself": f"s3://{bucket}/inputs/",
        "a fragment": f"s3://{bucket}/inputs/a.json#frag",
        "another bucket": "s3://someone-elses-bucket/inputs/a.json",
        "larger than the limit": f"s3://{bucket}/inputs/big.json",
    }
    jobs = {
        label: send_direct(devstack, {"analyzer": "echo", "input_uri": uri})
        for label, uri in uris.items()
    }

    for label, job_id in jobs.items():
        record = settled(devstack, job_id, JobStatus.DEAD_LETTERED)
        assert record.last_error.kind == ErrorKind.INVALID_INPUT, label
        assert record.result_uri is None, label
    assert worker.alive() and worker.pid == pid
    still_works(devstack, worker, pid)


def test_a_stopped_or_stalled_child_is_killed_at_the_stacks_runtime_cap(
    devstack: Devstack,
) -> None:
    worker = devstack.start_worker(
        **DRILLS, WORKER_MAX_RUNTIME_S="3", WORKER_MAX_ATTEMPTS="1", WORKER_PREFETCH="0"
    )
    pid = worker.pid
    # No max_runtime_s in either request: the stack's cap is their limit.
    stopped = send_direct(
        devstack, {"analyzer": "crash", "input": None, "params": {"signal": "SIGSTOP"}}
    )
    stalled = send_direct(
        devstack, {"analyzer": "memory_hog", "input": None, "params": {"step_s": 1e9}}
    )
    for job_id in (stopped, stalled):
        record = settled(devstack, job_id, JobStatus.DEAD_LETTERED, timeout=45)
        assert record.last_error.kind == ErrorKind.TIMEOUT
        assert "max_runtime_s=3" in record.last_error.message
    # A request may lower the cap, never raise it.
    raised = send_direct(
        devstack,
        {"analyzer": "sleep", "input": None, "params": {"seconds": 30}, "max_runtime_s": 600},
    )
    record = settled(devstack, raised, JobStatus.DEAD_LETTERED, timeout=45)
    assert record.last_error.kind == ErrorKind.INVALID_INPUT
    assert "max_runtime_s" in record.last_error.message
    still_works(devstack, worker, pid)


def test_a_worker_without_the_flag_refuses_drills(devstack: Devstack) -> None:
    worker = devstack.start_worker(WORKER_ENABLE_DRILLS="false")
    pid = worker.pid
    job_id = send_direct(
        devstack, {"analyzer": "crash", "input": None, "params": {"signal": "SIGKILL"}}
    )
    record = settled(devstack, job_id, JobStatus.DEAD_LETTERED)
    assert record.last_error.kind == ErrorKind.INVALID_INPUT
    assert "drill" in record.last_error.message
    assert not any(e.get("message") == "job started" for e in log_events(worker))
    still_works(devstack, worker, pid)


def test_a_duplicate_delivery_while_the_job_runs_never_runs_it_again(devstack: Devstack) -> None:
    first = devstack.start_worker("holder", **DRILLS, WORKER_PREFETCH="0")
    second = devstack.start_worker("duplicate-taker", **DRILLS, WORKER_PREFETCH="0")
    pids = (first.pid, second.pid)
    request = {"analyzer": "sleep", "input": None, "params": {"seconds": 4}}
    status, body = devstack.submit(request)
    assert status == 202
    job_id = body["job_id"]
    settled(devstack, job_id, JobStatus.RUNNING)
    for _ in range(3):  # at-least-once delivery, a client's re-send, a requeue's crash
        devstack.queue.send(JobMessage(job_id, request))

    record = settled(devstack, job_id, JobStatus.SUCCEEDED, timeout=40)

    started = [
        e
        for w in (first, second)
        for e in log_events(w)
        if e.get("message") == "job started" and e.get("job_id") == job_id
    ]
    assert len(started) == 1, "the job ran once"
    listed = devstack.client("s3").list_objects_v2(
        Bucket=devstack.bucket, Prefix=f"results/{job_id}"
    )
    keys = [item["Key"] for item in listed.get("Contents", [])]
    assert keys == [record.result_uri.removeprefix(f"s3://{devstack.bucket}/")], "one result"
    assert record.attempts == 0
    wait_until(lambda: devstack.queue_depths()["jobs"] == (0, 0), timeout=30, what="copies gone")
    assert devstack.queue_depths()["dlq"] == (0, 0)
    assert (first.pid, second.pid) == pids and first.alive() and second.alive()


def test_a_redriven_job_that_fails_again_is_dead_lettered_and_alerted_again(
    devstack: Devstack,
) -> None:
    with WebhookSink() as sink:
        env = configure_notifications(devstack, sink.url, generate_key_pair()[0])
        worker = devstack.start_worker(**DRILLS)
        pid = worker.pid
        request = {"analyzer": "fail", "input": None, "params": {"error": "permanent"}}
        with DeadLetterRouter(devstack, handler_env=env):
            status, body = devstack.submit(request)
            assert status == 202
            job_id = body["job_id"]
            settled(devstack, job_id, JobStatus.DEAD_LETTERED)
            wait_until(lambda: len(sink.on("/slack")) == 1, timeout=30, what="first alert")

            code = operator_redrive(devstack, job_id)
            assert code == 0
            # Through the worker, not injected by hand: it fails again, and says so again.
            wait_until(lambda: len(sink.on("/slack")) == 2, timeout=40, what="second alert")
            record = devstack.job(job_id)
            assert record.status == JobStatus.DEAD_LETTERED
            assert record.extra.get("dlq_sent_for") == record.finished_at
        assert len(sink.on("/slack")) == 2 and len(sink.on("/discord")) == 2
        assert worker.alive() and worker.pid == pid


def test_a_checkpoint_store_that_fails_costs_checkpoints_not_the_job_or_the_worker(
    devstack: Devstack, tmp_path: Path
) -> None:
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    key = f"ckpt-{uuid.uuid4()}"
    job_id = devstack.job_id_for(key)
    # Where the job's checkpoint must go stands a directory: every rename onto it fails (EISDIR),
    # as a full or read-only disk fails a write.
    (directory / f"{job_id}.ckpt").mkdir()
    (directory / f"{job_id}.ckpt" / "occupied").write_text("x")
    worker = devstack.start_worker(WORKER_CHECKPOINT_DIR=str(directory))
    pid = worker.pid
    request = {
        "analyzer": "sleep",
        "input": None,
        "params": {"seconds": 1.5, "checkpoint_every_s": 0.2},
    }
    status, body = devstack.submit(request, idempotency_key=key)
    assert status == 202 and body["job_id"] == job_id

    record = settled(devstack, job_id, JobStatus.SUCCEEDED)

    assert record.attempts == 0
    failed = [
        e
        for e in log_events(worker)
        if e.get("message") == "checkpoint not stored; the job goes on"
    ]
    assert failed, "the failing store was used and reported"
    still_works(devstack, worker, pid)
