"""Supervise the long-lived analysis child: dispatch a job, watch it on every tick, collect it.

The shape follows rq's worker: prepare -> spawn child -> monitor child. The monitor waits on the
pipe with a timeout and does its periodic duties on each tick (extend the message's visibility,
check the runtime limit, run the watchers such as the memory guard). If the child dies, the
supervisor records why and starts a fresh one for the next job; it never dies of a job itself.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from typing import Any

import psutil
from aws_lambda_powertools import Logger

from gpu_worker import child, memory
from gpu_worker.analyzers import Job
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


def _stopped(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_STOPPED)
    except psutil.Error:
        return False


class ChildStartError(RuntimeError):
    pass


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "analysis child vanished"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"analysis child killed by {name}"
    return f"analysis child exited with code {exitcode}"


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
        self._context = multiprocessing.get_context("spawn")
        # Analyzers a new child loads before it says ready (WORKER_PRELOAD); dropped for good
        # if a preloading child fails to come up in ``preload_timeout_s``.
        self.preload = tuple(preload)
        self._preload_timeout_s = preload_timeout_s
        self.preloaded: tuple[str, ...] = ()
        self._on_checkpoint = on_checkpoint
        self._on_artifact = on_artifact
        self._tick_s = tick_s
        self._start_timeout_s = start_timeout_s
        self.watchers: list[Watcher] = list(watchers or [])
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._stop_event = self._context.Event()
        self._stopping = False
        self._kill_at: float | None = None  # monotonic time: an ignored stop request ends here
        self.restarts = 0
        self.progress: Mapping[str, Any] = {}  # replaced whole, never changed in place
        self.current_job: Job | None = None
        self.job_started_at: float | None = None
        self.job_limit_s: float | None = None  # the running job's runtime limit
        self.last_checkpoint_error: str | None = None

    # -- child lifecycle ---------------------------------------------------------------------

    @property
    def child_pid(self) -> int | None:
        return self._process.pid if self._process is not None and self._process.is_alive() else None

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
        if self._process is not None and self._process.is_alive():
            return
        if self._process is not None:
            self.restarts += 1  # died after its last job answered (e.g. killed while idle)
        self._discard_child()
        if self.preload:
            try:
                self._start_child(self.preload, self._preload_timeout_s, on_tick)
                return
            except ChildStartError as exc:
                # A load that hangs or kills the child must not stop the worker from working
                # (nor restart it in a loop): from now on analyzers load on first use. (On a
                # stop request the worker is leaving anyway.)
                logger.error(
                    "analysis child did not preload; analyzers load on first use from now on",
                    extra={"preload": list(self.preload), "error": str(exc)},
                )
                self.preload = ()
        self._start_child((), self._start_timeout_s, on_tick)

    def _start_child(
        self, preload: tuple[str, ...], timeout_s: float, on_tick: Callable[[], None] | None
    ) -> None:
        parent_conn, child_conn = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=child.main,
            args=(child_conn, self._stop_event, preload),
            name="analysis",
            daemon=True,
        )
        process.start()
        child_conn.close()
        deadline = time.monotonic() + timeout_s
        hello: Any = None
        try:
            while not parent_conn.poll(min(self._tick_s, max(0.0, deadline - time.monotonic()))):
                if time.monotonic() >= deadline:
                    raise ChildStartError(f"analysis child did not start in {timeout_s:g}s")
                if not process.is_alive():
                    raise ChildStartError(describe_exit(process.exitcode) + " while starting")
                if process.pid is not None and _stopped(process.pid):
                    # SIGSTOPped (T state): it will never say ready; do not wait the timeout.
                    raise ChildStartError("analysis child stopped while starting")
                if preload and self._stopping:
                    # A spot notice leaves two minutes: the job waiting for this child is
                    # released now, not after a model load that may take longer.
                    raise ChildStartError("stop requested while the child preloaded")
                if on_tick is not None:
                    on_tick()
            try:
                hello = parent_conn.recv()  # ("ready", pid, {"preloaded": [...], ...})
            except (EOFError, OSError):
                process.join(timeout=5)
                raise ChildStartError(describe_exit(process.exitcode) + " while starting") from None
        except ChildStartError:
            parent_conn.close()
            if process.is_alive() and process.pid is not None:
                memory.kill_tree(process.pid)
            process.join(timeout=10)
            raise
        report = hello[2] if isinstance(hello, tuple) and len(hello) > 2 else {}
        self.preloaded = tuple(report.get("preloaded", ()))
        if preload:
            logger.info("analyzers preloaded", extra={"preloaded": list(self.preloaded)})
        if report.get("failed"):
            logger.warning(
                "analyzers failed to preload; they load again on first use",
                extra={"failed": report["failed"]},
            )
        self._process, self._conn = process, parent_conn

    def _discard_child(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._process is not None:
            if self._process.is_alive() and self._process.pid is not None:
                memory.kill_tree(self._process.pid)  # its own children too (cpu_burn, loaders)
            self._process.join(timeout=10)
        self._process, self._conn = None, None

    def kill_child(self) -> None:
        self._discard_child()
        self.restarts += 1

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
        if self._conn is not None and self._process is not None and self._process.is_alive():
            with contextlib.suppress(BrokenPipeError, OSError):
                self._conn.send(("shutdown",))
            self._process.join(timeout=timeout_s)
        self._discard_child()

    # -- one job -------------------------------------------------------------------------------

    def run(
        self,
        job: Job,
        restored: Any | None,
        *,
        max_runtime_s: float | None,
        on_tick: Callable[[], JobError | None],
    ) -> AttemptOutcome:
        """Run one job in the child. ``on_tick`` does the periodic duties (visibility, lease);
        a JobError from it means the job is no longer ours: the child is stopped at once."""
        self.ensure_child(on_tick)
        assert self._conn is not None and self._process is not None
        if not self._stopping:
            self._stop_event.clear()
        started = time.monotonic()
        self.progress = {}  # first: health never shows one job with another's progress
        self.current_job, self.job_started_at = job, started
        self.job_limit_s = max_runtime_s
        checkpoints = 0
        checkpoint_failures = 0
        pid = self._process.pid
        try:
            self._conn.send(("run", asdict(job), restored))
            self._watchers_call("start", pid)
            while True:
                try:
                    ready = self._conn.poll(self._tick_s)
                    message = self._conn.recv() if ready else None
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
                        self._store_artifact(job.job_id, message)
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
                elif ready or not self._process.is_alive():
                    # The pipe closed or the child is gone without a word: it died. A watcher
                    # that killed it (the memory guard) knows why; otherwise it is UNKNOWN.
                    self._process.join(timeout=5)
                    exitcode = self._process.exitcode
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

    def _store_artifact(self, job_id: str, message: tuple[Any, ...]) -> None:
        """Store first, answer after: the analyzer cites the URI only once it is durable."""
        assert self._conn is not None
        _, name, data, content_type = message
        try:
            if self._on_artifact is None:
                raise RuntimeError("this worker stores no artifacts")
            reply = ("artifact_stored", self._on_artifact(job_id, name, data, content_type))
        except Exception as exc:  # noqa: BLE001 - the analyzer's job fails (retryable), not us
            reply = ("artifact_failed", f"{type(exc).__name__}: {exc}")
        with contextlib.suppress(BrokenPipeError, OSError):
            self._conn.send(reply)
