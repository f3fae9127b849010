"""Flood control for the child-fell-over notices: at most ``burst`` per series per window.

A model that runs out of memory on every job would post one chat message per attempt, hundreds
an hour. Notices of one series (the stack's worker log group, the analyzer and the failure kind)
are counted per fixed window (by the log line's time, so a Lambda retry of a delivery lands in
the window it was first counted in); past ``burst`` in a window they are held back. The first
notice posted in a later window says how many were held back and since when.

The count lives in the fan-out's DynamoDB ledger table, shared by every concurrent invocation:

- ``child-burst#window#WINDOW#SERIES``: the log event ids posted (``posted``, a string set) and
  held back (``suppressed``) in that window. Posting is one conditional ``ADD`` to the set (its
  size below ``burst``, or the id already in it), so concurrent invocations never post more than
  ``burst``, and a retry of a notice gets the decision it got the first time. A plain counter
  would count a retry again, and could hold back the retry of a notice one channel refused.
- ``child-burst#series#SERIES``: the last window that held notices back, its count and when it
  began, and which notice reported it (so one notice reports it, and that notice's retry again).

Both carry ``expires_at`` (DynamoDB TTL). A ledger that cannot be written (throttled, down)
never costs a notice: it is posted, and the decision says why it was not counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

KEY_PREFIX = "child-burst#"  # the fan-out's IAM policy allows these keys (template.yaml)
DEFAULT_BURST = 5
DEFAULT_WINDOW_S = 15 * 60
# A hold-back is reported by the next notice of its series if that comes within a day.
RETAIN_S = 24 * 3600


@dataclass(frozen=True)
class BurstDecision:
    post: bool
    # Notices of this series held back in an earlier window, reported by this one.
    suppressed_before: int = 0
    suppressed_since: datetime | None = None
    # The ledger failed: posted without counting (fail open).
    error: str = ""


def _is_conditional_failure(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


class ChildNoticeBursts:
    def __init__(
        self,
        client: Any,
        table: str,
        *,
        burst: int = DEFAULT_BURST,
        window_s: int = DEFAULT_WINDOW_S,
        retain_s: int = RETAIN_S,
    ) -> None:
        if burst < 1 or window_s < 1:
            raise ValueError("burst and window_s must be positive")
        self.client = client
        self.table = table
        self.burst = burst
        self.window_s = window_s
        self.retain_s = retain_s

    def window_of(self, at: datetime) -> int:
        """The start (epoch seconds) of the fixed window holding ``at``."""
        return int(at.timestamp()) // self.window_s * self.window_s

    @staticmethod
    def window_key(series: str, window: int) -> dict[str, Any]:
        return {"pk": {"S": f"{KEY_PREFIX}window#{window}#{series}"}}

    @staticmethod
    def series_key(series: str) -> dict[str, Any]:
        return {"pk": {"S": f"{KEY_PREFIX}series#{series}"}}

    def decide(self, series: str, event_id: str, at: datetime) -> BurstDecision:
        """Post or hold back the notice of log event ``event_id`` (written at ``at``)."""
        window = self.window_of(at)
        expires = window + self.window_s + self.retain_s
        try:
            posted = self._take_slot(series, window, event_id, expires)
        except (ClientError, BotoCoreError) as exc:
            return BurstDecision(True, error=_describe(exc))
        if not posted:
            try:
                self._hold_back(series, window, event_id, at, expires)
            except (ClientError, BotoCoreError) as exc:
                return BurstDecision(True, error=_describe(exc))
            return BurstDecision(False)
        try:
            count, since = self._claim_report(series, window, event_id)
        except (ClientError, BotoCoreError) as exc:
            return BurstDecision(True, error=_describe(exc))
        return BurstDecision(True, count, since)

    def _take_slot(self, series: str, window: int, event_id: str, expires: int) -> bool:
        try:
            self.client.update_item(
                TableName=self.table,
                Key=self.window_key(series, window),
                UpdateExpression="ADD posted :ids SET expires_at = :expires",
                ConditionExpression=(
                    "attribute_not_exists(posted) OR contains(posted, :id) OR size(posted) < :burst"
                ),
                ExpressionAttributeValues={
                    ":ids": {"SS": [event_id]},
                    ":id": {"S": event_id},
                    ":burst": {"N": str(self.burst)},
                    ":expires": {"N": str(expires)},
                },
            )
        except ClientError as exc:
            if _is_conditional_failure(exc):
                return False
            raise
        return True

    def _hold_back(
        self, series: str, window: int, event_id: str, at: datetime, expires: int
    ) -> None:
        held = self.client.update_item(
            TableName=self.table,
            Key=self.window_key(series, window),
            UpdateExpression=(
                "ADD suppressed :ids SET expires_at = :expires,"
                " suppressed_since = if_not_exists(suppressed_since, :at)"
            ),
            ExpressionAttributeValues={
                ":ids": {"SS": [event_id]},
                ":at": {"N": str(at.timestamp())},
                ":expires": {"N": str(expires)},
            },
            ReturnValues="ALL_NEW",
        )["Attributes"]
        count = len(held["suppressed"]["SS"])
        try:
            # The series remembers its latest hold-back; concurrent writers only raise it.
            self.client.update_item(
                TableName=self.table,
                Key=self.series_key(series),
                UpdateExpression=(
                    "SET last_window = :window, last_count = :count, last_since = :since,"
                    " expires_at = :expires"
                ),
                ConditionExpression=(
                    "attribute_not_exists(last_window) OR last_window < :window"
                    " OR (last_window = :window AND last_count < :count)"
                ),
                ExpressionAttributeValues={
                    ":window": {"N": str(window)},
                    ":count": {"N": str(count)},
                    ":since": held["suppressed_since"],
                    ":expires": {"N": str(expires)},
                },
            )
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise

    def _claim_report(self, series: str, window: int, event_id: str) -> tuple[int, datetime | None]:
        """(count, since) of an earlier window's hold-back, if this notice is to report it."""
        item = self.client.get_item(
            TableName=self.table, Key=self.series_key(series), ConsistentRead=True
        ).get("Item")
        if not item or int(item["last_window"]["N"]) >= window:
            return 0, None  # nothing held back, or held back in this window: a later one says so
        last = item["last_window"]["N"]
        if item.get("reported_window", {}).get("N") == last and item["reporter"]["S"] != event_id:
            return 0, None  # another notice reported it
        try:
            claimed = self.client.update_item(
                TableName=self.table,
                Key=self.series_key(series),
                UpdateExpression="SET reported_window = :last, reporter = :id",
                ConditionExpression=(
                    "last_window = :last AND (attribute_not_exists(reported_window)"
                    " OR reported_window <> :last OR reporter = :id)"
                ),
                ExpressionAttributeValues={":last": {"N": last}, ":id": {"S": event_id}},
                ReturnValues="ALL_NEW",
            )["Attributes"]
        except ClientError as exc:
            if _is_conditional_failure(exc):
                return 0, None
            raise
        since = datetime.fromtimestamp(float(claimed["last_since"]["N"]), tz=UTC)
        return int(claimed["last_count"]["N"]), since


def _describe(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code") or type(exc).__name__)
    return type(exc).__name__
