from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from devstack.motoserver import wait_until
from gpu_worker import memory
from gpu_worker.config import WorkerConfig
from gpu_worker.memory import MemoryGuard, container_memory, job_limit_bytes, parse_bytes
from spotline.contract import ErrorKind
from spotline.settings import MissingSetting

MIB = 1024 * 1024

# Allocates `step` MiB every `pause` seconds up to `total` MiB (touching every page), then waits.
HOG = """
import sys, time
step, pause, total = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
held = []
while len(held) * step < total:
    held.append(bytearray(b"\\x01") * (step * 1024 * 1024))
    time.sleep(pause)
print("done", flush=True)
time.sleep(60)  # bounded: the guard or the test kills this process long before
"""


def hog(step_mib: int, pause_s: float, total_mib: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", HOG, str(step_mib), str(pause_s), str(total_mib)],
        stdout=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("268435456", 268435456),
        ("256Mi", 256 * MIB),
        ("256MiB", 256 * MIB),
        ("2G", 2_000_000_000),
        ("2Gi", 2 * 1024**3),
        ("1.5Gi", int(1.5 * 1024**3)),
        (" 64 mi ", 64 * MIB),
        ("10k", 10_000),
    ],
)
def test_sizes_accept_bytes_and_suffixes(text: str, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "12Qi", "-5", "0", "Mi"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_bytes(text)


def test_job_limit_defaults_to_85_percent_of_the_container() -> None:
    assert job_limit_bytes("", 1000 * MIB) == 850 * MIB
    assert job_limit_bytes("50%", 1000 * MIB) == 500 * MIB
    assert job_limit_bytes("256Mi", 1000 * MIB) == 256 * MIB
    with pytest.raises(ValueError):
        job_limit_bytes("150%", 1000 * MIB)


def _cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content + "\n")
    return tmp_path


def test_cgroup_v2_limit_and_usage(tmp_path: Path) -> None:
    root = _cgroup(tmp_path, {"memory.max": str(512 * MIB), "memory.current": str(128 * MIB)})
    found = container_memory(root)
    assert (found.limit_bytes, found.source, found.current_bytes) == (
        512 * MIB,
        "cgroup2",
        128 * MIB,
    )
    assert found.used_pct == 25.0


def test_cgroup_v1_limit_when_v2_is_unlimited(tmp_path: Path) -> None:
    root = _cgroup(
        tmp_path,
        {
            "memory.max": "max",
            "memory/memory.limit_in_bytes": str(1024 * MIB),
            "memory/memory.usage_in_bytes": str(256 * MIB),
        },
    )
    found = container_memory(root)
    assert (found.limit_bytes, found.source, found.used_pct) == (1024 * MIB, "cgroup1", 25.0)


def test_unlimited_cgroup_falls_back_to_host_memory(tmp_path: Path) -> None:
    # cgroup v1 says "no limit" with a huge number (this machine does exactly that).
    root = _cgroup(tmp_path, {"memory/memory.limit_in_bytes": "9223372036854771712"})
    found = container_memory(root)
    assert found.source == "meminfo"
    assert found.limit_bytes == memory.host_memory_bytes() == psutil.virtual_memory().total
    assert found.used_pct is not None and 0 < found.used_pct < 100


def test_worker_config_refuses_a_bad_memory_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORKER_QUEUE_URL", "WORKER_DLQ_URL", "WORKER_TABLE_NAME", "WORKER_BUCKET"):
        monkeypatch.setenv(name, "x")
    monkeypatch.setenv("WORKER_JOB_MEMORY_LIMIT", "a lot")
    with pytest.raises(MissingSetting, match="WORKER_JOB_MEMORY_LIMIT"):
        WorkerConfig.from_env()
    monkeypatch.setenv("WORKER_JOB_MEMORY_LIMIT", "2Gi")
    assert WorkerConfig.from_env().job_memory_limit == "2Gi"


def test_tree_rss_counts_the_children_of_the_child() -> None:
    child = hog(64, 0, 64)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "done"
        own = psutil.Process().memory_info().rss
        assert memory.tree_rss_bytes(psutil.Process().pid) >= own + 64 * MIB
    finally:
        child.kill()
        child.wait()


def test_guard_stops_a_fast_allocation_close_to_the_limit() -> None:
    # ~16 MiB every 5 ms: well over 1 GiB/s. A per-tick check (100 ms) would overshoot by GiBs.
    child = hog(16, 0.005, 4096)
    guard = MemoryGuard(200 * MIB, sample_s=0.005)
    try:
        guard.start(child.pid)
        verdict = wait_until(guard.verdict, timeout=20, what="OOM verdict")
        assert child.wait(timeout=10) == -9
        assert guard(child.pid) == verdict  # the supervisor's per-tick check sees the same
    finally:
        child.kill()
        guard.close()
    assert verdict.kind == ErrorKind.OOM and verdict.limit_bytes == 200 * MIB
    assert 200 * MIB <= verdict.peak_memory_bytes < 200 * MIB + 96 * MIB


def test_guard_leaves_a_job_under_the_limit_alone() -> None:
    child = hog(16, 0, 32)
    guard = MemoryGuard(512 * MIB, sample_s=0.005)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "done"
        guard.start(child.pid)
        wait_until(lambda: guard.samples >= 5, timeout=5, what="samples")
        assert guard(child.pid) is None and child.poll() is None
        assert 32 * MIB <= guard.peak_bytes < 512 * MIB
    finally:
        guard.close()
        child.kill()
        child.wait()


def test_guard_counts_a_grandchild_started_after_the_job_began() -> None:
    # The child itself stays small; a helper it starts later eats the memory.
    spawner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            "time.sleep(0.3)  # bounded: the grandchild must start after the guard does\n"
            "subprocess.run([sys.executable, '-c', sys.argv[1], '16', '0.01', '4096'])",
            HOG,
        ]
    )
    guard = MemoryGuard(160 * MIB, sample_s=0.005, tree_refresh_s=0.05)
    try:
        guard.start(spawner.pid)
        verdict = wait_until(guard.verdict, timeout=20, what="OOM verdict")
        assert spawner.wait(timeout=10) == -9  # the whole tree is killed, not only the helper
    finally:
        spawner.kill()
        guard.close()
    assert verdict.peak_memory_bytes >= 160 * MIB
