"""Deliveries for dead letters that have no job record, and the lease that lets one invocation
at a time notify for a job: items in the job table under keys no job id can take."""

from __future__ import annotations

import time
from typing import Any

from botocore.exceptions import ClientError

from spotline.jobstore import JobStoreError, utc_now
from spotline.once import OnceLedger


class MessageLedger:
    """Deliveries for DLQ messages that have no job record, keyed by message id, in the job
    table (``job_id = dead-letter-message#ID``: never a valid job id, never in a status scan)."""

    PREFIX = "dead-letter-message#"
    # Long past any redelivery of the message (DLQ retention 13 days, notification failures
    # queue 14): then DynamoDB's TTL removes the item (``expires_at``, epoch seconds).
    RETAIN_S = 30 * 86400

    def __init__(self, client: Any, table_name: str) -> None:
        self._client = client
        self._table = table_name
        self._leases = OnceLedger(
            client,
            table_name,
            key_attribute="job_id",
            lease_s=self.LEASE_S,
            retain_s=self.LEASE_S + 86400,
        )

    def _key(self, message_id: str) -> dict[str, Any]:
        return {"job_id": {"S": self.PREFIX + message_id}}

    def get(self, message_id: str) -> dict[str, str]:
        try:
            item = self._client.get_item(
                TableName=self._table, Key=self._key(message_id), ConsistentRead=True
            ).get("Item", {})
        except ClientError as exc:
            raise JobStoreError(f"ledger read failed for message {message_id}: {exc}") from exc
        return {k: v["S"] for k, v in item.get("notified", {}).get("M", {}).items() if "S" in v}

    def put(self, message_id: str, delivered: dict[str, str]) -> None:
        try:
            self._client.update_item(
                TableName=self._table,
                Key=self._key(message_id),
                UpdateExpression="SET notified = :n, updated_at = :t, expires_at = :e",
                ExpressionAttributeValues={
                    ":n": {"M": {k: {"S": v} for k, v in delivered.items()}},
                    ":t": {"S": utc_now()},
                    ":e": {"N": str(int(time.time()) + self.RETAIN_S)},
                },
            )
        except ClientError as exc:
            raise JobStoreError(f"ledger write failed for message {message_id}: {exc}") from exc

    # -- one deliverer per job at a time ----------------------------------------------------

    LEASE_PREFIX = "dead-letter-lease#"
    # Longer than the dead-letter function's Timeout (120 s): a holder that died mid-delivery
    # frees the job before SQS shows its message again (DLQ visibility timeout 720 s).
    LEASE_S = 150

    def lease(self, job_id: str, holder: str) -> bool:
        """Take the right to notify for ``job_id`` (False: another invocation holds it).

        Two copies of one dead letter (a worker that crashed between sending to the DLQ and
        marking it sent) may reach two concurrent invocations; without this, both would read
        "nothing delivered yet" and both would alert."""
        try:
            return self._leases.claim(self.LEASE_PREFIX + job_id, holder)
        except ClientError as exc:
            raise JobStoreError(f"lease write failed for job {job_id}: {exc}") from exc

    def release(self, job_id: str, holder: str) -> None:
        """Give the lease back (only our own: a lease that expired may be someone else's)."""
        try:
            self._leases.release(self.LEASE_PREFIX + job_id, holder)
        except ClientError as exc:
            raise JobStoreError(f"lease release failed for job {job_id}: {exc}") from exc
