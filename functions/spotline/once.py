"""Claim a key once, in DynamoDB: one holder at a time, until its lease runs out.

Three parts of spotline need "exactly one of us does this": the alarm fan-out sends a
transition to a channel once (two copies of one alarm, or a retry racing a slow first try), the
dead-letter function notifies for a job once at a time (two copies of one dead letter), and the
notice-burst flood control lets one notice report a window's hold-backs. Each is a conditional
write on a key; a refused condition (``ConditionalCheckFailedException``) means someone else
holds it, and is recognised here, for this ledger and the job store alike.

Item shape (kept as it was written before this module, so deployed tables read the same):
``KEY`` (the table's partition key), ``holder`` (who holds it, when given), ``status`` (the
holding status, or the mark that ended the holding), ``lease_until`` and ``expires_at`` (epoch
seconds; the latter is the table's TTL).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from botocore.exceptions import ClientError


def is_conditional_failure(exc: BaseException) -> bool:
    """The write's condition was refused (another writer was first), not a failed call.

    ``client.exceptions.ConditionalCheckFailedException`` is a ``ClientError`` with this code,
    so this recognises both the modelled and the plain form."""
    return (
        isinstance(exc, ClientError)
        and exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"
    )


class OnceLedger:
    """Keys claimed for one holder until a lease runs out, then marked or released.

    - ``claim``: a conditional put that succeeds when the key is free: never claimed, its lease
      run out (the holder died mid-work), or marked with one of ``retry_marks`` (it failed).
    - ``mark``: the holder is done; the mark (``DELIVERED``, ``FAILED``) ends the lease. A key
      marked with anything but a retry mark is never claimed again.
    - ``release``: the holder gives the key back (only its own: a lease that ran out may be
      someone else's by now).
    - ``claim_for_good``: no lease: the first holder keeps the key, and its own retries find it
      theirs again (a Lambda retry of the same notice).

    ``holding`` is the status a claim writes; None writes no status, and then the lease alone
    says whether the key is held.
    """

    def __init__(
        self,
        client: Any,
        table: str,
        *,
        key_attribute: str = "pk",
        lease_s: int = 90,
        retain_s: int = 86400,
        holding: str | None = None,
        retry_marks: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.table = table
        self.key_attribute = key_attribute
        self.lease_s = lease_s
        self.retain_s = retain_s
        self.holding = holding
        self.retry_marks = tuple(retry_marks)
        self._clock = clock

    def _key(self, key: str) -> dict[str, Any]:
        return {self.key_attribute: {"S": key}}

    def claim(self, key: str, holder: str | None = None) -> bool:
        """Take ``key`` until ``lease_s`` from now (False: it is held, or marked done)."""
        now = int(self._clock())
        item: dict[str, Any] = {
            **self._key(key),
            "lease_until": {"N": str(now + self.lease_s)},
            "expires_at": {"N": str(now + self.retain_s)},
        }
        if holder is not None:
            item["holder"] = {"S": holder}
        names: dict[str, str] = {}
        values: dict[str, Any] = {":now": {"N": str(now)}}
        free = [f"attribute_not_exists({self.key_attribute})"]
        if self.holding is None:
            free.append("lease_until < :now")
        else:
            item["status"] = {"S": self.holding}
            names["#s"] = "status"
            values[":holding"] = {"S": self.holding}
            for index, mark in enumerate(self.retry_marks):
                values[f":retry{index}"] = {"S": mark}
                free.append(f"#s = :retry{index}")
            free.append("(#s = :holding AND lease_until < :now)")
        try:
            self.client.put_item(
                TableName=self.table,
                Item=item,
                ConditionExpression=" OR ".join(free),
                **({"ExpressionAttributeNames": names} if names else {}),
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if is_conditional_failure(exc):
                return False
            raise
        return True

    def status(self, key: str) -> str | None:
        item = self.client.get_item(
            TableName=self.table, Key=self._key(key), ConsistentRead=True
        ).get("Item")
        return item["status"]["S"] if item and "status" in item else None

    def mark(self, key: str, status: str) -> None:
        """The holder is done with ``key``: ``status`` replaces the holding, the lease ends."""
        self.client.update_item(
            TableName=self.table,
            Key=self._key(key),
            UpdateExpression="SET #s = :status, lease_until = :zero",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={":status": {"S": status}, ":zero": {"N": "0"}},
        )

    def release(self, key: str, holder: str) -> None:
        """Give ``key`` back if ``holder`` still holds it (else nothing happens)."""
        try:
            self.client.delete_item(
                TableName=self.table,
                Key=self._key(key),
                ConditionExpression="holder = :h",
                ExpressionAttributeValues={":h": {"S": holder}},
            )
        except ClientError as exc:
            if not is_conditional_failure(exc):
                raise

    def claim_for_good(
        self, key: str, holder: str, *, holder_attribute: str = "holder", requires: str = ""
    ) -> dict[str, Any] | None:
        """Take an existing item's ``key`` for ``holder`` for good; its attributes, or None when
        another holder has it (or the item lacks the attribute ``requires``)."""
        names = {"#holder": holder_attribute}
        condition = "(attribute_not_exists(#holder) OR #holder = :holder)"
        if requires:
            names["#requires"] = requires
            condition = f"attribute_exists(#requires) AND {condition}"
        try:
            return self.client.update_item(
                TableName=self.table,
                Key=self._key(key),
                UpdateExpression="SET #holder = :holder",
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues={":holder": {"S": holder}},
                ReturnValues="ALL_NEW",
            )["Attributes"]
        except ClientError as exc:
            if is_conditional_failure(exc):
                return None
            raise
