"""spotline-drills: analyzers that reproduce the poison messages of the field, on purpose.

A plug-in of its own (entry points in this package's pyproject.toml), installed in devstack, the
tests and the chaos drill, and absent from the production image: each declares ``drill=True``,
and a stack accepts drills only with ``EnableDrillAnalyzers``.


``memory_hog`` eats memory until it is stopped, ``fail`` raises a permanent or retryable error
(or a GPU out-of-memory error by type name), ``crash`` kills the analysis child with a signal
or an exit code, ``cpu_burn`` saturates every core (the health endpoint must still answer),
``slow_load`` takes its time to load, like a big model (``WORKER_PRELOAD`` must hide it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from spotline.sdk import (
    AnalysisContext,
    AnalyzerSpec,
    Interrupted,
    InvalidInput,
    Job,
    PermanentError,
    RetryableError,
)

MIB = 1024 * 1024
PAGE = 4096


class MemoryHog:
    """Allocates ``params.bytes_per_step`` (default 16 MiB) every ``params.step_s`` (default
    0.05 s), touching every page so it really is resident, until ``params.max_bytes`` (default:
    never). Under the memory guard it dies as ``OOM``. Asked to stop (a spot notice, SIGTERM)
    it raises ``Interrupted``: a stopped hog has not finished, so it must not succeed."""

    name = "memory_hog"
    spec = AnalyzerSpec(
        drill=True,
        params_schema={
            "type": "object",
            "properties": {
                "bytes_per_step": {"type": "integer", "minimum": 1},
                "step_s": {"type": "number", "minimum": 0},
                "max_bytes": {"type": "integer", "minimum": 1},
            },
        },
    )

    def load(self) -> None:
        return None

    def analyze(self, job: Job, ctx: AnalysisContext) -> Any:
        params = job.params or {}
        per_step = int(params.get("bytes_per_step", 16 * MIB))
        step_s = float(params.get("step_s", 0.05))
        max_bytes = params.get("max_bytes")
        held: list[bytearray] = []
        total = 0
        while max_bytes is None or total < int(max_bytes):
            if ctx.should_stop():
                raise Interrupted(f"stopped after allocating {total} bytes")
            block = bytearray(per_step)
            for offset in range(0, per_step, PAGE):  # zeroed pages may be lazy: touch each one
                block[offset] = 1
            held.append(block)
            total += per_step
            ctx.progress(allocated_bytes=total)
            if step_s > 0:
                time.sleep(step_s)
        return {"allocated_bytes": total}


class OutOfMemoryError(RuntimeError):
    """Named like ``torch.cuda.OutOfMemoryError``: the worker classifies it by type name."""


class Fail:
    """Raises by ``params.error``: ``"retryable"`` (default), ``"permanent"``, ``"invalid_input"``
    or ``"gpu_oom"``. With ``params.fail_attempts`` = N it fails only attempts 1..N and then
    succeeds (a transient failure)."""

    name = "fail"
    spec = AnalyzerSpec(
        drill=True,
        params_schema={
            "type": "object",
            "properties": {
                "error": {"enum": ["retryable", "permanent", "invalid_input", "gpu_oom"]},
                "fail_attempts": {"type": "integer", "minimum": 0},
                "message": {"type": "string", "maxLength": 1000},
            },
        },
    )

    def load(self) -> None:
        return None

    def analyze(self, job: Job, ctx: AnalysisContext) -> Any:
        params = job.params or {}
        fail_attempts = params.get("fail_attempts")
        if fail_attempts is not None and job.attempt > int(fail_attempts):
            return {"succeeded_on_attempt": job.attempt}
        error = str(params.get("error", "retryable"))
        message = str(params.get("message", f"drill failure ({error})"))
        if error == "permanent":
            raise PermanentError(message)
        if error == "invalid_input":
            raise InvalidInput(message)
        if error == "gpu_oom":
            raise OutOfMemoryError(f"CUDA out of memory. {message}")
        raise RetryableError(message)


class Crash:
    """Kills the analysis child: ``params.signal`` (name or number, default SIGKILL) or, when
    ``params.exit_code`` is given, ``os._exit`` with it; after ``params.after_s`` seconds."""

    name = "crash"
    spec = AnalyzerSpec(
        drill=True,
        params_schema={
            "type": "object",
            "properties": {
                "signal": {
                    "type": ["string", "integer"],
                    "pattern": "^SIG[A-Z0-9]+$",
                    "minimum": 1,
                    "maximum": 64,
                },
                "exit_code": {"type": "integer", "minimum": 0, "maximum": 255},
                "after_s": {"type": "number", "minimum": 0, "maximum": 3600},
            },
        },
    )

    def load(self) -> None:
        return None

    def analyze(self, job: Job, ctx: AnalysisContext) -> Any:
        params = job.params or {}
        time.sleep(float(params.get("after_s", 0)))
        if "exit_code" in params:
            os._exit(int(params["exit_code"]))
        raw = params.get("signal", "SIGKILL")
        signum = int(raw) if isinstance(raw, int) else int(signal.Signals[str(raw).upper()])
        # SIGSEGV must kill like a real segfault in a native extension: no Python handler.
        if signum not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        time.sleep(10)  # the signal is delivered before this returns
        raise RuntimeError(f"signal {signum} did not kill the child")


_BURN = "import time,sys\nend=time.monotonic()+float(sys.argv[1])\nwhile time.monotonic()<end: pass"


class CpuBurn:
    """Keeps ``params.processes`` cores (default: every core) busy for ``params.seconds``
    (default 3): helper processes plus the child itself, all spinning."""

    name = "cpu_burn"
    spec = AnalyzerSpec(
        drill=True,
        params_schema={
            "type": "object",
            "properties": {
                "seconds": {"type": "number", "minimum": 0, "maximum": 3600},
                "processes": {"type": "integer", "minimum": 1, "maximum": 256},
            },
        },
    )

    def load(self) -> None:
        return None

    def analyze(self, job: Job, ctx: AnalysisContext) -> Any:
        params = job.params or {}
        seconds = float(params.get("seconds", 3.0))
        processes = int(params.get("processes", os.cpu_count() or 1))
        # Helpers end by themselves after `seconds`; the supervisor kills the tree if it must.
        helpers = [
            subprocess.Popen([sys.executable, "-c", _BURN, str(seconds)])
            for _ in range(max(0, processes - 1))
        ]
        spins = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            spins += 1
        for helper in helpers:
            helper.wait(timeout=seconds + 30)
        return {"processes": processes, "seconds": seconds, "spins": spins}


LOAD_SECONDS_ENV = "SPOTLINE_DRILL_LOAD_S"
# "1": the load is killed by SIGKILL halfway, as the kernel's OOM killer ends a model too big
# for the container.
LOAD_KILLED_ENV = "SPOTLINE_DRILL_LOAD_KILLED"


class SlowLoad:
    """Loads for ``SPOTLINE_DRILL_LOAD_S`` seconds (default 5; a model's load is per child, not
    per job, so it is set for the worker, not in the job; ``SPOTLINE_DRILL_LOAD_KILLED=1`` kills
    the child halfway), then answers at once. Preloaded
    (``WORKER_PRELOAD=slow_load``) its jobs run in milliseconds; loaded on first use, the
    first job pays the load against its ``max_runtime_s``."""

    name = "slow_load"
    spec = AnalyzerSpec(drill=True, params_schema={"type": "object"})

    def __init__(self) -> None:
        self.loaded_in_s: float | None = None

    def load(self) -> None:
        started = time.monotonic()
        seconds = float(os.environ.get(LOAD_SECONDS_ENV, "5"))
        if os.environ.get(LOAD_KILLED_ENV) == "1":
            time.sleep(seconds / 2)
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(seconds)
        self.loaded_in_s = round(time.monotonic() - started, 3)

    def analyze(self, job: Job, ctx: AnalysisContext) -> Any:
        return {"loaded_in_s": self.loaded_in_s, "pid": os.getpid()}
