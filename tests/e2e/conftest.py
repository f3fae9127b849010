"""End-to-end fixtures: one moto server per session, a fresh stack per test, real workers."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.cfn import REPO_ROOT
from devstack.motoserver import MotoServer
from devstack.stack import Devstack
from spotline_ops import cli

_stack_numbers = itertools.count(1)
E2E_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``make test``, ``--dist loadgroup``) the end-to-end tests run one
    after another on one worker, beside the unit tests on the others: their timing checks (a
    takeover within one visibility window, a notice while a job runs) hold for one such test at
    a time, and two of them side by side on 2 cores missed by seconds."""
    group = pytest.mark.xdist_group("e2e")
    for item in items:
        if item.path.is_relative_to(E2E_DIR):
            item.add_marker(group)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture
def devstack(moto_server: MotoServer, tmp_path: Path) -> Iterator[Devstack]:
    """A stack of its own (unique names) on the shared server; workers stopped afterwards."""
    dev = Devstack(server=moto_server, workdir=tmp_path)
    dev.start(stack_name=f"e2e{next(_stack_numbers)}")
    try:
        yield dev
    finally:
        dev.stop()


@dataclass(frozen=True)
class DemoRun:
    """One ``python -m devstack demo`` run: its output, its workers' logs, what it recorded."""

    completed: subprocess.CompletedProcess[str]
    elapsed_s: float
    workdir: Path  # worker logs (SPOTLINE_DEVSTACK_WORKDIR)
    record: Path  # secrets stored and job messages sent (tests/e2e/leakcheck)


LEAKCHECK = Path(__file__).parent / "leakcheck"


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """The demo, run once for every test that judges a demo run (~40 s each on 2 cores): its
    verdict (test_devstack) and its logs (test_no_secret_leaks). leakcheck only records what
    the drills send; it changes nothing they do."""
    root = tmp_path_factory.mktemp("demo")
    record, workdir = root / "recorded.jsonl", root / "devstack"
    python_path = [str(LEAKCHECK), os.environ.get("PYTHONPATH", "")]
    started = time.monotonic()
    completed = subprocess.run(
        [sys.executable, "-m", "devstack", "demo"],
        cwd=REPO_ROOT,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in python_path if p),
            "SPOTLINE_LEAKCHECK_FILE": str(record),
            "SPOTLINE_DEVSTACK_WORKDIR": str(workdir),
            "COLUMNS": "160",  # one table row per line: a failing row reads whole in the report
        },
        capture_output=True,
        text=True,
        timeout=150,
    )
    return DemoRun(completed, time.monotonic() - started, workdir, record)


def log_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8", errors="replace").splitlines() if path.exists() else []


def operator_redrive(dev: Devstack, job_id: str, *flags: str) -> int:
    """``spotline dlq redrive --job JOB_ID`` as an operator runs it, pointed at devstack."""
    names = ["--endpoint-url", dev.server.endpoint_url, "--stack-name", dev.require_stack.name]
    return cli.main([*names, "dlq", "redrive", "--job", job_id, *flags])
