"""SIGTERM/SIGINT: a push source. The worker's signal handler turns the signal into an event
with ``signal_interruption`` and hands it to ``InterruptionWatch.emit``; nothing is polled."""

from __future__ import annotations

import time

from gpu_worker.interruption.event import Interruption, InterruptionAction, Source


def signal_interruption(signal_name: str) -> Interruption:
    return Interruption(
        str(Source.SIGNAL), InterruptionAction.SHUTDOWN, time.time(), None, signal_name
    )
