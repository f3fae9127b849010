"""`make build` finds a python3.13 for sam build without a particular pyenv layout, or says how
to get one: the Makefile's own logic, run with a PATH that holds only what each case needs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from devstack.cfn import REPO_ROOT

MAKE = shutil.which("make") or "make"
SHOW = 'show: ; @echo "[$$PYENV_VERSION]"'


def _bin(tmp_path: Path, scripts: dict[str, str]) -> Path:
    """A PATH directory with grep and tail (the Makefile's shell helpers) and ``scripts``."""
    directory = tmp_path / "bin"
    directory.mkdir()
    for tool in ("grep", "tail"):
        found = shutil.which(tool)
        assert found is not None, tool
        (directory / tool).symlink_to(found)
    for name, body in scripts.items():
        script = directory / name
        script.write_text("#!/bin/bash\n" + body + "\n")
        script.chmod(0o755)
    return directory


def _make(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYENV", "MAKE"))}
    env["PATH"] = str(path)
    return subprocess.run(
        [str(MAKE), "--no-print-directory", "-s", "-C", str(REPO_ROOT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


FAKE_PYENV = """case "$1 $2" in
  "versions --bare") printf '3.11.7\\n3.12.1\\n3.13.0\\n3.13.2\\n3.13.2t\\n3.14.0\\n' ;;
  "version-name ") echo 3.11.7 ;;
  *) exit 1 ;;
esac"""


def test_pyenv_newest_313_is_put_beside_the_current_version(tmp_path: Path) -> None:
    path = _bin(tmp_path, {"pyenv": FAKE_PYENV, "python3.13": "exit 127"})  # a shim, unselected

    shown = _make(path, "--eval", SHOW, "show")

    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == "[3.11.7:3.13.2]"


def test_a_python313_that_runs_is_used_as_is(tmp_path: Path) -> None:
    path = _bin(tmp_path, {"pyenv": FAKE_PYENV, "python3.13": "echo /opt/py/bin/python3.13"})

    shown = _make(path, "--eval", SHOW, "show")
    checked = _make(path, "sam-python")

    assert shown.stdout.strip() == "[]"  # PYENV_VERSION left alone
    assert checked.returncode == 0
    assert checked.stdout.strip() == "/opt/py/bin/python3.13"


def test_no_python313_anywhere_stops_build_with_how_to_get_one(tmp_path: Path) -> None:
    path = _bin(tmp_path, {})

    checked = _make(path, "sam-python")

    assert checked.returncode == 2
    assert "sam build needs python3.13 on PATH" in checked.stderr
    assert "pyenv install 3.13" in checked.stderr
    assert "sam build --use-container" in checked.stderr


def test_build_checks_for_python313_before_anything_else() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    build = next(line for line in makefile.splitlines() if line.startswith("build:"))
    assert build.split(":", 1)[1].split()[0] == "sam-python"
