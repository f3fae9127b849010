"""What the spot-events function is invoked with: EC2's spot and state events, and the two
actions it sends itself (the scheduled stop, the periodic reconcile), parsed into values."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

STOP_ACTION = "stop-standby"
RECONCILE_ACTION = "reconcile"


class EventKind(enum.StrEnum):
    INTERRUPTION = "interruption"
    REBALANCE = "rebalance"
    FULFILLED = "fulfilled"
    RUNNING = "running"


# AWS gives two minutes between a spot warning and the reclaim; a spot warning says no time.
NOTICE = timedelta(minutes=2)

# An instance in an interruptible Capacity Reservation gets its own two-minute warning when the
# reservation's owner reclaims the capacity (EC2 user guide, "Monitor interruptible Capacity
# Reservations"). It is a spot warning in all but name. The guide's pages have spelt the
# detail-type both ways; both are accepted and both are in the template's rule.
CAPACITY_RESERVATION_WARNINGS = (
    "EC2 Capacity Reservation Instance Interruption Warning",
    "EC2 Interruptible Capacity Reservation Instance Interruption Warning",
)

DETAIL_TYPES = {
    "EC2 Spot Instance Interruption Warning": EventKind.INTERRUPTION,
    **{name: EventKind.INTERRUPTION for name in CAPACITY_RESERVATION_WARNINGS},
    "EC2 Instance Rebalance Recommendation": EventKind.REBALANCE,
    "EC2 Spot Instance Request Fulfillment": EventKind.FULFILLED,
    "EC2 Instance State-change Notification": EventKind.RUNNING,
}


class MalformedEvent(ValueError):
    """The event cannot be acted on; it is logged and dropped (a retry would not fix it)."""


# -- values -----------------------------------------------------------------------------------


def utc_moment() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class SpotEvent:
    kind: EventKind
    instance_id: str
    time: datetime
    detail_type: str
    # When the instance goes away: a reservation warning says (``instance-termination-time``),
    # a spot warning means two minutes after its time. None for other kinds.
    terminates_at: datetime | None = None

    @property
    def capacity_reservation(self) -> bool:
        return self.detail_type in CAPACITY_RESERVATION_WARNINGS


def _valid_instance_id(value: Any) -> bool:
    return (
        isinstance(value, str)
        and value.startswith("i-")
        and 3 <= len(value) <= 32
        and all(c in "0123456789abcdef" for c in value[2:])
    )


def parse_spot_event(detail_type: str, detail: Any, time_text: Any) -> SpotEvent | None:
    """The domain view of an EC2 event; None for a state change other than `running`.

    Raises MalformedEvent when the detail lacks what the action needs."""
    kind = DETAIL_TYPES.get(detail_type) if isinstance(detail_type, str) else None
    if kind is None:
        raise MalformedEvent(f"unsupported detail-type {str(detail_type)[:80]!r}")
    if not isinstance(detail, dict):
        raise MalformedEvent("detail is not an object")
    instance_id = detail.get("instance-id")
    if not _valid_instance_id(instance_id):
        raise MalformedEvent("detail.instance-id is missing or not an instance id")
    if kind is EventKind.RUNNING and detail.get("state") != "running":
        return None
    moment = parse_time(time_text)
    if moment is None:
        raise MalformedEvent("event time is missing or not ISO 8601")
    terminates_at = None
    if kind is EventKind.INTERRUPTION:
        # A warning with an odd termination time is still a warning: assume two minutes.
        terminates_at = parse_time(detail.get("instance-termination-time")) or moment + NOTICE
    return SpotEvent(kind, instance_id, moment, detail_type, terminates_at)
