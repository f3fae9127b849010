from __future__ import annotations

import subprocess
import sys

import pytest

from devstack.cfn import REPO_ROOT

pytestmark = pytest.mark.e2e


def test_demo_exits_zero_within_a_minute() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "devstack", "demo"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "every job reached its expected state" in completed.stdout
