"""How the worker reacts to an interruption: drain (take no new job) or stop within a grace.

A rebalance recommendation only drains, unless configured to checkpoint; anything else (a spot
notice, SIGTERM, GCP preemption, the ASG's termination hook) stops receiving and asks the
running analyzer to checkpoint within the grace, which the notice's deadline may shorten.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpu_worker.interruption import Interruption

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
