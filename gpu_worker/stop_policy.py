"""How the worker reacts to an interruption: drain (take no new job) or stop within a grace.

``react`` is the rule; ``StopControl`` holds the switches it sets and receives every signal.

A rebalance recommendation only drains, unless configured to checkpoint; anything else (a spot
notice, SIGTERM, GCP preemption, the ASG's termination hook) stops receiving and asks the
running analyzer to checkpoint within the grace, which the notice's deadline may shorten.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from aws_lambda_powertools import Logger

from gpu_worker.config import WorkerConfig
from gpu_worker.interruption import Interruption, signal_interruption
from gpu_worker.supervisor import Supervisor

logger = Logger(service="spotline-worker", child=True)

# Time kept back from a notice's deadline for releasing the job and exiting after the grace.
EXIT_RESERVE_S = 5.0


@dataclass(frozen=True)
class Reaction:
    drain: bool  # only stop taking new jobs; the running one finishes
    grace_s: float = 0.0  # stop: the analyzer's time to checkpoint before it is killed


def react(event: Interruption, *, rebalance_action: str, checkpoint_grace_s: float) -> Reaction:
    if event.advisory and rebalance_action == "drain":
        return Reaction(drain=True)
    grace_s = checkpoint_grace_s
    seconds_left = event.seconds_left()
    if seconds_left is not None:
        grace_s = max(0.0, min(grace_s, seconds_left - EXIT_RESERVE_S))
    return Reaction(drain=False, grace_s=grace_s)


# Sent by the interruption watch to the main thread to cut an idle long poll short.
WAKE_SIGNAL = signal.SIGUSR1


class ShutdownRequested(BaseException):
    """Raised by the signal handler to cut an idle long poll short (BaseException: botocore
    must not treat it as a retryable connection error)."""


class StopControl:
    """The worker's stop and drain switches, and the one consumer of every interruption.

    Signals and interruption sources land here (on the watch thread, or in a signal handler);
    ``react`` says drain or stop, and a stop asks the supervisor's analyzer to checkpoint within
    the grace. The main thread's idle long poll is cut short so a stop never waits for it.
    """

    def __init__(self, config: WorkerConfig, supervisor: Supervisor) -> None:
        self.config = config
        self.supervisor = supervisor
        self.stopping = threading.Event()
        self.draining = threading.Event()  # take no new job (rebalance recommendation)
        self.interruption: Interruption | None = None
        # Where a first signal goes: the interruption watch (which calls ``on_interruption``).
        self.emit: Callable[[Interruption], None] = self.on_interruption
        self.receiving = False  # the main thread is in a long poll a signal may cut short
        self._wake_installed = False
        self._signals = 0

    def taking_jobs(self) -> bool:
        return not (self.stopping.is_set() or self.draining.is_set())

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        signal.signal(WAKE_SIGNAL, self._on_wake)
        self._wake_installed = True

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        self._signals += 1
        if self._signals > 1:
            # rq's rule: the second signal means now. The job is released as interrupted.
            logger.warning("second signal: stopping the analysis at once", extra={"signal": name})
            self.supervisor.request_stop(grace_s=0)
        else:
            self.emit(signal_interruption(name))
        if self.receiving:
            raise ShutdownRequested

    def _on_wake(self, signum: int, frame: FrameType | None) -> None:
        if self.receiving and not self.taking_jobs():
            raise ShutdownRequested

    def _wake_main_thread(self) -> None:
        """Cut the main thread's idle long poll short (it may wait up to 20 s otherwise)."""
        main = threading.main_thread()
        if self._wake_installed and self.receiving and threading.current_thread() is not main:
            assert main.ident is not None
            signal.pthread_kill(main.ident, WAKE_SIGNAL)

    def on_interruption(self, event: Interruption) -> None:
        seconds_left = event.seconds_left()
        logger.warning(
            "interruption",
            extra={
                "source": event.source,
                "action": str(event.action),
                "detail": event.detail,
                "seconds_left": round(seconds_left, 1) if seconds_left is not None else None,
            },
        )
        reaction = react(
            event,
            rebalance_action=self.config.rebalance_action,
            checkpoint_grace_s=self.config.checkpoint_grace_s,
        )
        if reaction.drain:
            self.draining.set()
            self._wake_main_thread()
            return
        if self.interruption is None:
            self.interruption = event
        self.request_stop(event.describe(), grace_s=reaction.grace_s)
        self._wake_main_thread()

    def request_stop(self, reason: str, grace_s: float | None = None) -> None:
        if not self.stopping.is_set():
            logger.info("stopping", extra={"reason": reason})
        self.stopping.set()
        self.supervisor.request_stop(self.config.checkpoint_grace_s if grace_s is None else grace_s)
