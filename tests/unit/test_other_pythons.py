"""`make test-pythons`: the unit tests on 3.12 and 3.13, each in its own venv; a Python the
machine lacks is skipped with how to get it (or fails where REQUIRE_PYTHONS=1)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from devstack.cfn import REPO_ROOT

FIND = REPO_ROOT / "tools" / "find_python.sh"
TEST = REPO_ROOT / "tools" / "test_python.sh"


def run(script: Path, *args: str, path: str, **env: str) -> subprocess.CompletedProcess[str]:
    # No pyenv on this PATH: only what the test puts there, and the shell's own tools.
    return subprocess.run(
        [str(script), *args],
        cwd=REPO_ROOT,
        env={"PATH": f"{path}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def fake_python(folder: Path, version: str, reports: str) -> Path:
    """A pythonX.Y on PATH that says it is ``reports`` and has venv."""
    folder.mkdir(exist_ok=True)
    script = folder / f"python{version}"
    script.write_text(f'#!/bin/sh\ncase "$2" in *print*) echo {reports};; esac\nexit 0\n')
    script.chmod(0o755)
    return script


def test_a_python_on_path_is_found(tmp_path: Path) -> None:
    script = fake_python(tmp_path / "bin", "3.42", "3.42")
    done = run(FIND, "3.42", path=str(tmp_path / "bin"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(script)


def test_a_python_that_is_another_version_is_not_taken(tmp_path: Path) -> None:
    fake_python(tmp_path / "bin", "3.42", "3.41")  # e.g. a shim pointing elsewhere
    done = run(FIND, "3.42", path=str(tmp_path / "bin"))
    assert done.returncode == 1 and "no python3.42 here" in done.stderr


def test_a_missing_python_says_how_to_get_it(tmp_path: Path) -> None:
    done = run(FIND, "3.42", path=str(tmp_path))
    assert done.returncode == 1
    assert done.stderr.strip().startswith("find_python: no python3.42 here; install it (pyenv")


def test_a_bad_version_is_refused(tmp_path: Path) -> None:
    done = run(FIND, "three", path=str(tmp_path))
    assert done.returncode == 2 and "not MAJOR.MINOR" in done.stderr


def test_the_run_on_a_missing_python_is_skipped_with_the_reason(tmp_path: Path) -> None:
    done = run(TEST, "3.42", path=str(tmp_path))
    assert done.returncode == 0
    assert "no python3.42 here" in done.stderr
    assert "test_python: skipped the python3.42 run" in done.stderr
    assert not (REPO_ROOT / ".venv-py3.42").exists()


def test_required_pythons_make_a_missing_one_fail(tmp_path: Path) -> None:
    done = run(TEST, "3.42", path=str(tmp_path), REQUIRE_PYTHONS="1")
    assert done.returncode == 1 and "python3.42 is required here" in done.stderr


def test_ci_runs_the_unit_tests_on_the_image_and_lambda_pythons() -> None:
    done = subprocess.run(
        ["make", "-n", "--no-print-directory", "test-pythons"],
        cwd=REPO_ROOT,
        env={**os.environ, "MAKEFLAGS": "", "MAKELEVEL": ""},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "for version in 3.12 3.13; do tools/test_python.sh $version" in done.stdout
    assert "make test-pythons" in (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    script = TEST.read_text(encoding="utf-8")
    assert '"$venv/bin/python" -m pip install --quiet --require-hashes -r requirements-dev.txt' in (
        script
    )
    assert "set -- tests/unit -q" in script  # unit tests only: CI's time
