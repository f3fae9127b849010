"""Every way the worker learns it is about to lose its machine, as one stream of one event.

Shaped after aws-node-termination-handler's ``pkg/monitor``: each source is a small monitor in
its own module behind one interface (``event.Monitor``), and all of them feed one consumer,
``Worker.on_interruption``, through the watch:

    event.py      the ``Interruption`` event, its ``Source`` and ``InterruptionAction``, the
                  interface
    spot.py       IMDS ``spot/instance-action``: the two-minute spot notice
    rebalance.py  IMDS ``events/recommendations/rebalance``: at risk, not leaving yet
    termination_tag.py  IMDS ``tags/instance/spotline:terminates-at``: a warning EC2 sends
                  only to EventBridge (interruptible Capacity Reservations), passed on as a tag
    lifecycle.py  IMDS ``autoscaling/target-lifecycle-state``: the ASG termination hook, whose
                  event completes the lifecycle action after the job is released
    gcp.py        GCP metadata ``instance/preempted`` (optional)
    signals.py    SIGTERM/SIGINT, pushed by the worker's signal handler
    imds.py       the one IMDSv2 client all EC2 sources share (``WORKER_IMDS_ENDPOINT``)
    metadata.py   one metadata request, absence and garbage logged once
    watch.py      polls the monitors, delivers each (source, action) once, runs after-release
    sources.py    ``monitors_for(config)``: the one place sources are wired

To add a source: a class with ``name``, ``interval_s`` and ``check() -> Interruption | None``
(an IMDS path: subclass ``ImdsMonitor`` and write ``parse``), a ``Source`` name, and a line in
``monitors_for``. Give the event a ``deadline`` when the source knows when the machine goes
away (the worker fits its checkpoint grace inside it); ``InterruptionAction.REBALANCE`` only drains.
"""

from __future__ import annotations

from gpu_worker.interruption.event import (
    SPOT_ACTIONS,
    Interruption,
    InterruptionAction,
    Monitor,
    Source,
    parse_time,
)
from gpu_worker.interruption.gcp import GCP_NOTICE_S, GcpPreemptedMonitor
from gpu_worker.interruption.imds import ImdsClient, ImdsMonitor, TokenRefused
from gpu_worker.interruption.lifecycle import LifecycleAction, LifecycleMonitor
from gpu_worker.interruption.metadata import ABSENT_RETRY_S, METADATA_TIMEOUT_S
from gpu_worker.interruption.rebalance import RebalanceMonitor
from gpu_worker.interruption.signals import signal_interruption
from gpu_worker.interruption.sources import monitors_for
from gpu_worker.interruption.spot import SPOT_NOTICE_S, SpotNoticeMonitor
from gpu_worker.interruption.termination_tag import TerminationTagMonitor
from gpu_worker.interruption.watch import InterruptionWatch

__all__ = [
    "ABSENT_RETRY_S",
    "GCP_NOTICE_S",
    "METADATA_TIMEOUT_S",
    "SPOT_ACTIONS",
    "SPOT_NOTICE_S",
    "GcpPreemptedMonitor",
    "ImdsClient",
    "ImdsMonitor",
    "Interruption",
    "InterruptionAction",
    "InterruptionWatch",
    "LifecycleAction",
    "LifecycleMonitor",
    "Monitor",
    "RebalanceMonitor",
    "Source",
    "SpotNoticeMonitor",
    "TerminationTagMonitor",
    "TokenRefused",
    "monitors_for",
    "parse_time",
    "signal_interruption",
]
