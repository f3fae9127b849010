"""The demo's drills: each one submits jobs, may inject faults while they run, and checks results.

A new drill is one module with a ``Drill`` subclass, added to ``DRILLS`` below.
"""

from __future__ import annotations

from devstack.drills.alarms import AlarmDrill
from devstack.drills.base import Check, Drill, Expectation
from devstack.drills.basic import BasicJobs
from devstack.drills.deadletter import DeadLetterDrill
from devstack.drills.escalation import LaneEscalation, OomEscalation
from devstack.drills.poison import PoisonJob
from devstack.drills.spot import HardCrash, SpotNotice
from devstack.drills.standby import StandbyDrill
from devstack.drills.text_embed import TextEmbedJobs

DRILLS: list[type[Drill]] = [
    BasicJobs,
    AlarmDrill,
    SpotNotice,
    HardCrash,
    DeadLetterDrill,
    StandbyDrill,
    PoisonJob,
    TextEmbedJobs,
    OomEscalation,
    LaneEscalation,
]

__all__ = ["DRILLS", "Check", "Drill", "Expectation"]
