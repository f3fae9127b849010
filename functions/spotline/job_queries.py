"""Reads of the jobs table: one job by id, and the queries behind its indexes (RunningOnIndex for
the standby's stop, UnsentIndex for the stranded-job sweep) and the dead-lettered scan."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from spotline.contract import JobStatus
from spotline.job_record import (
    RUNNING_ON,
    RUNNING_ON_INDEX,
    UNSENT_INDEX,
    UNSENT_SHARD,
    UNSENT_SHARDS,
    UNSENT_SINCE,
    JobRecord,
    JobStoreError,
    record_from_item,
)


class JobReads:
    """Job records keyed by ``job_id``, read. Takes its DynamoDB client so tests can pass moto's."""

    def __init__(self, client: Any, table_name: str) -> None:
        self._client = client
        self._table = table_name

    # -- reads -------------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        try:
            response = self._client.get_item(
                TableName=self._table, Key={"job_id": {"S": job_id}}, ConsistentRead=True
            )
        except (ClientError, BotoCoreError) as exc:
            raise JobStoreError(f"get_item failed for job {job_id}: {exc}") from exc
        item = response.get("Item")
        return record_from_item(item) if item else None

    # -- the operator's view ------------------------------------------------------------------

    def dead_lettered(self) -> list[JobRecord]:
        """Every DEAD_LETTERED job (a scan: operator tooling and drills, never the hot path)."""
        job_ids: list[str] = []
        paginator = self._client.get_paginator("scan")
        try:
            for page in paginator.paginate(
                TableName=self._table,
                ProjectionExpression="job_id",
                FilterExpression="#status = :status",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={":status": {"S": str(JobStatus.DEAD_LETTERED)}},
            ):
                job_ids.extend(item["job_id"]["S"] for item in page.get("Items", []))
        except ClientError as exc:
            raise JobStoreError(f"scan for dead-lettered jobs failed: {exc}") from exc
        records = [self.get(job_id) for job_id in job_ids]
        return [r for r in records if r is not None and r.status == JobStatus.DEAD_LETTERED]

    # -- who holds what (the standby's stop) ------------------------------------------------

    def count_running_on(self, instance_id: str, *, page_size: int | None = None) -> int:
        """RUNNING jobs held by the worker on this instance: a Query of the sparse index that
        holds only RUNNING jobs, keyed by their holder's instance id (``running_on``).
        ``page_size`` None: DynamoDB's own pages (1 MB). The index is eventually consistent."""
        count = 0
        paginator = self._client.get_paginator("query")
        try:
            for page in paginator.paginate(
                TableName=self._table,
                IndexName=RUNNING_ON_INDEX,
                Select="COUNT",
                KeyConditionExpression="#holder = :instance",
                ExpressionAttributeNames={"#holder": RUNNING_ON},
                ExpressionAttributeValues={":instance": {"S": instance_id}},
                PaginationConfig={"PageSize": page_size} if page_size else {},
            ):
                count += int(page.get("Count", 0))
        except ClientError as exc:
            raise JobStoreError(f"query of {RUNNING_ON_INDEX} failed: {exc}") from exc
        return count

    # -- stranded jobs (the sweep) -----------------------------------------------------------

    def unsent_before(self, cutoff: datetime, *, limit: int = 500) -> Iterator[JobRecord]:
        """Jobs stored at or before ``cutoff`` whose message was never sent, oldest first in
        each shard, at most ``limit``. Each record holds what UnsentIndex projects:
        ``job_id``, ``status``, ``request`` (an index is eventually consistent)."""
        before = cutoff.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        found = 0
        for shard in range(UNSENT_SHARDS):
            kwargs: dict[str, Any] = {
                "TableName": self._table,
                "IndexName": UNSENT_INDEX,
                "KeyConditionExpression": "#shard = :shard AND #since <= :cutoff",
                "ExpressionAttributeNames": {"#shard": UNSENT_SHARD, "#since": UNSENT_SINCE},
                "ExpressionAttributeValues": {
                    ":shard": {"S": str(shard)},
                    ":cutoff": {"S": before},
                },
            }
            while True:
                try:
                    response = self._client.query(**kwargs)
                except ClientError as exc:
                    raise JobStoreError(f"query of {UNSENT_INDEX} failed: {exc}") from exc
                for item in response.get("Items", []):
                    yield record_from_item(item)
                    found += 1
                    if found >= limit:
                        return
                if "LastEvaluatedKey" not in response:
                    break
                kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]
