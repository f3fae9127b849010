"""`python -m devstack run` (make run-local): an installed analyzer, end to end on this machine."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from devstack.cfn import REPO_ROOT

pytestmark = pytest.mark.e2e


def run_local(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devstack", "run", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_the_example_analyzer_runs_end_to_end_and_prints_its_result() -> None:
    points = [[0, 0], [0.1, 0], [9, 9], [9.1, 9]]
    done = run_local("--analyzer", "kmeans", "--input", json.dumps({"points": points, "k": 2}))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "status: SUCCEEDED" in done.stdout
    result = json.loads(done.stdout.split("):\n", 1)[1])
    assert sorted(result["sizes"]) == [2, 2]


def test_a_request_outside_the_analyzers_schema_is_refused_by_the_api_with_its_paths() -> None:
    done = run_local("--analyzer", "kmeans", "--input", '{"points": [[0, 0]], "k": 0}')
    assert done.returncode == 1
    assert "refused the job (400)" in done.stderr and "$.input.k" in done.stderr
