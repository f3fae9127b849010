"""The EC2 spot interruption notice: ``spot/instance-action`` in IMDS."""

from __future__ import annotations

import json
import time

from aws_lambda_powertools import Logger

from gpu_worker.interruption.event import (
    SPOT_ACTIONS,
    Interruption,
    InterruptionAction,
    Source,
    parse_time,
)
from gpu_worker.interruption.imds import ImdsMonitor

logger = Logger(service="spotline-worker", child=True)

# AWS gives two minutes between the spot notice and the reclaim.
SPOT_NOTICE_S = 120.0


class SpotNoticeMonitor(ImdsMonitor):
    """``spot/instance-action``: 404 until AWS decides to reclaim, then
    ``{"action": "terminate"|"stop"|"hibernate", "time": "<when>"}`` (two minutes ahead)."""

    name = str(Source.IMDS_SPOT)
    path = "/latest/meta-data/spot/instance-action"

    def parse(self, body: bytes) -> Interruption:
        document = json.loads(body)
        if not isinstance(document, dict):
            raise ValueError("not a JSON object")
        action = InterruptionAction(
            str(document.get("action", "")).lower()
        )  # ValueError when unknown
        if action not in SPOT_ACTIONS:
            raise ValueError(f"not a spot action: {action}")
        now = time.time()
        deadline = parse_time(document.get("time"))
        if deadline is None:
            # A notice with an odd time is still a notice: assume the documented two minutes.
            logger.warning("spot notice without a usable time", extra={"at": document.get("time")})
            deadline = now + SPOT_NOTICE_S
        return Interruption(self.name, action, now, deadline, f"at {document.get('time')}")
