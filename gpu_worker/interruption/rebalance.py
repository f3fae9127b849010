"""The EC2 rebalance recommendation: ``events/recommendations/rebalance`` in IMDS."""

from __future__ import annotations

import json
import time

from gpu_worker.interruption.event import Interruption, InterruptionAction, Source, parse_time
from gpu_worker.interruption.imds import ImdsMonitor


class RebalanceMonitor(ImdsMonitor):
    """``events/recommendations/rebalance``: ``{"noticeTime": ...}`` once the instance is at
    elevated risk of interruption (often minutes before a spot notice, sometimes never)."""

    name = str(Source.IMDS_REBALANCE)
    path = "/latest/meta-data/events/recommendations/rebalance"

    def parse(self, body: bytes) -> Interruption:
        document = json.loads(body)
        notice_time = document.get("noticeTime") if isinstance(document, dict) else None
        if not isinstance(notice_time, str) or parse_time(notice_time) is None:
            raise ValueError("no usable noticeTime")
        return Interruption(
            self.name, InterruptionAction.REBALANCE, time.time(), None, f"since {notice_time}"
        )
