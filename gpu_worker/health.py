"""``GET /healthz``, served by the supervisor process on a thread of its own.

Failure F5: a health check served by the analysis process timed out whenever the analysis
saturated the CPU, and the orchestrator killed the task (exit 137). Here the analysis runs in
a child process and the supervisor only waits on a pipe, so this thread answers in
milliseconds however busy the child is. It renders the state the worker captures
(gpu_worker/worker_state.py); it never blocks on the worker.

200 while the worker is healthy; 503 when it is idle and its last successful SQS poll is
older than ``stale_poll_s`` (it cannot reach the queue), or when its job has run past its runtime
limit (the supervisor should have killed it by then: something is wedged), so the container's
health check fails. AWS faults in a row make the status ``degraded`` with a 200: restarting the
worker would not mend AWS, and the InfraFaults alarm tells the operator.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger

if TYPE_CHECKING:
    from gpu_worker.worker_state import WorkerState

logger = Logger(service="spotline-worker", child=True)


def _iso(epoch_s: float | None) -> str | None:
    if epoch_s is None:
        return None
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")


def worker_snapshot(state: WorkerState, *, stale_poll_s: float) -> dict[str, Any]:
    """The ``/healthz`` body for the worker's state (gpu_worker/worker_state.py)."""
    job = state.job
    status = "draining" if state.draining else ("busy" if job is not None else "idle")
    faults = state.faults
    if status != "draining" and state.degraded:
        status = "degraded"
    now = state.captured_at
    last_poll = state.last_poll_at
    poll_age = None if last_poll is None else round(now - last_poll, 3)
    reference = last_poll if last_poll is not None else state.started_at
    ok = job is not None or state.draining or reference is None or now - reference <= stale_poll_s
    runtime_s = job.runtime_s if job is not None else None
    limit_s = job.runtime_limit_s if job is not None else None
    # A grace of a few ticks: the supervisor kills at the limit on its next tick.
    past_limit = runtime_s is not None and limit_s is not None and runtime_s > limit_s + 30
    if past_limit:
        ok = False
    rss = state.child_rss_bytes
    limit_bytes = state.job_memory_limit_bytes
    container = state.container
    return {
        "status": status,
        "ok": ok,
        "worker_id": state.worker_id,
        "pid": state.pid,
        "job": None
        if job is None
        else {
            "job_id": job.job_id,
            "analyzer": job.analyzer,
            "attempt": job.attempt,
            "runtime_s": round(runtime_s, 3) if runtime_s is not None else None,
            "runtime_limit_s": limit_s,
            "past_limit": past_limit,
            "progress": dict(job.progress),
        },
        "child": {
            "pid": state.child_pid,
            "rss_bytes": rss,
            "rss_pct_of_limit": round(100.0 * rss / limit_bytes, 2),
            "job_peak_bytes": state.job_peak_bytes,
            "restarts": state.child_restarts,
        },
        "job_memory_limit_bytes": limit_bytes,
        "container_memory": {
            "limit_bytes": container.limit_bytes,
            "current_bytes": container.current_bytes,
            "used_pct": container.used_pct,
            "source": container.source,
        },
        "last_successful_poll_at": _iso(last_poll),
        "last_successful_poll_age_s": poll_age,
        "jobs_handled": state.jobs_handled,
        "infra_faults": {
            "total": faults.total,
            "consecutive": faults.consecutive,
            "last_at": _iso(faults.last_at),
            "last_error": faults.last_error,
        },
    }


class _Handler(BaseHTTPRequestHandler):
    server: HealthServer  # type: ignore[assignment]
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # the http.server API
        if self.path.split("?", 1)[0] not in ("/healthz", "/healthz/"):
            self._send(404, {"error": "not found"})
            return
        try:
            body = self.server.snapshot()
        except Exception as exc:  # a health check answers, even about itself
            logger.warning("health snapshot failed", exc_info=True)
            self._send(500, {"status": "error", "ok": False, "error": type(exc).__name__})
            return
        self._send(200 if body.get("ok", True) else 503, body)

    def _send(self, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps(body, separators=(",", ":")).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        return None  # every 15 s from the health check: not worth a log line


class HealthServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str, port: int, snapshot: Callable[[], dict[str, Any]]) -> None:
        super().__init__((host, port), _Handler)
        self.snapshot = snapshot
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> HealthServer:
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.5}, name="health", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.server_close()


def start_health_server(
    host: str, port: int, snapshot: Callable[[], dict[str, Any]]
) -> HealthServer | None:
    """The server, or None if the port is taken: a worker without health still works."""
    try:
        server = HealthServer(host, port, snapshot).start()
    except OSError as exc:
        logger.error("health server not started", extra={"port": port, "error": str(exc)})
        return None
    logger.info("health server listening", extra={"host": host, "port": server.port})
    return server
