"""GCP preemption: the metadata server's ``instance/preempted`` flag (optional)."""

from __future__ import annotations

import time

from gpu_worker.interruption.event import Interruption, InterruptionAction, Source
from gpu_worker.interruption.metadata import METADATA_TIMEOUT_S, Availability, Complaints, request

# GCP gives thirty seconds between the preemption and the stop.
GCP_NOTICE_S = 30.0


class GcpPreemptedMonitor:
    """GCP metadata ``instance/preempted``: ``TRUE`` once the VM is being preempted (30 s)."""

    name = str(Source.GCP_PREEMPTED)
    path = "/computeMetadata/v1/instance/preempted"

    def __init__(
        self, endpoint: str, *, poll_s: float, timeout_s: float = METADATA_TIMEOUT_S
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.availability = Availability(self.name)
        self.complain = Complaints()

    @property
    def interval_s(self) -> float:
        return self.availability.interval_s(self.poll_s)

    def check(self) -> Interruption | None:
        try:
            response = request(
                f"{self.endpoint}{self.path}",
                headers={"Metadata-Flavor": "Google"},
                timeout_s=self.timeout_s,
            )
        except OSError as exc:
            self.availability.lost(f"{type(exc).__name__}: {exc}")
            return None
        self.availability.found()
        answer = response.body.decode("utf-8", errors="replace").strip().upper()
        if response.status == 200 and answer == "TRUE":
            now = time.time()
            return Interruption(
                self.name, InterruptionAction.TERMINATE, now, now + GCP_NOTICE_S, "preempted"
            )
        if response.status != 200 or answer != "FALSE":
            self.complain(self.name, self.path, response.status, response.body)
        return None
