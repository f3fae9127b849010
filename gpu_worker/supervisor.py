"""Supervise the long-lived analysis child: dispatch a job, watch it on every tick, collect it.

The shape follows rq's worker: prepare -> spawn child -> monitor child. The monitor waits on the
pipe with a timeout and does its periodic duties on each tick (extend the message's visibility,
check the runtime limit, run the watchers such as the memory guard). If the child dies, the
supervisor records why and starts a fresh one for the next job; it never dies of a job itself.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from typing import Any

from aws_lambda_powertools import Logger

from gpu_worker.analyzers import Job
from gpu_worker.child_process import AnalysisChild, describe_exit
from spotline.contract import ErrorKind
from spotline.jobstore import JobError

logger = Logger(service="spotline-worker", child=True)

# A watcher looks at the running child (by pid) on each tick; returning an error kills it.
# It may also have ``start(pid)`` / ``stop()``, called when a job begins and ends (the memory
# guard samples on a thread of its own between ticks, and may kill the child itself).
Watcher = Callable[[int], JobError | None]
# Stores an analyzer's binary output: (job_id, name, data, content_type) -> its URI.
ArtifactSink = Callable[[str, str, bytes, str], str]
# An analyzer's ``ctx.progress(...)`` is shown in health as it came, within these bounds: it is
# the analyzer's to word, and health must stay small however much it sends.
PROGRESS_MAX_KEYS = 20
PROGRESS_MAX_CHARS = 200


@dataclass(frozen=True)
class AttemptOutcome:
    succeeded: bool
    output_json: str | None = None
    error: JobError | None = None
    permanent: bool = False
    duration_s: float = 0.0
    checkpoints: int = 0
    # The job is no longer ours (our lease ran out and another holder took it over): the child
    # was stopped and nothing of this attempt may be recorded.
    abandoned: bool = False
    checkpoint_failures: int = 0


@dataclass(frozen=True)
class RunningJob:
    """The job in the child now, as health shows it."""

    job_id: str
    analyzer: str
    attempt: int
    runtime_s: float | None
    runtime_limit_s: float | None
    progress: Mapping[str, Any]  # the analyzer's latest ctx.progress(...), bounded


def bounded_progress(fields: Any) -> dict[str, str | int | float | bool | None]:
    """At most ``PROGRESS_MAX_KEYS`` fields with scalar values, strings cut; the rest dropped."""
    if not isinstance(fields, Mapping):
        return {}
    kept: dict[str, str | int | float | bool | None] = {}
    for key, value in fields.items():
        if len(kept) >= PROGRESS_MAX_KEYS:
            break
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)  # JSON has no NaN or infinity
        if isinstance(value, str):
            value = value[:PROGRESS_MAX_CHARS]
        elif not (value is None or isinstance(value, bool | int | float)):
            continue
        kept[str(key)[:PROGRESS_MAX_CHARS]] = value
    return kept


class Supervisor:
    def __init__(
        self,
        *,
        on_checkpoint: Callable[[str, Any], None],
        tick_s: float = 0.5,
        start_timeout_s: float = 120.0,
        watchers: list[Watcher] | None = None,
        on_artifact: ArtifactSink | None = None,
        preload: tuple[str, ...] = (),
        preload_timeout_s: float = 300.0,
    ) -> None:
        self._child = AnalysisChild(
            tick_s=tick_s,
            start_timeout_s=start_timeout_s,
            preload=preload,
            preload_timeout_s=preload_timeout_s,
        )
        self._stop_event = self._child.stop_event
        self._on_checkpoint = on_checkpoint
        self._on_artifact = on_artifact
        self._tick_s = tick_s
        self.watchers: list[Watcher] = list(watchers or [])
        self._stopping = False
        self._kill_at: float | None = None  # monotonic time: an ignored stop request ends here
        self.progress: Mapping[str, Any] = {}  # replaced whole, never changed in place
        self.current_job: Job | None = None
        self.job_started_at: float | None = None
        self.job_limit_s: float | None = None  # the running job's runtime limit
        self.last_checkpoint_error: str | None = None

    # -- the child (gpu_worker/child_process.py) -----------------------------------------------

    @property
    def child_pid(self) -> int | None:
        return self._child.pid

    @property
    def restarts(self) -> int:
        return self._child.restarts

    @property
    def preload(self) -> tuple[str, ...]:
        return self._child.preload

    @property
    def preloaded(self) -> tuple[str, ...]:
        return self._child.preloaded

    @property
    def preload_error(self) -> str | None:
        """Why the preload was given up (a load that hung or killed the child), if it was."""
        return self._child.preload_error

    @property
    def kill_deadline(self) -> float | None:
        """Monotonic time at which a stop request the analyzer ignores kills it, or None."""
        return self._kill_at

    def running(self) -> RunningJob | None:
        """The job in hand, or None; read from the health thread, so each field once."""
        job, started, limit_s = self.current_job, self.job_started_at, self.job_limit_s
        progress = self.progress
        if job is None:
            return None
        runtime_s = time.monotonic() - started if started is not None else None
        return RunningJob(job.job_id, job.analyzer, job.attempt, runtime_s, limit_s, progress)

    def ensure_child(self, on_tick: Callable[[], None] | None = None) -> None:
        """A live child, started now if there is none. ``on_tick`` runs while a new child
        starts (it may be loading a model): a job waiting for it keeps its message's
        visibility, and the wait is not the job's runtime."""
        self._child.ensure(on_tick, stopping=lambda: self._stopping)

    def kill_child(self) -> None:
        self._child.kill()

    def request_stop(self, grace_s: float | None = None) -> None:
        """Ask the running analyzer to checkpoint and stop (``ctx.should_stop()`` turns true).

        With ``grace_s``, an analyzer still running that much later is killed and the job
        reported INTERRUPTED (it resumes from its last checkpoint). Safe from any thread.
        """
        self._stopping = True
        self._stop_event.set()
        if grace_s is not None:
            kill_at = time.monotonic() + max(0.0, grace_s)
            if self._kill_at is None or kill_at < self._kill_at:
                self._kill_at = kill_at

    def close(self, timeout_s: float = 5.0) -> None:
        self._child.close(timeout_s)

    # -- one job -------------------------------------------------------------------------------

    def run(
        self,
        job: Job,
        restored: Any | None,
        *,
        max_runtime_s: float | None,
        on_tick: Callable[[], JobError | None],
        on_start: Callable[[], None] | None = None,
    ) -> AttemptOutcome:
        """Run one job in the child (``on_start`` once it is sent). ``on_tick`` does the periodic
        duties (visibility, lease); a JobError from it means the job is no longer ours."""
        self.ensure_child(on_tick)
        conn, process = self._child.conn, self._child.process
        assert conn is not None and process is not None
        if not self._stopping:
            self._stop_event.clear()
        started = time.monotonic()
        self.progress = {}  # first: health never shows one job with another's progress
        self.current_job, self.job_started_at = job, started
        self.job_limit_s = max_runtime_s
        checkpoints = 0
        checkpoint_failures = 0
        pid = process.pid
        try:
            conn.send(("run", asdict(job), restored))
            if on_start is not None:
                on_start()
            self._watchers_call("start", pid)
            while True:
                try:
                    ready = conn.poll(self._tick_s)
                    message = conn.recv() if ready else None
                except (EOFError, OSError):
                    message = None
                    ready = True
                elapsed = time.monotonic() - started
                if message is not None:
                    kind = message[0]
                    if kind == "checkpoint":
                        refused = self._save_checkpoint(job.job_id, message[1])
                        if refused is not None:
                            # The analyzer handed over a state no store can hold: its bug,
                            # and retrying cannot fix it.
                            self.kill_child()
                            return AttemptOutcome(
                                False,
                                error=refused,
                                permanent=True,
                                duration_s=elapsed,
                                checkpoints=checkpoints,
                            )
                        if self.last_checkpoint_error is None:
                            checkpoints += 1
                        else:
                            checkpoint_failures += 1
                    elif kind == "progress":
                        self.progress = bounded_progress(message[1])
                    elif kind == "artifact":
                        store_artifact(conn, self._on_artifact, job.job_id, message)
                    elif kind == "result":
                        return AttemptOutcome(
                            True,
                            output_json=message[1],
                            duration_s=elapsed,
                            checkpoints=checkpoints,
                            checkpoint_failures=checkpoint_failures,
                        )
                    elif kind == "error":
                        _, error_kind, text, permanent = message
                        return AttemptOutcome(
                            False,
                            error=JobError(ErrorKind(error_kind), text),
                            permanent=bool(permanent),
                            duration_s=elapsed,
                            checkpoints=checkpoints,
                        )
                elif ready or not process.is_alive():
                    # The pipe closed or the child is gone without a word: it died. A watcher
                    # that killed it (the memory guard) knows why; otherwise it is UNKNOWN.
                    process.join(timeout=5)
                    exitcode = process.exitcode
                    verdict = self._watcher_verdict(pid)
                    self.kill_child()
                    return AttemptOutcome(
                        False,
                        error=verdict or JobError(ErrorKind.UNKNOWN, describe_exit(exitcode)),
                        duration_s=elapsed,
                        checkpoints=checkpoints,
                    )
                if max_runtime_s is not None and elapsed > max_runtime_s:
                    self.kill_child()
                    return AttemptOutcome(
                        False,
                        error=JobError(
                            ErrorKind.TIMEOUT,
                            f"job ran longer than max_runtime_s={max_runtime_s:g}",
                        ),
                        duration_s=elapsed,
                        checkpoints=checkpoints,
                    )
                if self._kill_at is not None and time.monotonic() >= self._kill_at:
                    # The analyzer ignored should_stop() past its grace: the notice's deadline
                    # wins. Its last checkpoint is what the next holder resumes from.
                    self.kill_child()
                    return AttemptOutcome(
                        False,
                        error=JobError(
                            ErrorKind.INTERRUPTED,
                            "analyzer did not stop within the checkpoint grace; killed",
                        ),
                        duration_s=elapsed,
                        checkpoints=checkpoints,
                    )
                verdict = self._watcher_verdict(pid)
                if verdict is not None:
                    self.kill_child()
                    return AttemptOutcome(
                        False, error=verdict, duration_s=elapsed, checkpoints=checkpoints
                    )
                lost = on_tick()  # throttles itself: it may be called far more often than needed
                if lost is not None:
                    self.kill_child()
                    return AttemptOutcome(
                        False,
                        error=lost,
                        duration_s=elapsed,
                        checkpoints=checkpoints,
                        abandoned=True,
                    )
        finally:
            self._watchers_call("stop")
            self.current_job, self.job_started_at, self.job_limit_s = None, None, None

    def _save_checkpoint(self, job_id: str, state: Any) -> JobError | None:
        """Store a checkpoint; a store that fails (disk full, S3 down) costs this checkpoint,
        not the job, which goes on (``last_checkpoint_error`` says why). Returns an error only
        for a state that cannot be stored at all (not JSON, not bytes)."""
        try:
            self._on_checkpoint(job_id, state)
        except (TypeError, ValueError, RecursionError) as exc:
            return JobError(
                ErrorKind.ANALYZER_ERROR,
                f"checkpoint state cannot be stored (JSON or bytes only): {type(exc).__name__}: "
                f"{str(exc)[:200]}",
            )
        except Exception as exc:  # noqa: BLE001 - a failing store must never end the worker
            self.last_checkpoint_error = f"{type(exc).__name__}: {str(exc)[:200]}"
            logger.warning(
                "checkpoint not stored; the job goes on",
                extra={"job_id": job_id, "error": self.last_checkpoint_error},
            )
            return None
        self.last_checkpoint_error = None
        return None

    def _watcher_verdict(self, pid: int | None) -> JobError | None:
        for watcher in self.watchers:
            verdict = watcher(pid) if pid is not None else None
            if verdict is not None:
                return verdict
        return None

    def _watchers_call(self, hook: str, *args: Any) -> None:
        for watcher in self.watchers:
            method = getattr(watcher, hook, None)
            if callable(method):
                method(*args)


def store_artifact(
    conn: Connection, sink: ArtifactSink | None, job_id: str, message: tuple[Any, ...]
) -> None:
    """Store first, answer after: the analyzer cites the URI only once it is durable."""
    _, name, data, content_type = message
    try:
        if sink is None:
            raise RuntimeError("this worker stores no artifacts")
        reply = ("artifact_stored", sink(job_id, name, data, content_type))
    except Exception as exc:  # noqa: BLE001 - the analyzer's job fails (retryable), not us
        reply = ("artifact_failed", f"{type(exc).__name__}: {exc}")
    with contextlib.suppress(BrokenPipeError, OSError):
        conn.send(reply)
