from __future__ import annotations

import dataclasses
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from devstack.cfn import Stack
from devstack.motoserver import wait_until
from gpu_worker.analyzers import Job
from gpu_worker.consumer import Worker
from gpu_worker.health import HealthServer, start_health_server, worker_snapshot
from gpu_worker.supervisor import (
    PROGRESS_MAX_CHARS,
    PROGRESS_MAX_KEYS,
    RunningJob,
    bounded_progress,
)
from tests.unit.conftest import stack_worker_config


def get(port: int, path: str = "/healthz") -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def worker(stack: Stack) -> Iterator[Worker]:
    config = stack_worker_config(
        stack,
        worker_id="unit-health",
        job_memory_limit="1Gi",
        health_port=0,
        metrics_sink="off",
        wait_s=0,
    )
    worker = Worker(
        config, sqs=boto3.client("sqs"), dynamodb=boto3.client("dynamodb"), s3=boto3.client("s3")
    )
    yield worker
    worker.stop_services()


def test_idle_worker_reports_idle_and_its_limits(worker: Worker) -> None:
    worker.start_services()
    assert worker.health is not None
    worker.poll_once()  # the queue is empty: a successful poll, nothing to run
    status, body = get(worker.health.port)
    assert status == 200
    assert body["status"] == "idle" and body["ok"] is True and body["job"] is None
    assert body["worker_id"] == "unit-health"
    assert body["job_memory_limit_bytes"] == 2**30
    assert body["child"]["pid"] is None and body["child"]["restarts"] == 0
    assert body["container_memory"]["limit_bytes"] > 0
    assert body["last_successful_poll_age_s"] < 5


def busy(worker: Worker, job: RunningJob) -> dict[str, Any]:
    return worker_snapshot(dataclasses.replace(worker.state(), job=job), stale_poll_s=90)


def test_busy_and_draining(worker: Worker) -> None:
    job = RunningJob("j-1", "sleep", 2, runtime_s=3.0, runtime_limit_s=None, progress={})
    snapshot = busy(worker, job)
    assert snapshot["status"] == "busy" and snapshot["ok"] is True
    assert snapshot["job"]["job_id"] == "j-1" and snapshot["job"]["attempt"] == 2
    assert snapshot["job"]["runtime_s"] >= 3
    worker.stopping.set()
    assert busy(worker, job)["status"] == "draining"


def test_idle_worker_that_cannot_poll_sqs_is_unhealthy(worker: Worker) -> None:
    polled_at = time.time() - 600

    def snapshot() -> dict[str, Any]:
        stale = dataclasses.replace(worker.state(), last_poll_at=polled_at)
        return worker_snapshot(stale, stale_poll_s=90)

    server = HealthServer("127.0.0.1", 0, snapshot).start()
    try:
        status, body = get(server.port)
    finally:
        server.stop()
    assert status == 503 and body["ok"] is False and body["last_successful_poll_age_s"] >= 600


def test_unknown_path_is_404_and_a_broken_snapshot_is_500() -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("boom")

    server = HealthServer("127.0.0.1", 0, broken).start()
    try:
        assert get(server.port, "/nope")[0] == 404
        status, body = get(server.port)
        assert status == 500 and body == {"status": "error", "ok": False, "error": "RuntimeError"}
    finally:
        server.stop()


def test_a_taken_port_leaves_the_worker_without_health_not_dead() -> None:
    first = HealthServer("127.0.0.1", 0, dict).start()
    try:
        assert start_health_server("127.0.0.1", first.port, dict) is None
    finally:
        first.stop()


def test_an_analyzers_progress_shows_in_the_job_block(worker: Worker) -> None:
    job = Job(job_id="j-2", analyzer="sleep", input=None, params={"seconds": 3, "step_s": 0.05})
    running = threading.Thread(
        target=worker.supervisor.run,
        args=(job, None),
        kwargs={"max_runtime_s": 60, "on_tick": lambda: None},
        daemon=True,
    )
    running.start()
    try:
        progress = wait_until(
            lambda: (worker_snapshot(worker.state(), stale_poll_s=90)["job"] or {}).get("progress"),
            timeout=60,
        )
        assert progress["of"] == 60 and 1 <= progress["step"] <= 60
    finally:
        worker.supervisor.request_stop(grace_s=0)
        running.join(timeout=30)
        worker.supervisor.close()


def test_progress_is_bounded_to_scalars_and_short_strings() -> None:
    fields = {f"k{i}": i for i in range(30)}
    assert list(bounded_progress(fields)) == [f"k{i}" for i in range(PROGRESS_MAX_KEYS)]
    shown = bounded_progress(
        {"stage": "x" * 1000, "loss": float("nan"), "shape": [1, 2], "done": True, "eta": None}
    )
    assert shown == {"stage": "x" * PROGRESS_MAX_CHARS, "loss": "nan", "done": True, "eta": None}
    assert bounded_progress(["not", "a", "mapping"]) == {}
