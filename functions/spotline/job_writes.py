"""The status machine's writes to the jobs table: every write names the statuses it may come
from (derived from ``contract.TRANSITIONS``), so two writers racing can never move a job
backwards: ``SUCCEEDED`` can never become ``RUNNING`` again, and only the holder of the current
ownership token may record an outcome. (Taking ownership is in ``job_claims``.)"""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from spotline.contract import TRANSITIONS, JobStatus
from spotline.job_queries import JobReads
from spotline.job_record import (
    LEASE_FIELDS,
    PREPARED_AT,
    RUNNING_ON,
    UNSENT_SHARD,
    UNSENT_SINCE,
    JobError,
    JobRecord,
    JobStoreError,
    TransitionRefused,
    record_from_item,
    to_dynamo,
    unsent_shard,
    utc_now,
)
from spotline.once import is_conditional_failure


def predecessors(target: JobStatus) -> list[JobStatus]:
    return [status for status, nexts in TRANSITIONS.items() if target in nexts]


class JobWrites(JobReads):
    """Creates jobs and moves them through the status machine, each move one conditional write."""

    # -- creation ------------------------------------------------------------------------------

    def create(
        self,
        job_id: str,
        request: dict[str, Any],
        *,
        submitter: str | None = None,
        fields: dict[str, Any] | None = None,
    ) -> tuple[JobRecord, bool]:
        """Store a new QUEUED job (with who submitted it, when known); if the id exists
        already, return it and ``False``. ``fields``: more of the record from the start (the
        tier a job starts on)."""
        now = utc_now()
        item: dict[str, Any] = {
            **(fields or {}),
            "job_id": job_id,
            "status": str(JobStatus.QUEUED),
            "request": json.dumps(request, separators=(",", ":"), sort_keys=True),
            "attempts": 0,
            "interruptions": 0,
            "sent": False,
            "created_at": now,
            "updated_at": now,
            UNSENT_SINCE: now,
            UNSENT_SHARD: unsent_shard(job_id),
        }
        if submitter:
            item["submitter"] = submitter
        try:
            self._client.put_item(
                TableName=self._table,
                Item={k: to_dynamo(v) for k, v in item.items()},
                ConditionExpression="attribute_not_exists(job_id)",
            )
        except ClientError as exc:
            if is_conditional_failure(exc):
                existing = self.get(job_id)
                if existing is None:  # deleted between the two calls: vanishingly rare
                    raise JobStoreError(f"job {job_id} exists but could not be read") from exc
                return existing, False
            raise JobStoreError(f"put_item failed for job {job_id}: {exc}") from exc
        return record_from_item({k: to_dynamo(v) for k, v in item.items()}), True

    def mark_sent(self, job_id: str) -> None:
        """The job's message is on the queue: it leaves UnsentIndex."""
        self._update_quietly(
            job_id,
            set_values={"sent": True},
            remove=(UNSENT_SINCE, UNSENT_SHARD),
            condition="attribute_exists(job_id)",
        )

    # -- transitions -----------------------------------------------------------------------

    def transition(
        self,
        job_id: str,
        target: JobStatus,
        *,
        expect_owner: str | None = None,
        set_values: dict[str, Any] | None = None,
        remove: tuple[str, ...] = (),
        increment: dict[str, int] | None = None,
    ) -> JobRecord:
        """Move a job to ``target`` if the status machine allows it from its current status.

        ``expect_owner`` additionally requires that the current ownership token matches: only
        the holder of a RUNNING job may record its outcome. A move to any other status removes
        ``running_on``; a move into RUNNING sets it only through ``claim``/``claim_queued``,
        which name the worker.
        """
        return self._update(
            job_id, **self._move(target, expect_owner, set_values or {}, remove, increment)
        )

    def transition_quietly(
        self,
        job_id: str,
        target: JobStatus,
        *,
        expect_owner: str | None = None,
        set_values: dict[str, Any] | None = None,
        remove: tuple[str, ...] = (),
    ) -> None:
        """``transition()`` without the record sent back: the same conditional write, a
        lighter reply (the worker needs none)."""
        self._update_quietly(
            job_id, **self._move(target, expect_owner, set_values or {}, remove, None)
        )

    @staticmethod
    def _move(
        target: JobStatus,
        expect_owner: str | None,
        set_values: dict[str, Any],
        remove: tuple[str, ...],
        increment: dict[str, int] | None,
    ) -> dict[str, Any]:
        """The conditional update that moves a job to ``target`` (``_update``'s arguments)."""
        allowed = predecessors(target)
        if not allowed:
            raise ValueError(f"nothing may move to {target}")
        names = {"#status": "status"}
        values: dict[str, Any] = {}
        placeholders = []
        for index, status in enumerate(allowed):
            values[f":from{index}"] = str(status)
            placeholders.append(f":from{index}")
        condition = f"#status IN ({', '.join(placeholders)})"
        if expect_owner is not None:
            names["#owner"] = "owner_token"
            values[":owner"] = expect_owner
            condition += " AND #owner = :owner"
        updates = {"status": str(target), **set_values}
        if target is not JobStatus.RUNNING:
            # Every way out of RUNNING leaves the index and ends the lease.
            remove = (*remove, RUNNING_ON, PREPARED_AT, *LEASE_FIELDS)
        return {
            "set_values": updates,
            "remove": remove,
            "increment": increment,
            "condition": condition,
            "names": names,
            "values": values,
            "target": target,
        }

    def complete_quietly(self, job_id: str, owner: str, result_uri: str) -> None:
        """RUNNING -> SUCCEEDED by the holder of ``owner``, its result at ``result_uri``
        (no record sent back: the worker needs none)."""
        self.transition_quietly(
            job_id,
            JobStatus.SUCCEEDED,
            expect_owner=owner,
            set_values={"result_uri": result_uri, "finished_at": utc_now()},
        )

    def release(
        self,
        job_id: str,
        owner: str,
        error: JobError,
        *,
        interrupted: bool = False,
    ) -> JobRecord:
        """RUNNING -> QUEUED after a retryable failure (attempts+1) or an interruption."""
        return self.transition(
            job_id,
            JobStatus.QUEUED,
            expect_owner=owner,
            set_values={"last_error": error.to_dict()},
            remove=("owner_token",),
            increment={"interruptions" if interrupted else "attempts": 1},
        )

    def dead_letter(
        self, job_id: str, error: JobError, *, expect_owner: str | None = None
    ) -> JobRecord:
        """Mark a job DEAD_LETTERED; doing it twice is harmless (returns the record)."""
        try:
            return self.transition(
                job_id,
                JobStatus.DEAD_LETTERED,
                expect_owner=expect_owner,
                set_values={"last_error": error.to_dict(), "finished_at": utc_now()},
                remove=("owner_token",),
            )
        except TransitionRefused as refused:
            if refused.current is not None and refused.current.status == JobStatus.DEAD_LETTERED:
                return refused.current
            raise

    def redrive(self, job_id: str, *, reset_attempts: bool = False) -> JobRecord:
        """Operator action: DEAD_LETTERED -> QUEUED so the job can be sent again."""
        values: dict[str, Any] = {"sent": False}
        if reset_attempts:
            values["attempts"] = 0
            values["interruptions"] = 0
        # dlq_sent belongs to the dead-lettering being redriven: the next one is sent again.
        return self.transition(
            job_id, JobStatus.QUEUED, set_values=values, remove=("finished_at", "dlq_sent")
        )

    def set_fields(self, job_id: str, values: dict[str, Any]) -> JobRecord:
        """Update bookkeeping fields (not the status) of an existing job."""
        if "status" in values:
            raise ValueError("use transition() to change a status")
        return self._update(job_id, set_values=values, condition="attribute_exists(job_id)")

    # -- internals ---------------------------------------------------------------------------

    def _update(self, job_id: str, **write: Any) -> JobRecord:
        """``_write`` with the record as it is after the write."""
        item = self._write(job_id, reply=True, **write)
        assert item is not None  # ALL_NEW of an item the condition required to exist
        return record_from_item(item)

    def _update_quietly(self, job_id: str, **write: Any) -> None:
        """``_write`` asking DynamoDB for no reply item."""
        self._write(job_id, reply=False, **write)

    def _write(
        self,
        job_id: str,
        *,
        set_values: dict[str, Any],
        condition: str,
        remove: tuple[str, ...] = (),
        increment: dict[str, int | set[str]] | None = None,
        names: dict[str, str] | None = None,
        values: dict[str, Any] | None = None,
        target: JobStatus | None = None,
        reply: bool,
    ) -> dict[str, Any] | None:
        """The conditional UpdateItem behind every write (``increment`` ADDs a number, or
        strings to a string set): the item after it (``reply``), or None."""
        names = dict(names or {})
        values = dict(values or {})
        set_values = {**set_values, "updated_at": utc_now()}
        set_parts = []
        for index, (key, value) in enumerate(set_values.items()):
            names[f"#s{index}"] = key
            values[f":s{index}"] = value
            set_parts.append(f"#s{index} = :s{index}")
        expression = "SET " + ", ".join(set_parts)
        if increment:
            add_parts = []
            for index, (key, amount) in enumerate(increment.items()):
                names[f"#a{index}"] = key
                values[f":a{index}"] = amount
                add_parts.append(f"#a{index} :a{index}")
            expression += " ADD " + ", ".join(add_parts)
        if remove:
            for index, key in enumerate(remove):
                names[f"#r{index}"] = key
            expression += " REMOVE " + ", ".join(f"#r{i}" for i in range(len(remove)))
        try:
            response = self._client.update_item(
                TableName=self._table,
                Key={"job_id": {"S": job_id}},
                UpdateExpression=expression,
                ConditionExpression=f"attribute_exists(job_id) AND ({condition})",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues={k: to_dynamo(v) for k, v in values.items()},
                ReturnValues="ALL_NEW" if reply else "NONE",
            )
        except ClientError as exc:
            if is_conditional_failure(exc):
                raise TransitionRefused(
                    job_id, target or JobStatus.QUEUED, self.get(job_id)
                ) from exc
            raise JobStoreError(f"update_item failed for job {job_id}: {exc}") from exc
        except BotoCoreError as exc:  # the network, not the status machine
            raise JobStoreError(f"update_item failed for job {job_id}: {exc}") from exc
        return response["Attributes"] if reply else None
