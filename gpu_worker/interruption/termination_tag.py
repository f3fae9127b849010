"""A warning that reaches only EventBridge, passed on as an instance tag and read from IMDS.

EC2 warns an instance in an interruptible Capacity Reservation two minutes before it reclaims
it, but only on EventBridge ("EC2 Capacity Reservation Instance Interruption Warning"): IMDS
has no path for it (``spot/instance-action`` is for spot instances; the documented categories
have no reservation one). The spot-events function writes the warning's termination time as
the tag ``spotline:terminates-at`` on the worker's instance; with ``InstanceMetadataTags``
enabled IMDS serves it, and this monitor turns it into the same event as a spot notice.
"""

from __future__ import annotations

import time

from gpu_worker.interruption.event import Interruption, InterruptionAction, Source, parse_time
from gpu_worker.interruption.imds import ImdsMonitor
from spotline.instance_tags import TERMINATES_AT_TAG

# A tag older than this (an instance stopped and started again since) is history, not a notice.
STALE_AFTER_S = 600.0


class TerminationTagMonitor(ImdsMonitor):
    """``tags/instance/spotline:terminates-at``: 404 until the spot-events function tags the
    instance (and whenever tags are not in the metadata), then the termination time."""

    name = str(Source.IMDS_TERMINATION_TAG)
    path = f"/latest/meta-data/tags/instance/{TERMINATES_AT_TAG}"

    def parse(self, body: bytes) -> Interruption | None:
        text = body.decode("utf-8").strip()
        deadline = parse_time(text)
        if deadline is None:
            raise ValueError("not an ISO 8601 time")
        now = time.time()
        if deadline < now - STALE_AFTER_S:
            return None
        return Interruption(self.name, InterruptionAction.TERMINATE, now, deadline, f"at {text}")
