"""A poison message: a memory hog under a small job limit is retried, then dead-lettered as OOM
with its peak memory, while ordinary jobs around it succeed and the worker never restarts."""

from __future__ import annotations

import json
import os
import urllib.request

from devstack.drills.base import Check, Drill, Expectation
from devstack.motoserver import free_port
from devstack.stack import Devstack
from devstack.workers import WorkerProcess
from gpu_worker.memory import parse_bytes
from spotline.contract import ErrorKind, JobStatus
from spotline.jobstore import JobRecord

# Every demo worker inherits it, so it must leave room for the text_embed drill's model (~600 MiB).
JOB_MEMORY_LIMIT = "1Gi"
MAX_ATTEMPTS = 3
MIB = 1024 * 1024


def dead_lettered_as_oom(dev: Devstack, record: JobRecord) -> str | None:
    error = record.last_error
    limit = parse_bytes(JOB_MEMORY_LIMIT)
    if error is None or error.kind != ErrorKind.OOM:
        return f"last_error {error.kind if error else None}, expected OOM"
    if record.attempts != MAX_ATTEMPTS:
        return f"attempts {record.attempts}, expected {MAX_ATTEMPTS}"
    if error.peak_memory_bytes is None or error.peak_memory_bytes < limit:
        return f"peak {error.peak_memory_bytes} below the limit {limit}"
    return None


def succeeded(dev: Devstack, record: JobRecord) -> str | None:
    return None if record.result_uri else "no result_uri"


class PoisonJob(Drill):
    name = "poison"

    def __init__(self) -> None:
        self._pid: int | None = None
        self._hog: str | None = None
        self._health_port = free_port()
        self._health: list[dict[str, object]] = []
        # Other drills start workers of their own (before this drill's setup runs), and any of
        # them may receive the poison message (SQS does not route): every worker this demo
        # starts inherits the small limit. Restored in teardown.
        self._saved_limit = os.environ.get("WORKER_JOB_MEMORY_LIMIT")
        os.environ["WORKER_JOB_MEMORY_LIMIT"] = JOB_MEMORY_LIMIT

    def teardown(self, dev: Devstack) -> None:
        if self._saved_limit is None:
            os.environ.pop("WORKER_JOB_MEMORY_LIMIT", None)
        else:
            os.environ["WORKER_JOB_MEMORY_LIMIT"] = self._saved_limit

    def worker_env(self) -> dict[str, str]:
        return {
            "WORKER_JOB_MEMORY_LIMIT": JOB_MEMORY_LIMIT,
            "WORKER_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
            # Short backoff so three attempts fit the demo's minute (production: 10 s, doubling).
            "WORKER_BACKOFF_BASE_S": "1",
            "WORKER_BACKOFF_MAX_S": "2",
            "WORKER_HEALTH_PORT": str(self._health_port),
        }

    def submit(self, dev: Devstack) -> list[Expectation]:
        expectations = []
        requests = [
            ("echo (before poison)", {"analyzer": "echo", "input": {"n": "before"}}),
            (
                f"memory_hog > {JOB_MEMORY_LIMIT}",
                {
                    "analyzer": "memory_hog",
                    "input": None,
                    # The cap only matters on a worker without the limit: it then succeeds
                    # (and the drill fails) instead of eating the machine.
                    "params": {"bytes_per_step": 32 * MIB, "step_s": 0.02, "max_bytes": 2**31},
                },
            ),
            ("echo (after poison)", {"analyzer": "echo", "input": {"n": "after"}}),
        ]
        for label, request in requests:
            status, body = dev.submit(request)
            if status != 202:
                continue
            is_hog = request["analyzer"] == "memory_hog"
            if is_hog:
                self._hog = body["job_id"]
            expectations.append(
                Expectation(
                    body["job_id"],
                    label,
                    JobStatus.DEAD_LETTERED if is_hog else JobStatus.SUCCEEDED,
                    dead_lettered_as_oom if is_hog else succeeded,
                )
            )
        return expectations

    def tick(self, dev: Devstack, elapsed_s: float) -> None:
        worker = self._worker_a(dev)
        if self._pid is None and worker is not None:
            self._pid = worker.pid
        url = f"http://127.0.0.1:{self._health_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=0.5) as response:
                self._health.append(json.loads(response.read()))
        except OSError:
            pass  # not up yet; the check below says whether it ever answered

    @staticmethod
    def _worker_a(dev: Devstack) -> WorkerProcess | None:
        return next((w for w in dev.workers if w.name == "worker-a"), None)

    def checks(self, dev: Devstack, records: dict[str, JobRecord]) -> list[Check]:
        worker = self._worker_a(dev)
        same = worker is not None and worker.alive() and worker.pid == self._pid
        hog = records.get(self._hog or "")
        holder = next((w for w in dev.workers if hog and w.name == hog.worker), None)
        peak = hog.last_error.peak_memory_bytes if hog and hog.last_error else None
        busy = [h for h in self._health if h.get("status") == "busy"]
        return [
            Check(
                "/healthz answered while jobs ran",
                bool(busy),
                f"{len(self._health)} answers, {len(busy)} busy",
            ),
            Check(
                "worker survived the poison job (same PID)",
                same,
                f"pid {self._pid} -> {worker.pid if worker else None}",
            ),
            Check(
                "the worker that dead-lettered it is alive",
                holder is not None and holder.alive(),
                f"{holder.name} pid {holder.pid}" if holder else "unknown worker",
            ),
            Check(
                "poison job dead-lettered as OOM with its peak",
                hog is not None and dead_lettered_as_oom(dev, hog) is None,
                f"peak {peak / MIB:.0f} MiB, limit {JOB_MEMORY_LIMIT}" if peak else "no peak",
            ),
        ]
