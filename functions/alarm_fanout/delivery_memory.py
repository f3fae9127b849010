"""What was delivered, remembered: a channel that took a transition never gets it again (the
delivery ledger), and an alarm that toggles too often is summarised, never hidden (flap
tracking)."""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from alarm_fanout.alarm_shapes import AlarmNotice, AlarmState
from spotline.once import OnceLedger, is_conditional_failure

# -- delivery memory -------------------------------------------------------------------------


class Claim(enum.StrEnum):
    CLAIMED = "CLAIMED"  # this invocation sends it
    DELIVERED = "DELIVERED"  # a previous invocation did
    BUSY = "BUSY"  # another invocation is sending it right now


class DeliveryLedger:
    """Per transition and channel: SENDING (with a lease), DELIVERED or FAILED, in DynamoDB.

    A claim is a conditional write (spotline's ``OnceLedger``), so two invocations of the same
    transition (the SNS and the EventBridge copy, or a retry racing a slow first attempt) never
    both send to a channel. A FAILED delivery may be claimed again at once.
    """

    def __init__(
        self,
        client: Any,
        table: str,
        *,
        lease_s: int = 90,
        retain_s: int = 14 * 86400,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.lease_s = lease_s
        self.retain_s = retain_s
        self._once = OnceLedger(
            client,
            table,
            lease_s=lease_s,
            retain_s=retain_s,
            holding="SENDING",
            retry_marks=("FAILED",),
            clock=clock,
        )

    @staticmethod
    def key(transition_key: str, channel: str) -> str:
        return f"delivery#{channel}#{transition_key}"

    def claim(self, transition_key: str, channel: str) -> Claim:
        if self._once.claim(self.key(transition_key, channel)):
            return Claim.CLAIMED
        return (
            Claim.DELIVERED if self.status(transition_key, channel) == "DELIVERED" else Claim.BUSY
        )

    def status(self, transition_key: str, channel: str) -> str | None:
        return self._once.status(self.key(transition_key, channel))

    def delivered(self, transition_key: str, channel: str) -> None:
        self._once.mark(self.key(transition_key, channel), "DELIVERED")

    def failed(self, transition_key: str, channel: str) -> None:
        self._once.mark(self.key(transition_key, channel), "FAILED")


# -- flapping --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlapDecision:
    POST = "post"
    SUMMARY = "summary"
    SUPPRESS = "suppress"

    kind: str
    changes: int
    window_s: int


class FlapConflict(RuntimeError):
    """Too many concurrent updates of one alarm's history; the invocation is retried."""


class FlapTracker:
    """Counts each alarm's transitions in a sliding window (by transition time, so a retry of
    the same transition gets the same decision, stored with it)."""

    def __init__(
        self, client: Any, table: str, *, max_changes: int, window_s: int, retain_s: int = 6 * 3600
    ) -> None:
        self.client = client
        self.table = table
        self.max_changes = max_changes
        self.window_s = window_s
        self.retain_s = max(retain_s, window_s)

    def decide(self, notice: AlarmNotice) -> FlapDecision:
        key = {"pk": {"S": f"flap#{notice.name}"}}
        for _ in range(8):
            item = self.client.get_item(TableName=self.table, Key=key, ConsistentRead=True).get(
                "Item"
            )
            history: dict[str, Any] = json.loads(item["history"]["S"]) if item else {}
            version = int(item["version"]["N"]) if item else 0
            changes: dict[str, dict[str, Any]] = history.get("changes", {})
            this = notice.transition_key
            if this in changes:
                seen = changes[this]
                return FlapDecision(seen["decision"], int(seen["count"]), self.window_s)
            at = notice.time.timestamp()
            in_window = [c for c in changes.values() if at - self.window_s < c["at"] <= at]
            count = len(in_window) + 1
            posted_state = history.get("posted_state")
            summary_at = history.get("summary_at")
            if count <= self.max_changes:
                kind = FlapDecision.POST
            elif summary_at is None or at - summary_at >= self.window_s:
                kind = FlapDecision.SUMMARY
            elif notice.new_state == AlarmState.ALARM and posted_state != AlarmState.ALARM:
                kind = FlapDecision.SUMMARY  # never hide an alarm chat has not seen
            else:
                kind = FlapDecision.SUPPRESS
            changes = {k: c for k, c in changes.items() if c["at"] > at - self.retain_s}
            changes[this] = {"at": at, "decision": kind, "count": count}
            history = {
                "changes": changes,
                "posted_state": posted_state if kind == FlapDecision.SUPPRESS else notice.new_state,
                "summary_at": at if kind == FlapDecision.SUMMARY else summary_at,
                "suppressed": history.get("suppressed", 0) + (kind == FlapDecision.SUPPRESS),
            }
            try:
                self.client.put_item(
                    TableName=self.table,
                    Item={
                        **key,
                        "history": {"S": json.dumps(history, sort_keys=True)},
                        "version": {"N": str(version + 1)},
                        "expires_at": {"N": str(int(at + self.retain_s + 86400))},
                    },
                    ConditionExpression="attribute_not_exists(pk) OR version = :version",
                    ExpressionAttributeValues={":version": {"N": str(version)}},
                )
            except ClientError as exc:
                if not is_conditional_failure(exc):
                    raise
                continue  # another invocation recorded a transition of this alarm: re-read
            return FlapDecision(kind, count, self.window_s)
        raise FlapConflict(f"alarm {notice.name}: history kept changing under us")
