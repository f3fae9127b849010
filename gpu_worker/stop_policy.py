"""How the worker reacts to an interruption: drain (take no new job) or stop within a grace.

``react`` is the rule; ``StopControl`` holds the switches it sets and receives every signal.

A rebalance recommendation only drains, unless configured to checkpoint or to keep taking jobs
(``keep``: the standby starts on the recommendation, and the worker serves until the notice
itself, which it then works through); anything else (a spot
notice, SIGTERM, GCP preemption, the ASG's termination hook) stops receiving and asks the
running analyzer to checkpoint within the grace, which the notice's deadline may shorten.

Working through a notice (``WORKER_WORK_THROUGH_NOTICE``, on by default): a notice that says
when the machine goes (the spot notice, the termination tag, GCP) leaves two minutes that a
worker which stops at once wastes while the standby boots. Instead the worker keeps taking jobs
whose runtime limit (the analyzer's declared limit or the request's ``max_runtime_s``, as the
attempt will enforce it) plus the checkpoint grace and the exit reserve fits before the
deadline (``Notice.fits``); a message that does not fit is given back unstarted at once, so it
never counts as an attempt. A job running when the notice comes goes on if its limit fits, else
it is checkpointed and released at once and the worker stops, as without this. At the cutoff
(the deadline less the grace and the reserve) whatever still runs is asked to checkpoint and
the worker stops: the grace is kept whatever was admitted. Notices without a deadline (SIGTERM,
the ASG hook) stop at once.
"""

from __future__ import annotations

import signal
import threading
import time
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
# A notice leaving less than this before its cutoff is not worked through: stop at once.
MIN_USEFUL_S = 1.0


@dataclass(frozen=True)
class Notice:
    """A notice with a deadline, worked through: what fits before its cutoff is still taken."""

    deadline: float  # epoch seconds: the machine goes away
    grace_s: float  # kept for the checkpoint of whatever still runs at the cutoff

    @property
    def cutoff(self) -> float:
        """When the worker stops taking jobs and asks the running one to checkpoint."""
        return self.deadline - self.grace_s - EXIT_RESERVE_S

    def fits(self, runtime_s: float, now: float | None = None) -> bool:
        """True when a job that may run ``runtime_s`` more seconds ends before the cutoff."""
        return (time.time() if now is None else now) + max(0.0, runtime_s) <= self.cutoff


@dataclass(frozen=True)
class Reaction:
    drain: bool  # only stop taking new jobs; the running one finishes
    grace_s: float = 0.0  # stop: the analyzer's time to checkpoint before it is killed
    notice: Notice | None = None  # work through it: take what fits until its cutoff
    keep: bool = False  # change nothing: a recommendation the worker is told to serve through


def react(
    event: Interruption,
    *,
    rebalance_action: str,
    checkpoint_grace_s: float,
    work_through: bool = False,
    now: float | None = None,
) -> Reaction:
    if event.advisory and rebalance_action == "drain":
        return Reaction(drain=True)
    if event.advisory and rebalance_action == "keep":
        return Reaction(drain=False, keep=True)
    grace_s = checkpoint_grace_s
    seconds_left = event.seconds_left(now)
    if seconds_left is not None:
        grace_s = max(0.0, min(grace_s, seconds_left - EXIT_RESERVE_S))
    notice = None
    if work_through and event.deadline is not None and not event.advisory:
        candidate = Notice(event.deadline, grace_s)
        # Worth it only while a job could still fit; else stop at once as without it.
        notice = candidate if candidate.fits(MIN_USEFUL_S, now) else None
    return Reaction(drain=False, grace_s=grace_s, notice=notice)


def remaining_runtime_s(runtime_s: float | None, limit_s: float | None) -> float | None:
    """How long the running job may still run (its limit less its runtime); None: no limit."""
    if limit_s is None:
        return None
    return max(0.0, limit_s - (runtime_s or 0.0))


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
        self.notice: Notice | None = None  # worked through: jobs that fit it are still taken
        self._cutoff_timer: threading.Timer | None = None
        # Where a first signal goes: the interruption watch (which calls ``on_interruption``).
        self.emit: Callable[[Interruption], None] = self.on_interruption
        self.receiving = False  # the main thread is in a long poll a signal may cut short
        self._wake_installed = False
        self._signals = 0

    def taking_jobs(self) -> bool:
        return not (self.stopping.is_set() or self.draining.is_set())

    def admits(self, runtime_s: float) -> bool:
        """May a job that may run ``runtime_s`` seconds start now? Always, unless a notice is
        being worked through and the job would not end before its cutoff."""
        notice = self.notice
        return notice is None or notice.fits(runtime_s)

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
            work_through=self.config.work_through_notice,
        )
        if reaction.drain:
            self.draining.set()
            self._wake_main_thread()
            return
        if reaction.keep:
            return  # served through: the notice, if it comes, is worked through
        if self.interruption is None:
            self.interruption = event
        if reaction.notice is not None and self._work_through(reaction.notice):
            return
        self.request_stop(event.describe(), grace_s=reaction.grace_s)
        self._wake_main_thread()

    def _work_through(self, notice: Notice) -> bool:
        """Keep going under ``notice`` if the running job (if any) fits it; False: stop now."""
        if self.stopping.is_set() or self.draining.is_set():
            return False  # a drained worker takes no job: nothing to work through
        running = self.supervisor.running()
        if running is not None:
            left_s = remaining_runtime_s(running.runtime_s, running.runtime_limit_s)
            if left_s is None or not notice.fits(left_s):
                return False  # the running job cannot finish in time: release it at once
        if self.notice is not None and self.notice.cutoff <= notice.cutoff:
            return True  # an earlier notice already ends sooner
        self.notice = notice
        if self._cutoff_timer is not None:
            self._cutoff_timer.cancel()
        # The cutoff holds whatever was admitted: whatever still runs then checkpoints.
        self._cutoff_timer = threading.Timer(
            max(0.0, notice.cutoff - time.time()), self._at_cutoff, args=(notice,)
        )
        self._cutoff_timer.daemon = True
        self._cutoff_timer.start()
        logger.warning(
            "working through the notice: taking only jobs that end before the cutoff",
            extra={
                "cutoff_in_s": round(notice.cutoff - time.time(), 1),
                "running_job": running.job_id if running is not None else None,
            },
        )
        return True

    def _at_cutoff(self, notice: Notice) -> None:
        grace_s = max(0.0, min(notice.grace_s, notice.deadline - time.time() - EXIT_RESERVE_S))
        self.request_stop("the notice's cutoff", grace_s=grace_s)
        self._wake_main_thread()

    def close(self) -> None:
        """The worker is leaving: a pending cutoff has nothing left to stop."""
        if self._cutoff_timer is not None:
            self._cutoff_timer.cancel()

    def request_stop(self, reason: str, grace_s: float | None = None) -> None:
        if not self.stopping.is_set():
            logger.info("stopping", extra={"reason": reason})
        self.stopping.set()
        self.supervisor.request_stop(self.config.checkpoint_grace_s if grace_s is None else grace_s)
