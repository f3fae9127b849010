"""The analysis child process: loads each analyzer once, then runs jobs sent over a pipe.

Messages from the supervisor: ``("run", job_dict, restored_state)`` and ``("shutdown",)``.
Messages to the supervisor: ``("loading", name)`` before each analyzer named in
``WORKER_PRELOAD`` loads, ``("ready", pid, {"preloaded": [...], "failed": {...}})`` (once they
are loaded), ``("checkpoint", state)``,
``("progress", fields)``,
``("artifact", name, data, content_type)`` (answered with ``("artifact_stored", uri)`` or
``("artifact_failed", message)``), ``("result", output_json)`` and
``("error", kind, message, permanent)``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any

from gpu_worker import analyzers
from gpu_worker.analyzers import Interrupted, InvalidInput, Job, PermanentError, RetryableError
from spotline.contract import ErrorKind

CHILD_NICENESS = 10
# Raised by frameworks when the GPU runs out of memory; matched by name so torch is optional.
_OOM_TYPE_NAMES = {"OutOfMemoryError", "OutOfMemory", "CUDAOutOfMemoryError"}
# Artifact names become S3 key suffixes under results/{job_id}/: no slashes, no surprises.
_ARTIFACT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError) or type(exc).__name__ in _OOM_TYPE_NAMES:
        return True
    text = str(exc).lower()
    return "out of memory" in text and ("cuda" in text or "gpu" in text)


def classify(exc: BaseException) -> tuple[ErrorKind, bool]:
    """(error kind, permanent?) for an exception raised by an analyzer."""
    # A GPU OOM is often wrapped by the analyzer ("raise AnalysisFailed(...) from exc").
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if _is_out_of_memory(seen):
            return ErrorKind.OOM, False
        seen = seen.__cause__ or seen.__context__
    if isinstance(exc, Interrupted):
        return ErrorKind.INTERRUPTED, False
    if isinstance(exc, InvalidInput):
        return ErrorKind.INVALID_INPUT, True
    if isinstance(exc, PermanentError):
        return ErrorKind.ANALYZER_ERROR, True
    return ErrorKind.ANALYZER_ERROR, False


class ChildContext:
    """The ``AnalysisContext`` an analyzer sees inside the child."""

    def __init__(self, conn: Connection, stop_event: Event, restored: Any | None) -> None:
        self._conn = conn
        self._stop_event = stop_event
        self._restored = restored

    def should_stop(self) -> bool:
        return self._stop_event.is_set()

    def checkpoint(self, state: Any) -> None:
        if not isinstance(state, bytes | bytearray):
            json.dumps(state)  # fail here, in the analyzer's frame, if it is not JSON-able
        self._conn.send(("checkpoint", state))
        self._restored = state

    def restore(self) -> Any | None:
        return self._restored

    def progress(self, **fields: Any) -> None:
        self._conn.send(("progress", fields))

    def put_artifact(
        self, name: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> str:
        if not _ARTIFACT_NAME.match(name):
            raise PermanentError(f"artifact name {name!r} is not a plain file name")
        # The supervisor answers before it sends anything else: nothing else is in flight.
        self._conn.send(("artifact", name, bytes(data), content_type))
        reply = self._conn.recv()
        if reply[0] != "artifact_stored":
            raise RetryableError(f"artifact {name} was not stored: {reply[1]}")
        return str(reply[1])


def first_line(text: str, limit: int = 300) -> str:
    """An error's first line, at most ``limit`` characters: what logs and notices may show.
    The rest can quote the job's input (a ValueError naming the value, a traceback's frames)."""
    line = text.strip().partition("\n")[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def preload(
    names: tuple[str, ...], announce: Callable[[str], None] | None = None
) -> tuple[dict[str, analyzers.Analyzer], dict[str, str]]:
    """Create and load ``names`` now, before any job: (loaded by name, failure by name).

    A failure is only reported (its type and first line): the job that needs the analyzer
    loads it again on first use and fails there, classified like any other failure, so a
    broken model never keeps the child from starting (no restart loop)."""
    loaded: dict[str, analyzers.Analyzer] = {}
    failed: dict[str, str] = {}
    for name in names:
        if announce is not None:
            announce(name)  # the supervisor's preload timeout runs per analyzer from here
        try:
            analyzer = analyzers.create(name)
            analyzer.load()
        except Exception as exc:  # noqa: BLE001 - reported to the supervisor, retried on use
            failed[name] = first_line(f"{type(exc).__name__}: {exc}")
            continue
        loaded[name] = analyzer
    return loaded, failed


def main(conn: Connection, stop_event: Event, preload_names: tuple[str, ...] = ()) -> None:
    # The supervisor decides about shutdown; a Ctrl-C in the terminal must not kill the child
    # mid-checkpoint. SIGTERM keeps its default so the supervisor can always stop us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The supervisor (health, visibility heartbeat, memory guard) must win the CPU whenever it
    # wakes, however hard the analysis spins; it uses little, so the analysis loses nothing.
    with contextlib.suppress(OSError):
        os.nice(CHILD_NICENESS)
    # Loaded before "ready": a model's load time never counts against a job's runtime limit.
    loaded, failed = preload(tuple(preload_names), lambda name: conn.send(("loading", name)))
    conn.send(("ready", os.getpid(), {"preloaded": sorted(loaded), "failed": failed}))
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message[0] == "shutdown":
            return
        _, job_data, restored = message
        job = Job(**job_data)
        try:
            analyzer = loaded.get(job.analyzer)
            if analyzer is None:
                analyzer = analyzers.create(job.analyzer)
                analyzer.load()
                loaded[job.analyzer] = analyzer
            output = analyzer.analyze(job, ChildContext(conn, stop_event, restored))
            try:
                encoded = json.dumps(output, separators=(",", ":"))
            except (TypeError, ValueError) as exc:
                raise PermanentError(f"analyzer output is not JSON: {exc}") from exc
            conn.send(("result", encoded))
        except BaseException as exc:  # noqa: BLE001 - every failure is reported, then we go on
            kind, permanent = classify(exc)
            detail = f"{type(exc).__name__}: {exc}"
            if kind == ErrorKind.ANALYZER_ERROR and not permanent:
                detail += "\n" + "".join(traceback.format_exception(exc)[-3:])
            try:
                conn.send(("error", str(kind), detail[:4000], permanent))
            except (BrokenPipeError, OSError):
                return
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                return
