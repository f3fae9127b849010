"""Poison jobs against moto server and the real worker process: every decision row, the memory
guard, dead-lettering that survives a crash between its steps, and health while the CPU burns."""

from __future__ import annotations

import json
import os
import statistics
import time
import urllib.error
import urllib.request
from typing import Any

import psutil
import pytest

from devstack.motoserver import free_port, wait_until
from devstack.stack import Devstack
from devstack.workers import WorkerProcess
from gpu_worker.consumer import CRASH_EXIT_CODE
from spotline.contract import ErrorKind, JobStatus
from spotline.queue import ReceivedMessage
from tests.e2e.conftest import log_lines

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
LIMIT = "256Mi"
# Fast retries and a short window: the decision rows, not the production timings, are tested.
FAST = {
    "WORKER_JOB_MEMORY_LIMIT": LIMIT,
    "WORKER_BACKOFF_BASE_S": "0",
    "WORKER_BACKOFF_MAX_S": "0",
    "WORKER_VISIBILITY_WINDOW_S": "3",
    "WORKER_METRICS": "off",
}
HOG = {"analyzer": "memory_hog", "input": None, "params": {"bytes_per_step": 32 * MIB, "step_s": 0}}


def start(dev: Devstack, name: str = "worker", **env: str) -> WorkerProcess:
    return dev.start_worker(name, **{**FAST, "WORKER_HEALTH_PORT": str(free_port()), **env})


def submit(dev: Devstack, request: dict[str, Any]) -> str:
    status, body = dev.submit(request)
    assert status == 202, body
    return str(body["job_id"])


def wait_status(dev: Devstack, job_id: str, status: JobStatus, timeout: float = 30) -> None:
    wait_until(lambda: dev.job(job_id).status == status, timeout=timeout, what=f"{job_id} {status}")


def started_count(worker: WorkerProcess, job_id: str) -> int:
    return sum('"job started"' in line and job_id in line for line in log_lines(worker.log_path))


def dlq_messages(dev: Devstack) -> list[ReceivedMessage]:
    messages = dev.dlq.receive(max_messages=10, wait_s=1, visibility_s=30)
    return messages


def attrs(message: ReceivedMessage) -> dict[str, str]:
    return {k: v["StringValue"] for k, v in message.message_attributes.items()}


def health(port: int) -> tuple[int, dict[str, Any], float]:
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            body, status = response.read(), response.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read(), exc.code
    return status, json.loads(body), time.perf_counter() - started


def health_body(port: int) -> dict[str, Any]:
    """For waiting: an empty body while the server is not up yet."""
    try:
        return health(port)[1]
    except urllib.error.URLError:
        return {}


def test_oom_is_retried_then_dead_lettered_and_the_next_job_succeeds(devstack: Devstack) -> None:
    worker = start(devstack, WORKER_METRICS="emf", WORKER_METRICS_INTERVAL_S="1")
    job_id = submit(devstack, HOG)
    wait_status(devstack, job_id, JobStatus.DEAD_LETTERED)
    record = devstack.job(job_id)
    assert record.attempts == 3 and started_count(worker, job_id) == 3
    error = record.last_error
    assert error is not None and error.kind == ErrorKind.OOM
    assert error.limit_bytes == 256 * MIB
    assert 256 * MIB <= error.peak_memory_bytes < 256 * MIB + 96 * MIB
    (message,) = dlq_messages(devstack)
    assert json.loads(message.body)["job_id"] == job_id
    values = attrs(message)
    assert values["job_id"] == job_id and values["error_kind"] == "OOM"
    assert values["attempts"] == "3" and int(values["peak_memory_bytes"]) >= 256 * MIB
    assert "limit" in values["error_message"]
    wait_until(lambda: devstack.queue_depths()["jobs"] == (0, 0), timeout=10, what="source empty")
    # The worker process lived through three OOMs; the restarted child takes the next job.
    assert worker.alive()
    echo_id = submit(devstack, {"analyzer": "echo", "input": {"after": "oom"}})
    wait_status(devstack, echo_id, JobStatus.SUCCEEDED)
    assert devstack.read_result(devstack.job(echo_id).result_uri) == {"after": "oom"}
    assert worker.alive()

    def emf_total(name: str, **dimensions: str) -> float:
        total = 0.0
        for line in log_lines(worker.log_path):
            if '"_aws"' not in line or f'"{name}"' not in line:
                continue
            document = json.loads(line)
            if all(document.get(k) == v for k, v in dimensions.items()):
                value = document[name]
                total += sum(value) if isinstance(value, list) else value
        return total

    # Metrics are flushed each second here: the three OOMs and the restarts they caused.
    wait_until(lambda: emf_total("JobFailures", ErrorKind="OOM") >= 3, timeout=10, what="EMF")
    wait_until(lambda: emf_total("ChildRestarts") >= 3, timeout=10, what="EMF restarts")
    assert emf_total("JobsDeadLettered") == 1 and emf_total("JobsRetried") == 2


def test_permanent_error_is_dead_lettered_after_exactly_one_attempt(devstack: Devstack) -> None:
    worker = start(devstack)
    job_id = submit(devstack, {"analyzer": "fail", "input": None, "params": {"error": "permanent"}})
    wait_status(devstack, job_id, JobStatus.DEAD_LETTERED)
    record = devstack.job(job_id)
    assert record.attempts == 1 and started_count(worker, job_id) == 1
    assert record.last_error.kind == ErrorKind.ANALYZER_ERROR
    (message,) = dlq_messages(devstack)
    assert attrs(message)["attempts"] == "1"
    assert attrs(message)["error_kind"] == "ANALYZER_ERROR"


def test_retryable_error_is_retried_and_then_succeeds(devstack: Devstack) -> None:
    worker = start(devstack)
    job_id = submit(devstack, {"analyzer": "fail", "input": None, "params": {"fail_attempts": 1}})
    wait_status(devstack, job_id, JobStatus.SUCCEEDED)
    record = devstack.job(job_id)
    assert record.attempts == 1 and started_count(worker, job_id) == 2
    assert record.last_error.kind == ErrorKind.ANALYZER_ERROR
    assert devstack.read_result(record.result_uri) == {"succeeded_on_attempt": 2}


def test_timeout_kills_the_child_and_is_retried_until_max_attempts(devstack: Devstack) -> None:
    start(devstack, WORKER_MAX_ATTEMPTS="2")
    job_id = submit(
        devstack,
        {"analyzer": "sleep", "input": None, "params": {"seconds": 60}, "max_runtime_s": 1},
    )
    wait_status(devstack, job_id, JobStatus.DEAD_LETTERED)
    record = devstack.job(job_id)
    assert record.attempts == 2 and record.last_error.kind == ErrorKind.TIMEOUT
    assert "max_runtime_s=1" in record.last_error.message


def test_child_killed_by_sigkill_or_sigsegv_is_unknown_with_the_signal(devstack: Devstack) -> None:
    worker = start(devstack, WORKER_MAX_ATTEMPTS="2")
    jobs = {
        name: submit(devstack, {"analyzer": "crash", "input": None, "params": {"signal": name}})
        for name in ("SIGKILL", "SIGSEGV")
    }
    for name, job_id in jobs.items():
        wait_status(devstack, job_id, JobStatus.DEAD_LETTERED)
        record = devstack.job(job_id)
        assert record.attempts == 2 and started_count(worker, job_id) == 2
        assert record.last_error.kind == ErrorKind.UNKNOWN
        assert f"killed by {name}" in record.last_error.message
    by_job = {attrs(m)["job_id"]: attrs(m) for m in dlq_messages(devstack)}
    assert {by_job[j]["error_kind"] for j in jobs.values()} == {"UNKNOWN"}
    echo_id = submit(devstack, {"analyzer": "echo", "input": 1})
    wait_status(devstack, echo_id, JobStatus.SUCCEEDED)
    assert worker.alive()


@pytest.mark.parametrize("step", ["after_dlq_send", "after_dlq_marked"])
def test_worker_crash_between_dlq_send_and_delete_loses_nothing(
    devstack: Devstack, step: str
) -> None:
    crashing = start(devstack, "crashing", WORKER_TEST_CRASH_AT=step)
    job_id = submit(devstack, {"analyzer": "fail", "input": None, "params": {"error": "permanent"}})
    assert crashing.process.wait(timeout=30) == CRASH_EXIT_CODE
    record = devstack.job(job_id)
    assert record.status == JobStatus.DEAD_LETTERED and record.attempts == 1
    assert devstack.queue_depths()["jobs"] == (0, 1)  # still held by the dead worker
    # Marked as sent before the crash: no second copy. Crashed before the mark: the copy is
    # sent again (at-least-once), identical, and the DLQ side keys its effects on job_id.
    expected_copies = 1 if step == "after_dlq_marked" else 2
    # A fresh worker gets the message back after the window and finishes the remaining steps.
    rescuer = start(devstack, "rescuer")
    wait_until(
        lambda: devstack.queue_depths() == {"jobs": (0, 0), "dlq": (expected_copies, 0)},
        timeout=20,
        what=f"source deleted and {expected_copies} DLQ copies",
        detail=lambda: f"{devstack.queue_depths()}; rescuer: {log_lines(rescuer.log_path)[-6:]}",
    )
    after = devstack.job(job_id)
    assert (after.status, after.attempts, after.last_error, after.finished_at) == (
        record.status,
        record.attempts,
        record.last_error,
        record.finished_at,
    ), "the second holder changed the dead-lettered job"
    copies = dlq_messages(devstack)
    assert copies and {attrs(m)["job_id"] for m in copies} == {job_id}
    assert {attrs(m)["error_kind"] for m in copies} == {"ANALYZER_ERROR"}
    assert len(copies) == expected_copies
    assert after.extra.get("dlq_sent") is True


def test_health_answers_fast_while_the_child_burns_every_core(devstack: Devstack) -> None:
    port = free_port()
    worker = start(devstack, WORKER_HEALTH_PORT=str(port))
    wait_until(lambda: health_body(port).get("last_successful_poll_at"), timeout=20, what="poll")
    status, idle, _ = health(port)
    assert status == 200 and idle["status"] == "idle" and idle["child"]["pid"]
    processes = os.cpu_count() or 1
    job_id = submit(
        devstack,
        {"analyzer": "cpu_burn", "input": None, "params": {"seconds": 6, "processes": processes}},
    )
    wait_until(lambda: health_body(port).get("status") == "busy", timeout=20, what="busy")
    # Measure only once the burners really saturate the machine: that load is the point.
    wait_until(lambda: psutil.cpu_percent(interval=0.2) >= 75, timeout=15, what="cores saturated")
    latencies = []
    body: dict[str, Any] = {}
    for _ in range(20):
        status, body, elapsed = health(port)
        assert status == 200
        latencies.append(elapsed)
    assert body["status"] == "busy" and body["job"]["job_id"] == job_id
    assert body["job"]["analyzer"] == "cpu_burn" and body["job"]["runtime_s"] > 0
    assert body["child"]["rss_bytes"] > 0 and 0 < body["child"]["rss_pct_of_limit"] < 100
    assert body["job_memory_limit_bytes"] == 256 * MIB
    assert body["container_memory"]["limit_bytes"] > 0
    # 19 of 20 under 50 ms: the one allowance is for this test process, which competes for
    # the same cores as the burners (the worker's own answer takes about a millisecond).
    assert sorted(latencies)[-2] < 0.05, latencies
    assert statistics.median(latencies) < 0.02, latencies
    wait_status(devstack, job_id, JobStatus.SUCCEEDED)
    assert worker.alive()
