"""What the worker is doing, taken at one moment: the value health renders and metrics read.

The worker captures it (``Worker.state()``) from its parts; health turns it into the
``/healthz`` body without knowing the worker's internals, so health imports no worker and a
test arranges a state by building (or ``dataclasses.replace``-ing) this value.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gpu_worker import memory
from gpu_worker.faults import FaultReport, FaultTracker
from gpu_worker.memory import ContainerMemory
from gpu_worker.supervisor import RunningJob

if TYPE_CHECKING:
    from gpu_worker.memory import MemoryGuard
    from gpu_worker.supervisor import Supervisor


@dataclass(frozen=True)
class WorkerState:
    worker_id: str
    pid: int
    captured_at: float  # epoch seconds
    draining: bool  # stopping or draining: the worker takes no new job
    degraded: bool  # AWS faults in a row (gpu_worker/faults.py)
    job: RunningJob | None
    child_pid: int | None
    child_rss_bytes: int
    child_restarts: int
    job_peak_bytes: int | None  # the memory guard's peak, while a job runs
    job_memory_limit_bytes: int
    container: ContainerMemory
    started_at: float | None  # epoch seconds: when the worker's services started
    last_poll_at: float | None  # epoch seconds: the last long poll that SQS answered
    jobs_handled: int
    faults: FaultReport


def capture(
    worker_id: str,
    supervisor: Supervisor,
    guard: MemoryGuard,
    faults: FaultTracker,
    *,
    draining: bool,
    started_at: float | None,
    last_poll_at: float | None,
    jobs_handled: int,
) -> WorkerState:
    """The state now; safe from any thread (each part is read once, nothing blocks)."""
    job = supervisor.running()
    child_pid = supervisor.child_pid
    # While a job runs the guard samples every few ms; read its value rather than walk the
    # process tree again. Idle, measure the (model-holding) child directly.
    rss = guard.last_rss_bytes if job is not None and guard.watching else None
    if rss is None:
        rss = memory.tree_rss_bytes(child_pid) if child_pid else 0
    return WorkerState(
        worker_id=worker_id,
        pid=os.getpid(),
        captured_at=time.time(),
        draining=draining,
        degraded=faults.degraded,
        job=job,
        child_pid=child_pid,
        child_rss_bytes=rss,
        child_restarts=supervisor.restarts,
        job_peak_bytes=guard.peak_bytes if job is not None else None,
        job_memory_limit_bytes=guard.limit_bytes,
        container=memory.container_memory(),
        started_at=started_at,
        last_poll_at=last_poll_at,
        jobs_handled=jobs_handled,
        faults=faults.report(),
    )
