from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from devstack.cfn import Stack
from gpu_worker.analyzers import Job
from gpu_worker.consumer import Worker
from gpu_worker.health import HealthServer, start_health_server, worker_snapshot
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
    )
    worker = Worker(
        config, sqs=boto3.client("sqs"), dynamodb=boto3.client("dynamodb"), s3=boto3.client("s3")
    )
    yield worker
    worker.stop_services()


def test_idle_worker_reports_idle_and_its_limits(worker: Worker) -> None:
    worker.start_services()
    assert worker.health is not None
    worker.last_poll_at = time.time()
    status, body = get(worker.health.port)
    assert status == 200
    assert body["status"] == "idle" and body["ok"] is True and body["job"] is None
    assert body["worker_id"] == "unit-health"
    assert body["job_memory_limit_bytes"] == 2**30
    assert body["child"]["pid"] is None and body["child"]["restarts"] == 0
    assert body["container_memory"]["limit_bytes"] > 0
    assert body["last_successful_poll_age_s"] < 5


def test_busy_and_draining(worker: Worker) -> None:
    worker.supervisor.current_job = Job(job_id="j-1", analyzer="sleep", input=None, attempt=2)
    worker.supervisor.job_started_at = time.monotonic() - 3
    busy = worker_snapshot(worker, stale_poll_s=90)
    assert busy["status"] == "busy" and busy["ok"] is True
    assert busy["job"]["job_id"] == "j-1" and busy["job"]["attempt"] == 2
    assert busy["job"]["runtime_s"] >= 3
    worker.stopping.set()
    assert worker_snapshot(worker, stale_poll_s=90)["status"] == "draining"


def test_idle_worker_that_cannot_poll_sqs_is_unhealthy(worker: Worker) -> None:
    worker.start_services()
    assert worker.health is not None
    worker.last_poll_at = time.time() - 600
    status, body = get(worker.health.port)
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
