"""The analysis child's memory limit and the guard that enforces it (failure F1).

One message once made an analysis eat all 64 GiB of a host and the instance became unreachable;
a docker ``mem_limit`` alone then turned that into a container restart loop. So the child gets a
limit of its own, below the container's: a watchdog samples the RSS of the child *and its
children* (psutil; never RLIMIT_AS, which breaks CUDA's large virtual mappings) on a dedicated
thread, kills the process tree at the limit and reports ``OOM`` with the peak it saw.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from spotline.contract import ErrorKind
from spotline.jobstore import JobError

CGROUP_ROOT = Path("/sys/fs/cgroup")
# cgroup v1 reports "no limit" as a huge page-aligned number rather than "max".
_UNLIMITED_V1 = 1 << 60
DEFAULT_JOB_SHARE = 0.85

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "ki": 1024,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mi": 1024**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gi": 1024**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ti": 1024**4,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(text: str) -> int:
    """``"268435456"``, ``"256Mi"``, ``"2G"``, ``"1.5GiB"`` -> bytes (docker's k/m/g are binary
    too in compose files, but here ``G`` is decimal and ``Gi`` binary, as in Kubernetes)."""
    match = _SIZE.match(text)
    if match is None or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (use bytes or a suffix like 256Mi, 2G)")
    value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value <= 0:
        raise ValueError(f"size must be positive: {text!r}")
    return value


def _read_int(path: Path) -> int | None:
    try:
        raw = path.read_text(encoding="ascii").strip()
    except OSError:
        return None
    if raw in ("", "max"):
        return None
    try:
        return int(raw)
    except ValueError:
        return None


def host_memory_bytes() -> int:
    """MemTotal from /proc/meminfo (psutil as a fallback where there is no /proc)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return int(psutil.virtual_memory().total)


@dataclass(frozen=True)
class ContainerMemory:
    """Where the container's limit came from, the limit, and (if readable) its current usage."""

    limit_bytes: int
    source: str  # "cgroup2", "cgroup1" or "meminfo"
    current_bytes: int | None

    @property
    def used_pct(self) -> float | None:
        if self.current_bytes is None:
            return None
        return round(100.0 * self.current_bytes / self.limit_bytes, 2)


def container_memory(root: Path = CGROUP_ROOT) -> ContainerMemory:
    """The container's memory limit: cgroup v2 ``memory.max``, then v1
    ``memory/memory.limit_in_bytes``; an unlimited cgroup (or none) falls back to host RAM."""
    host = host_memory_bytes()
    v2_limit = _read_int(root / "memory.max")
    if v2_limit is not None and v2_limit < host:
        return ContainerMemory(v2_limit, "cgroup2", _read_int(root / "memory.current"))
    v1_limit = _read_int(root / "memory" / "memory.limit_in_bytes")
    if v1_limit is not None and v1_limit < min(host, _UNLIMITED_V1):
        return ContainerMemory(
            v1_limit, "cgroup1", _read_int(root / "memory" / "memory.usage_in_bytes")
        )
    # No limit: the host is the container. Usage then means the host's used memory.
    with contextlib.suppress(OSError):
        current: int | None = int(host - psutil.virtual_memory().available)
        return ContainerMemory(host, "meminfo", current)
    return ContainerMemory(host, "meminfo", None)


def job_limit_bytes(setting: str, container_limit_bytes: int) -> int:
    """``WORKER_JOB_MEMORY_LIMIT``: empty -> 85 % of the container limit; ``"70%"`` -> that share;
    otherwise a size (``268435456``, ``256Mi``, ``2G``)."""
    setting = setting.strip()
    if not setting:
        return int(container_limit_bytes * DEFAULT_JOB_SHARE)
    if setting.endswith("%"):
        share = float(setting[:-1])
        if not 0 < share <= 100:
            raise ValueError(f"percentage must be in (0, 100]: {setting!r}")
        return int(container_limit_bytes * share / 100)
    return parse_bytes(setting)


_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants (psutil scans every process: milliseconds)."""
    try:
        root = psutil.Process(pid)
        return [pid, *(child.pid for child in root.children(recursive=True))]
    except psutil.Error:
        return []


def rss_bytes(pid: int) -> int:
    """One process's resident memory: /proc/PID/statm (microseconds), psutil elsewhere."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_BYTES
    except FileNotFoundError:
        return 0  # it just exited
    except (OSError, ValueError, IndexError):
        try:
            return int(psutil.Process(pid).memory_info().rss)
        except psutil.Error:
            return 0


def tree_rss_bytes(pid: int) -> int:
    """RSS of a process and all its descendants (a forked helper counts against the job too)."""
    return sum(rss_bytes(member) for member in process_tree(pid))


def kill_tree(pid: int) -> None:
    """SIGKILL a process and its descendants, children first so none is re-parented alive."""
    try:
        root = psutil.Process(pid)
        descendants = root.children(recursive=True)
    except psutil.Error:
        return
    for process in [*descendants, root]:
        with contextlib.suppress(psutil.Error):
            process.kill()


def _mib(value: int) -> str:
    return f"{value / 1024**2:.0f} MiB"


class MemoryGuard:
    """Watches one analysis child at a time; a ``Supervisor`` watcher.

    ``start(pid)`` begins sampling on a dedicated thread every ``sample_s`` (the supervisor's
    tick is too slow for an allocation of GiB/s), ``__call__(pid)`` is the supervisor's per-tick
    check and returns the OOM verdict once the limit was crossed, ``stop()`` ends the job.
    At the limit the thread kills the child's process tree itself, at once.
    """

    def __init__(
        self, limit_bytes: int, *, sample_s: float = 0.01, tree_refresh_s: float = 0.2
    ) -> None:
        if limit_bytes <= 0:
            raise ValueError("limit_bytes must be positive")
        self.limit_bytes = limit_bytes
        self.sample_s = sample_s
        # Finding the child's descendants scans every process on the host (~4 ms for a few
        # hundred): done every tree_refresh_s; reading the known members' RSS is every sample.
        self.tree_refresh_s = tree_refresh_s
        self._tree: list[int] = []
        self._tree_at = 0.0
        self.peak_bytes = 0
        self.last_rss_bytes = 0
        self.samples = 0
        self._pid: int | None = None
        self._verdict: JobError | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def watching(self) -> int | None:
        return self._pid

    def start(self, pid: int) -> None:
        with self._lock:
            self._pid = pid
            self._verdict = None
            self.peak_bytes = 0
            self.last_rss_bytes = 0
            self.samples = 0
            if not self._tree or self._tree[0] != pid:
                # The same long-lived child keeps its cached tree (refreshed every
                # tree_refresh_s as during a job): no process scan on every job's start.
                self._tree, self._tree_at = [], 0.0
        self._sample(pid)
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="memory-guard", daemon=True)
            self._thread.start()
        self._wake.set()

    def stop(self) -> None:
        """The job is over: stop sampling (peak_bytes keeps this job's peak for metrics)."""
        with self._lock:
            self._pid = None

    def close(self) -> None:
        self.stop()
        self._stopped.set()
        self._wake.set()

    def __call__(self, pid: int) -> JobError | None:
        if self._pid != pid:
            self.start(pid)
        with self._lock:
            return self._verdict

    def verdict(self) -> JobError | None:
        with self._lock:
            return self._verdict

    def _loop(self) -> None:
        while not self._stopped.is_set():
            pid = self._pid
            if pid is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            self._sample(pid)
            time.sleep(self.sample_s)  # the sampling period itself, not a guess

    def _sample(self, pid: int) -> None:
        now = time.monotonic()
        if not self._tree or self._tree[0] != pid or now - self._tree_at >= self.tree_refresh_s:
            self._tree, self._tree_at = process_tree(pid) or [pid], now
        rss = sum(rss_bytes(member) for member in self._tree)
        with self._lock:
            if self._pid != pid or self._verdict is not None:
                return
            self.samples += 1
            self.last_rss_bytes = rss
            self.peak_bytes = max(self.peak_bytes, rss)
            if rss < self.limit_bytes:
                return
            self._verdict = JobError(
                ErrorKind.OOM,
                f"analysis used {_mib(rss)}, over its limit of {_mib(self.limit_bytes)}; "
                "the child was killed",
                peak_memory_bytes=rss,
                limit_bytes=self.limit_bytes,
            )
        kill_tree(pid)
