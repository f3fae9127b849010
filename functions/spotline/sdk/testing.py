"""Test an analyzer through spotline's real analysis child, without AWS.

``run_analyzer`` starts the worker's own supervisor and analysis child (a spawned process, as in
production), with the memory guard watching it, checkpoints in a folder, and the same rules the
fleet applies: the analyzer is found by its entry-point name, the job is checked against its
declared schemas, a runtime limit and a memory limit apply, and ``stop_after_s`` raises
``ctx.should_stop()`` as a spot notice would. It returns what the worker would record::

    from spotline.sdk.testing import run_analyzer

    first = run_analyzer("kmeans", {"points": points, "k": 3}, stop_after_s=0.5)
    assert first.error_kind == "INTERRUPTED" and first.checkpoints >= 1
    second = run_analyzer("kmeans", {"points": points, "k": 3}, restored=first.checkpoint)
    assert second.succeeded

It needs the worker installed beside your package (``pip install spotline``), which is where
an analyzer runs anyway; it imports it only when called, so importing this module costs nothing.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["RunResult", "run_analyzer"]


@dataclass(frozen=True)
class RunResult:
    """How one attempt ended, as the worker would record it."""

    succeeded: bool
    output: Any  # the analyzer's return value, decoded from JSON (None unless succeeded)
    error_kind: str | None  # OOM, TIMEOUT, INTERRUPTED, INVALID_INPUT, ANALYZER_ERROR, ...
    error_message: str | None
    permanent: bool  # dead-lettered at once rather than retried
    checkpoints: int  # checkpoints stored during this attempt
    checkpoint: Any  # the last checkpoint stored (pass it as ``restored`` to resume)
    peak_memory_bytes: int  # the analysis child's peak resident memory, as the guard saw it
    duration_s: float
    progress: dict[str, Any]  # the last ``ctx.progress(...)`` fields


def run_analyzer(
    analyzer: str,
    input: Any = None,
    params: dict[str, Any] | None = None,
    *,
    restored: Any = None,
    memory_limit_mib: int = 2048,
    max_runtime_s: float = 300.0,
    stop_after_s: float | None = None,
    checkpoint_grace_s: float = 20.0,
    job_id: str = "test-job",
    attempt: int = 1,
) -> RunResult:
    """Run one job of ``analyzer`` (an installed entry-point name) in a fresh analysis child."""
    from gpu_worker.checkpoint import FileCheckpointStore
    from gpu_worker.memory import MemoryGuard
    from gpu_worker.registry import build_catalog
    from gpu_worker.supervisor import Supervisor
    from spotline.contract import InvalidJob, RequestPolicy, validate_request
    from spotline.sdk import Job

    params = dict(params or {})
    catalog, _ = build_catalog("spotline.sdk.testing", only=[analyzer])
    try:
        validate_request(
            {"analyzer": analyzer, "input": input, "params": params},
            RequestPolicy(catalog=catalog, drills_enabled=True),
        )
    except InvalidJob as exc:
        where = "; ".join(f"{v.path}: {v.message}" for v in exc.violations)
        return RunResult(
            False, None, "INVALID_INPUT", f"{exc} ({where})", True, 0, None, 0, 0.0, {}
        )
    with tempfile.TemporaryDirectory(prefix="spotline-sdk-test-") as folder:
        store = FileCheckpointStore(folder)
        saved: list[Any] = []

        def keep(job: str, state: Any) -> None:
            store.save(job, state)
            saved.append(state)

        guard = MemoryGuard(memory_limit_mib * 1024 * 1024)
        supervisor = Supervisor(
            on_checkpoint=keep,
            on_artifact=lambda job, name, data, kind: f"file://{folder}/{job}/{name}",
            watchers=[guard],
        )
        timer = None
        if stop_after_s is not None:
            timer = threading.Timer(stop_after_s, supervisor.request_stop, [checkpoint_grace_s])
        try:
            supervisor.ensure_child()
            if timer is not None:
                timer.start()
            started = time.monotonic()
            outcome = supervisor.run(
                Job(job_id, analyzer, input, params, attempt=attempt),
                restored,
                max_runtime_s=max_runtime_s,
                on_tick=lambda: None,
            )
            progress = dict(supervisor.progress)
        finally:
            if timer is not None:
                timer.cancel()
            supervisor.close()
            guard.close()
    error = outcome.error
    return RunResult(
        succeeded=outcome.succeeded,
        output=json.loads(outcome.output_json) if outcome.output_json is not None else None,
        error_kind=str(error.kind) if error else None,
        error_message=error.message if error else None,
        permanent=outcome.permanent,
        checkpoints=outcome.checkpoints,
        checkpoint=saved[-1] if saved else None,
        peak_memory_bytes=guard.peak_bytes,
        duration_s=outcome.duration_s or time.monotonic() - started,
        progress=progress,
    )
