"""The long-lived analysis child as a process: spawn it, wait for its hello, replace it.

The supervisor (gpu_worker/supervisor.py) talks to the child about jobs; this module only keeps
one child alive. A child is started with the spawn method (no inherited locks or CUDA state), says
``("ready", pid, report)`` once it has loaded the analyzers it was asked to preload, and is killed
with its whole process tree when it is replaced. A child that hangs, dies or is stopped while it
starts raises ``ChildStartError``: the machine's fault, never the job's (gpu_worker/faults.py).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any

import psutil
from aws_lambda_powertools import Logger

from gpu_worker import child, memory

logger = Logger(service="spotline-worker", child=True)


class ChildStartError(RuntimeError):
    """The analysis child did not come up (timeout, died, stopped, or a stop was requested)."""


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


def _stopped(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_STOPPED)
    except psutil.Error:
        return False


class AnalysisChild:
    """One analysis child at a time: ``ensure`` starts it when there is none."""

    def __init__(
        self,
        *,
        tick_s: float,
        start_timeout_s: float,
        preload: tuple[str, ...],
        preload_timeout_s: float,
    ) -> None:
        self._context = multiprocessing.get_context("spawn")
        self.stop_event: Event = self._context.Event()
        self._tick_s = tick_s
        self._start_timeout_s = start_timeout_s
        # Analyzers a new child loads before it says ready (WORKER_PRELOAD); dropped for good
        # if a preloading child fails to come up in ``preload_timeout_s``.
        self.preload = tuple(preload)
        self._preload_timeout_s = preload_timeout_s
        self.preloaded: tuple[str, ...] = ()
        self.process: multiprocessing.process.BaseProcess | None = None
        self.conn: Connection | None = None
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        alive = self.process is not None and self.process.is_alive()
        return self.process.pid if alive and self.process is not None else None

    def ensure(self, on_tick: Callable[[], Any] | None, stopping: Callable[[], bool]) -> None:
        """A live child, started now if there is none (see ``Supervisor.ensure_child``)."""
        if self.process is not None and self.process.is_alive():
            return
        if self.process is not None:
            self.restarts += 1  # died after its last job answered (e.g. killed while idle)
        self.discard()
        if self.preload:
            try:
                self._start(self.preload, self._preload_timeout_s, on_tick, stopping)
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
        self._start((), self._start_timeout_s, on_tick, stopping)

    def _start(
        self,
        preload: tuple[str, ...],
        timeout_s: float,
        on_tick: Callable[[], Any] | None,
        stopping: Callable[[], bool],
    ) -> None:
        parent_conn, child_conn = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=child.main,
            args=(child_conn, self.stop_event, preload),
            name="analysis",
            daemon=True,
        )
        process.start()
        child_conn.close()
        # The preload timeout is per analyzer: each ("loading", name) starts it again.
        deadline = time.monotonic() + timeout_s
        hello: Any = None
        loading: str | None = None
        try:
            while True:
                if parent_conn.poll(min(self._tick_s, max(0.0, deadline - time.monotonic()))):
                    try:
                        hello = parent_conn.recv()
                    except (EOFError, OSError):
                        process.join(timeout=5)
                        raise ChildStartError(
                            describe_exit(process.exitcode) + " while starting"
                        ) from None
                    if isinstance(hello, tuple) and hello[:1] == ("loading",):
                        loading, deadline = str(hello[1]), time.monotonic() + timeout_s
                        continue
                    break  # ("ready", pid, report)
                if time.monotonic() >= deadline:
                    what = f"load analyzer {loading!r}" if loading else "start"
                    raise ChildStartError(f"analysis child did not {what} in {timeout_s:g}s")
                if not process.is_alive():
                    raise ChildStartError(describe_exit(process.exitcode) + " while starting")
                if process.pid is not None and _stopped(process.pid):
                    # SIGSTOPped (T state): it will never say ready; do not wait the timeout.
                    raise ChildStartError("analysis child stopped while starting")
                if preload and stopping():
                    # A spot notice leaves two minutes: the job waiting for this child is
                    # released now, not after a model load that may take longer.
                    raise ChildStartError("stop requested while the child preloaded")
                if on_tick is not None:
                    on_tick()
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
        self.process, self.conn = process, parent_conn

    def discard(self) -> None:
        if self.conn is not None:
            self.conn.close()
        if self.process is not None:
            if self.process.is_alive() and self.process.pid is not None:
                memory.kill_tree(self.process.pid)  # its own children too (cpu_burn, loaders)
            self.process.join(timeout=10)
        self.process, self.conn = None, None

    def kill(self) -> None:
        self.discard()
        self.restarts += 1

    def close(self, timeout_s: float = 5.0) -> None:
        if self.conn is not None and self.process is not None and self.process.is_alive():
            with contextlib.suppress(BrokenPipeError, OSError):
                self.conn.send(("shutdown",))
            self.process.join(timeout=timeout_s)
        self.discard()
