"""The image's HEALTHCHECK (``python -m gpu_worker.healthcheck``) against a real /healthz."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from devstack.cfn import REPO_ROOT
from devstack.motoserver import free_port
from gpu_worker.health import HealthServer


@pytest.fixture
def body() -> dict[str, Any]:
    return {"status": "idle", "ok": True}


@pytest.fixture
def health(body: dict[str, Any]) -> Iterator[HealthServer]:
    server = HealthServer("127.0.0.1", 0, lambda: body).start()
    yield server
    server.stop()


def healthcheck(port: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WORKER_HEALTH_PORT": port}
    return subprocess.run(
        [sys.executable, "-m", "gpu_worker.healthcheck"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_a_healthy_worker_passes(health: HealthServer) -> None:
    done = healthcheck(str(health.port))
    assert done.returncode == 0
    assert done.stdout.strip() == f"healthcheck: http://127.0.0.1:{health.port}/healthz: 200"


def test_a_503_fails_the_check(health: HealthServer, body: dict[str, Any]) -> None:
    body["ok"] = False  # e.g. a stale poll: /healthz answers 503
    done = healthcheck(str(health.port))
    assert done.returncode == 1 and done.stdout.strip().endswith(": 503")


def test_no_server_fails_the_check_in_one_line() -> None:
    done = healthcheck(str(free_port()))
    assert done.returncode == 1
    assert done.stdout.count("\n") == 1 and "ConnectionRefusedError" in done.stdout
    assert "Traceback" not in done.stderr


def test_a_bad_port_setting_fails_the_check_with_its_name() -> None:
    done = healthcheck("eighty")
    assert done.returncode == 1 and "WORKER_HEALTH_PORT" in done.stdout
