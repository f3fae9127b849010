"""The one stream: every polled monitor on its own rhythm, on one thread, each new interruption
handed to one consumer (the worker); and, once the worker has let go of its job, each
delivered event's after-release step."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from aws_lambda_powertools import Logger

from gpu_worker.interruption.event import Interruption, Monitor

logger = Logger(service="spotline-worker", child=True)


class InterruptionWatch:
    """Polls every monitor on its own rhythm on one daemon thread and hands each new
    interruption to ``on_event``, the one consumer. ``emit`` is the entry for push sources."""

    def __init__(
        self, monitors: Iterable[Monitor], on_event: Callable[[Interruption], None]
    ) -> None:
        self.monitors = list(monitors)
        self._on_event = on_event
        self._delivered: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.events: list[Interruption] = []
        self._released = 0

    def emit(self, event: Interruption) -> bool:
        """Deliver ``event`` unless the same (source, action) was delivered before."""
        with self._lock:
            key = (event.source, str(event.action))
            if key in self._delivered:
                return False
            self._delivered.add(key)
            self.events.append(event)
        self._on_event(event)
        return True

    def check_all(self, now: float | None = None, due: dict[str, float] | None = None) -> None:
        """One round: check each monitor whose time has come (all of them when ``due`` is None)."""
        now = time.monotonic() if now is None else now
        for monitor in self.monitors:
            if due is not None and due.get(monitor.name, 0.0) > now:
                continue
            try:
                event = monitor.check()
            except Exception:  # a broken monitor must never stop the others
                logger.exception("interruption monitor failed", extra={"monitor": monitor.name})
                event = None
            if due is not None:
                due[monitor.name] = time.monotonic() + max(0.05, monitor.interval_s)
            if event is not None:
                self.emit(event)
        if due is not None:
            # The IMDS monitors share one availability: a single timed-out poll put the spot
            # monitor on the 60 s absent rhythm even when the rebalance poll right after found
            # IMDS answering again, blind to a notice for half its two minutes. Whoever is due
            # later than its interval now says is brought forward.
            soonest = time.monotonic()
            for monitor in self.monitors:
                if monitor.name in due:
                    due[monitor.name] = min(
                        due[monitor.name], soonest + max(0.05, monitor.interval_s)
                    )

    def after_release(self) -> None:
        """Run each delivered event's after-release step once, after the worker let go of its
        job (stopped, released, closed). A failing step is logged: the others still run."""
        with self._lock:
            events, self._released = self.events[self._released :], len(self.events)
        for event in events:
            if event.after_release is None:
                continue
            try:
                event.after_release()
            except Exception:  # the worker is stopping: log, never raise
                logger.exception(
                    "interruption after-release step failed", extra={"source": event.source}
                )

    def _loop(self) -> None:
        due: dict[str, float] = {}
        while not self._stop.is_set():
            self.check_all(due=due)
            next_due = min(due.values(), default=time.monotonic() + 1.0)
            self._stop.wait(max(0.01, next_due - time.monotonic()))

    def start(self) -> InterruptionWatch:
        if self.monitors and self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, name="interruption-watch", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
