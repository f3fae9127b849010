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
- ``child-burst#series#SERIES``: the windows whose hold-backs no notice has reported yet
  (``pending``), and the last report made (so that its notice's retry says it again). A notice
  posted in a later window claims each pending window on that window's item (``reported_by``,
  conditional): one notice reports it, however many race.

Both carry ``expires_at`` (DynamoDB TTL). A ledger that cannot be written (throttled, down)
never costs a notice: it is posted, and the decision says why it was not counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from spotline.once import OnceLedger, is_conditional_failure

KEY_PREFIX = "child-burst#"  # the fan-out's IAM policy allows these keys (template.yaml)
DEFAULT_BURST = 5
DEFAULT_WINDOW_S = 15 * 60
# A hold-back is reported by the next notice of its series if that comes within a day.
RETAIN_S = 24 * 3600
# Held-back ids kept per window (56-character CloudWatch event ids: ~110 KiB of the item's
# 400 KiB). Past that, a plain counter: a retry may count twice, but the item stays writable.
HELD_IDS_MAX = 2000


@dataclass(frozen=True)
class BurstDecision:
    post: bool
    # Notices of this series held back in an earlier window, reported by this one.
    suppressed_before: int = 0
    suppressed_since: datetime | None = None
    # The ledger failed: posted without counting (fail open).
    error: str = ""
    # Held back before: a Lambda retry of a notice already held back (counted once).
    repeat: bool = False


class ChildNoticeBursts:
    def __init__(
        self,
        client: Any,
        table: str,
        *,
        burst: int = DEFAULT_BURST,
        window_s: int = DEFAULT_WINDOW_S,
        retain_s: int = RETAIN_S,
        held_ids_max: int = HELD_IDS_MAX,
    ) -> None:
        if burst < 1 or window_s < 1:
            raise ValueError("burst and window_s must be positive")
        self.client = client
        self.table = table
        self.burst = burst
        self.window_s = window_s
        self.retain_s = retain_s
        self.held_ids_max = held_ids_max

    def window_of(self, at: datetime) -> int:
        """The start (epoch seconds) of the fixed window holding ``at``."""
        return int(at.timestamp()) // self.window_s * self.window_s

    @staticmethod
    def window_name(series: str, window: int) -> str:
        return f"{KEY_PREFIX}window#{window}#{series}"

    @classmethod
    def window_key(cls, series: str, window: int) -> dict[str, Any]:
        return {"pk": {"S": cls.window_name(series, window)}}

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
                first = self._hold_back(series, window, event_id, at, expires)
            except (ClientError, BotoCoreError) as exc:
                return BurstDecision(True, error=_describe(exc))
            return BurstDecision(False, repeat=not first)
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
            if is_conditional_failure(exc):
                return False
            raise
        return True

    def _hold_back(
        self, series: str, window: int, event_id: str, at: datetime, expires: int
    ) -> bool:
        """Record the hold-back; False if this notice was held back before (a retry)."""
        # The series first: a window it names without a hold-back is skipped by the report.
        self.client.update_item(
            TableName=self.table,
            Key=self.series_key(series),
            UpdateExpression="ADD pending :windows SET expires_at = :expires",
            ExpressionAttributeValues={
                ":windows": {"NS": [str(window)]},
                ":expires": {"N": str(expires)},
            },
        )
        values = {":at": {"N": str(at.timestamp())}, ":expires": {"N": str(expires)}}
        since = "suppressed_since = if_not_exists(suppressed_since, :at)"
        try:
            old = self.client.update_item(
                TableName=self.table,
                Key=self.window_key(series, window),
                UpdateExpression=f"ADD suppressed :ids SET expires_at = :expires, {since}",
                ConditionExpression=(
                    "attribute_not_exists(suppressed) OR contains(suppressed, :id)"
                    " OR size(suppressed) < :max"
                ),
                ExpressionAttributeValues={
                    **values,
                    ":ids": {"SS": [event_id]},
                    ":id": {"S": event_id},
                    ":max": {"N": str(self.held_ids_max)},
                },
                # Not UPDATED_OLD: adding an id already in the set may count as no change.
                ReturnValues="ALL_OLD",
            ).get("Attributes", {})
        except ClientError as exc:
            if not is_conditional_failure(exc):
                raise
            # Past the kept ids a retry cannot be told apart: it counts again.
            self.client.update_item(
                TableName=self.table,
                Key=self.window_key(series, window),
                UpdateExpression=f"ADD suppressed_more :one SET expires_at = :expires, {since}",
                ExpressionAttributeValues={**values, ":one": {"N": "1"}},
            )
            return True
        return event_id not in old.get("suppressed", {}).get("SS", [])

    def _claim_report(self, series: str, window: int, event_id: str) -> tuple[int, datetime | None]:
        """(count, since) of the hold-backs in earlier windows, if this notice reports them.

        Each earlier window is claimed on its own item (one reporter per window, however many
        notices of later windows race for it); the last report is kept on the series so that
        a retry of its notice says it again."""
        series_key = self.series_key(series)
        item = self.client.get_item(TableName=self.table, Key=series_key, ConsistentRead=True).get(
            "Item"
        )
        if not item:
            return 0, None
        last = item.get("last_report", {}).get("M", {})
        if last.get("reporter", {}).get("S") == event_id:
            return int(last["count"]["N"]), datetime.fromtimestamp(
                float(last["since"]["N"]), tz=UTC
            )
        earlier = sorted(int(w) for w in item.get("pending", {}).get("NS", []) if int(w) < window)
        count, since = 0, None
        # One reporter per window, for good: a window's item is its key in a OnceLedger.
        reports = OnceLedger(self.client, self.table)
        for held_window in earlier:
            claimed = reports.claim_for_good(
                self.window_name(series, held_window),
                event_id,
                holder_attribute="reported_by",
                requires="suppressed",
            )
            if claimed is None:
                continue  # another notice reports it (or nothing was held back there)
            count += len(claimed["suppressed"]["SS"])
            count += int(claimed.get("suppressed_more", {}).get("N", "0"))
            held_since = float(claimed["suppressed_since"]["N"])
            since = held_since if since is None else min(since, held_since)
        if earlier:
            update = "DELETE pending :windows"
            values: dict[str, Any] = {":windows": {"NS": [str(w) for w in earlier]}}
            if count:
                update += " SET last_report = :report"
                values[":report"] = {
                    "M": {
                        "reporter": {"S": event_id},
                        "count": {"N": str(count)},
                        "since": {"N": str(since)},
                    }
                }
            self.client.update_item(
                TableName=self.table,
                Key=series_key,
                UpdateExpression=update,
                ExpressionAttributeValues=values,
            )
        if not count or since is None:
            return 0, None
        return count, datetime.fromtimestamp(since, tz=UTC)


def _describe(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code") or type(exc).__name__)
    return type(exc).__name__
