"""The job record in DynamoDB, with the status machine enforced by conditional writes.

Every write names the statuses it may come from (derived from ``contract.TRANSITIONS``), so two
writers racing can never move a job backwards: ``SUCCEEDED`` can never become ``RUNNING``
again, and only the holder of the current ownership token may record an outcome.
"""

# Length (about 740 lines, JobStore about 480): every read and conditional write of the jobs
# table is in this one class, so each write's guard on the status machine is read in one place.

from __future__ import annotations

import json
import re
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError

from spotline.contract import TRANSITIONS, ErrorKind, JobStatus
from spotline.once import is_conditional_failure

# The holder's instance id, set by every move into RUNNING and removed by every move out of it:
# the table's sparse index RunningOnIndex (template.yaml) then holds exactly the RUNNING jobs,
# so the standby asks "is my worker busy?" with a Query, not a Scan of every job ever run.
RUNNING_ON = "running_on"
RUNNING_ON_INDEX = "RunningOnIndex"
# The ownership lease (DESIGN.md "Ownership"): every RUNNING job carries when its holder's claim
# runs out (epoch seconds) and the id of the SQS message that holder keeps invisible. The holder
# renews the lease with every visibility extension; another holder takes over only after it ran
# out. Both are removed by every move out of RUNNING.
LEASE_EXPIRES_AT = "lease_expires_at"
HOLDER_MESSAGE_ID = "holder_message_id"
LEASE_FIELDS = (LEASE_EXPIRES_AT, HOLDER_MESSAGE_ID)
# Every claim adds its attempt id (a string set): each attempt writes its own result object, so
# whoever records the outcome knows which other attempts may have left one behind (a holder
# killed between its result write and its completion) and removes them.
ATTEMPT_IDS = "attempt_ids"


def attempt_id(token: str) -> str:
    """The attempt's own part of an ownership token (``worker/message/attempt``)."""
    return token.rsplit("/", 1)[-1]


_INSTANCE_ID = re.compile(r"i-[0-9a-f]{8,17}(?![0-9A-Za-z])")


def running_on(worker: str) -> str:
    """The instance a worker runs on: its WORKER_ID starts with the EC2 instance id (the launch
    template's user data). A worker without one (devstack, local runs) stands for itself."""
    found = _INSTANCE_ID.match(worker)
    return found.group() if found else worker


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JobStoreError(RuntimeError):
    """A DynamoDB call failed for a reason other than the status machine."""


class TransitionRefused(RuntimeError):
    """The conditional write was refused: the job is not in a status (or owner) that allows it."""

    def __init__(self, job_id: str, target: JobStatus, current: JobRecord | None) -> None:
        status = current.status if current else "missing"
        super().__init__(f"job {job_id}: {status} -> {target} refused")
        self.job_id = job_id
        self.target = target
        self.current = current


@dataclass(frozen=True)
class JobError:
    kind: ErrorKind
    message: str
    peak_memory_bytes: int | None = None
    limit_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": str(self.kind), "message": self.message[:2000]}
        if self.peak_memory_bytes is not None:
            data["peak_memory_bytes"] = int(self.peak_memory_bytes)
        if self.limit_bytes is not None:
            data["limit_bytes"] = int(self.limit_bytes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobError:
        kind = data.get("kind", ErrorKind.UNKNOWN)
        return cls(
            kind=ErrorKind(kind) if kind in ErrorKind.__members__ else ErrorKind.UNKNOWN,
            message=str(data.get("message", "")),
            peak_memory_bytes=_opt_int(data.get("peak_memory_bytes")),
            limit_bytes=_opt_int(data.get("limit_bytes")),
        )


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _lease(lease_s: float | None, message_id: str | None) -> dict[str, Any]:
    """The lease fields a claim sets (none without ``lease_s``: an unleased claim)."""
    if lease_s is None:
        return {}
    values: dict[str, Any] = {LEASE_EXPIRES_AT: round(time.time() + lease_s, 3)}
    if message_id:
        values[HOLDER_MESSAGE_ID] = message_id
    return values


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    status: JobStatus
    request: dict[str, Any]
    attempts: int = 0
    interruptions: int = 0
    last_error: JobError | None = None
    worker: str | None = None
    owner_token: str | None = None
    result_uri: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    sent: bool = False
    lease_expires_at: float | None = None
    holder_message_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def attempt_ids(self) -> frozenset[str]:
        found = self.extra.get(ATTEMPT_IDS)
        return frozenset(str(x) for x in found) if isinstance(found, set | list) else frozenset()

    def lease_live(self, now: float) -> bool:
        """A RUNNING job whose holder's lease has not run out (no lease: none to respect)."""
        return (
            self.status == JobStatus.RUNNING
            and self.lease_expires_at is not None
            and self.lease_expires_at > now
        )

    def to_public(self) -> dict[str, Any]:
        """What GET /jobs/{job_id} returns: no request payload, no ownership token."""
        return {
            "job_id": self.job_id,
            "status": str(self.status),
            "analyzer": self.request.get("analyzer"),
            "attempts": self.attempts,
            "interruptions": self.interruptions,
            "last_error": self.last_error.to_dict() if self.last_error else None,
            "result_uri": self.result_uri,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


# Set by ``create`` and removed by ``mark_sent``: the table's sparse index UnsentIndex
# (template.yaml) then holds exactly the jobs stored whose message was never sent, so the sweep
# (functions/sweep) finds the ones enqueue left stranded with a Query, not a Scan.
UNSENT_SINCE = "unsent_since"
UNSENT_SHARD = "unsent_shard"
UNSENT_INDEX = "UnsentIndex"
# Every job passes through the index once, and one index partition takes ~1000 writes/s (a
# throttled index throttles the table): the index key spreads jobs over this many partitions.
UNSENT_SHARDS = 16


def unsent_shard(job_id: str) -> str:
    return str(zlib.crc32(job_id.encode("utf-8")) % UNSENT_SHARDS)


_serializer = TypeSerializer()
_deserializer = TypeDeserializer()
_KNOWN = {
    "job_id",
    "status",
    "request",
    "attempts",
    "interruptions",
    "last_error",
    "worker",
    "owner_token",
    "result_uri",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
    "sent",
    RUNNING_ON,
    UNSENT_SINCE,
    UNSENT_SHARD,
}


def _to_dynamo(value: Any) -> dict[str, Any]:
    def convert(v: Any) -> Any:
        if isinstance(v, float):
            return Decimal(str(v))
        if isinstance(v, dict):
            return {k: convert(x) for k, x in v.items() if x is not None}
        if isinstance(v, list):
            return [convert(x) for x in v]
        return v

    return _serializer.serialize(convert(value))


def _from_dynamo(value: dict[str, Any]) -> Any:
    def convert(v: Any) -> Any:
        if isinstance(v, Decimal):
            return int(v) if v == v.to_integral_value() else float(v)
        if isinstance(v, dict):
            return {k: convert(x) for k, x in v.items()}
        if isinstance(v, list):
            return [convert(x) for x in v]
        return v

    return convert(_deserializer.deserialize(value))


def _record(item: dict[str, Any]) -> JobRecord:
    data = {k: _from_dynamo(v) for k, v in item.items()}
    last_error = data.get("last_error")
    return JobRecord(
        job_id=data["job_id"],
        status=JobStatus(data["status"]),
        # The request is kept as a JSON string: DynamoDB has no floats and no empty-key maps.
        request=json.loads(data.get("request", "{}")),
        attempts=int(data.get("attempts", 0)),
        interruptions=int(data.get("interruptions", 0)),
        last_error=JobError.from_dict(last_error) if isinstance(last_error, dict) else None,
        worker=data.get("worker"),
        owner_token=data.get("owner_token"),
        result_uri=data.get("result_uri"),
        created_at=data.get("created_at"),
        updated_at=data.get("updated_at"),
        started_at=data.get("started_at"),
        finished_at=data.get("finished_at"),
        sent=bool(data.get("sent", False)),
        lease_expires_at=_opt_float(data.get(LEASE_EXPIRES_AT)),
        holder_message_id=data.get(HOLDER_MESSAGE_ID),
        extra={k: v for k, v in data.items() if k not in _KNOWN and k not in LEASE_FIELDS},
    )


def predecessors(target: JobStatus) -> list[JobStatus]:
    return [status for status, nexts in TRANSITIONS.items() if target in nexts]


class JobStore:
    """Job records keyed by ``job_id``. Takes its DynamoDB client so tests can pass moto's."""

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
        return _record(item) if item else None

    # -- creation ------------------------------------------------------------------------------

    def create(self, job_id: str, request: dict[str, Any]) -> tuple[JobRecord, bool]:
        """Store a new QUEUED job; if the id exists already, return it and ``False``."""
        now = utc_now()
        item = {
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
        try:
            self._client.put_item(
                TableName=self._table,
                Item={k: _to_dynamo(v) for k, v in item.items()},
                ConditionExpression="attribute_not_exists(job_id)",
            )
        except ClientError as exc:
            if is_conditional_failure(exc):
                existing = self.get(job_id)
                if existing is None:  # deleted between the two calls: vanishingly rare
                    raise JobStoreError(f"job {job_id} exists but could not be read") from exc
                return existing, False
            raise JobStoreError(f"put_item failed for job {job_id}: {exc}") from exc
        return _record({k: _to_dynamo(v) for k, v in item.items()}), True

    def mark_sent(self, job_id: str) -> None:
        """The job's message is on the queue: it leaves UnsentIndex."""
        self._update(
            job_id,
            set_values={"sent": True},
            remove=(UNSENT_SINCE, UNSENT_SHARD),
            condition="attribute_exists(job_id)",
            return_record=False,
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
        return_record: bool = True,
    ) -> JobRecord:
        """Move a job to ``target`` if the status machine allows it from its current status.

        ``expect_owner`` additionally requires that the current ownership token matches: only
        the holder of a RUNNING job may record its outcome. A move to any other status removes
        ``running_on``; a move into RUNNING sets it only through ``claim``/``claim_queued``,
        which name the worker.
        """
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
        updates = {"status": str(target), **(set_values or {})}
        if target is not JobStatus.RUNNING:
            # Every way out of RUNNING leaves the index and ends the lease.
            remove = (*remove, RUNNING_ON, *LEASE_FIELDS)
        return self._update(
            job_id,
            set_values=updates,
            remove=remove,
            increment=increment,
            condition=condition,
            names=names,
            values=values,
            target=target,
            return_record=return_record,
        )

    def claim(
        self,
        job_id: str,
        owner: str,
        worker: str,
        expect_owner: str | None,
        *,
        lease_s: float | None = None,
        message_id: str | None = None,
    ) -> JobRecord:
        """Take a QUEUED job, or take over a RUNNING one whose holder is presumed dead.

        ``expect_owner`` is the token read just before: the takeover succeeds only if nobody
        else took the job in between, and only once the holder's lease has run out (a job
        under a live lease is never taken over). ``lease_s`` starts the new holder's lease.
        """
        now = utc_now()
        values: dict[str, Any] = {"owner_token": owner, "worker": worker, "started_at": now}
        values[RUNNING_ON] = running_on(worker)
        values.update(_lease(lease_s, message_id))
        current = self.get(job_id)
        if current is None:
            raise TransitionRefused(job_id, JobStatus.RUNNING, None)
        if current.status == JobStatus.QUEUED:
            names = {"#status": "status"}
            return self._update(
                job_id,
                set_values={"status": str(JobStatus.RUNNING), **values},
                condition="#status = :queued",
                names=names,
                values={":queued": str(JobStatus.QUEUED)},
                target=JobStatus.RUNNING,
                increment={ATTEMPT_IDS: {attempt_id(owner)}},
            )
        if current.status == JobStatus.RUNNING:
            return self._take_over(
                job_id,
                expect_owner if expect_owner is not None else current.owner_token,
                values,
            )
        raise TransitionRefused(job_id, JobStatus.RUNNING, current)

    def _take_over(self, job_id: str, old_owner: str | None, values: dict[str, Any]) -> JobRecord:
        """RUNNING -> RUNNING under a new token: one conditional write on the old token and on
        the lease having run out (or never set, by a holder from before leases)."""
        names = {"#status": "status", "#owner": "owner_token", "#lease": LEASE_EXPIRES_AT}
        condition = (
            "#status = :running AND #owner = :owner"
            " AND (attribute_not_exists(#lease) OR #lease < :now)"
        )
        if old_owner is None:
            condition = (
                "#status = :running AND attribute_not_exists(#owner)"
                " AND (attribute_not_exists(#lease) OR #lease < :now)"
            )
        condition_values: dict[str, Any] = {
            ":running": str(JobStatus.RUNNING),
            ":now": round(time.time(), 3),
        }
        if old_owner is not None:
            condition_values[":owner"] = old_owner
        return self._update(
            job_id,
            set_values=values,
            condition=condition,
            names=names,
            values=condition_values,
            target=JobStatus.RUNNING,
            increment={ATTEMPT_IDS: {attempt_id(str(values["owner_token"]))}},
        )

    def renew_lease(self, job_id: str, owner: str, lease_s: float) -> None:
        """The holder extends its lease (with its message's visibility). TransitionRefused:
        the job is no longer ours (taken over after our lease ran out, or finished)."""
        names = {"#status": "status", "#owner": "owner_token"}
        self._update(
            job_id,
            set_values=_lease(lease_s, None),
            condition="#status = :running AND #owner = :owner",
            names=names,
            values={":running": str(JobStatus.RUNNING), ":owner": owner},
            target=JobStatus.RUNNING,
            return_record=False,
        )

    def give_back(self, job_id: str, owner: str) -> None:
        """RUNNING -> QUEUED without counting anything: the attempt never ran or was cut short
        by an AWS fault that is not the job's (DESIGN.md: infrastructure faults are never the
        job's attempt)."""
        self.transition(
            job_id,
            JobStatus.QUEUED,
            expect_owner=owner,
            set_values={},
            remove=("owner_token",),
            return_record=False,
        )

    def claim_queued(
        self,
        job_id: str,
        owner: str,
        worker: str,
        *,
        lease_s: float | None = None,
        message_id: str | None = None,
    ) -> tuple[JobRecord, bool]:
        """QUEUED -> RUNNING in one conditional write, without a read first (a worker's
        common case). Returns the claimed record and whether the job had started before (so
        it may have left a checkpoint). TransitionRefused for any other status, or none."""
        now = utc_now()
        values: dict[str, Any] = {
            "owner_token": owner,
            "worker": worker,
            "started_at": now,
            "updated_at": now,
        }
        values[RUNNING_ON] = running_on(worker)
        values.update(_lease(lease_s, message_id))
        names = {"#status": "status", **{f"#s{i}": key for i, key in enumerate(values)}}
        try:
            response = self._client.update_item(
                TableName=self._table,
                Key={"job_id": {"S": job_id}},
                UpdateExpression="SET #status = :running, "
                + ", ".join(f"#s{i} = :s{i}" for i in range(len(values)))
                + " ADD #ids :ids",
                ConditionExpression="#status = :queued",
                ExpressionAttributeNames={**names, "#ids": ATTEMPT_IDS},
                ExpressionAttributeValues={
                    ":running": {"S": str(JobStatus.RUNNING)},
                    ":queued": {"S": str(JobStatus.QUEUED)},
                    ":ids": {"SS": [attempt_id(owner)]},
                    **{f":s{i}": _to_dynamo(value) for i, value in enumerate(values.values())},
                },
                # The old item: what the job was (attempts, started before?) plus what we set.
                ReturnValues="ALL_OLD",
            )
        except ClientError as exc:
            if is_conditional_failure(exc):
                raise TransitionRefused(job_id, JobStatus.RUNNING, None) from exc
            raise JobStoreError(f"update_item failed for job {job_id}: {exc}") from exc
        except BotoCoreError as exc:  # the network, not the status machine
            raise JobStoreError(f"update_item failed for job {job_id}: {exc}") from exc
        old = _record(response["Attributes"])
        record = replace(
            old,
            status=JobStatus.RUNNING,
            owner_token=owner,
            worker=worker,
            started_at=now,
            updated_at=now,
            lease_expires_at=values.get(LEASE_EXPIRES_AT),
            holder_message_id=values.get(HOLDER_MESSAGE_ID),
            extra={**old.extra, ATTEMPT_IDS: {*old.attempt_ids, attempt_id(owner)}},
        )
        return record, old.started_at is not None

    def complete(self, job_id: str, owner: str, result_uri: str) -> JobRecord:
        return self.transition(
            job_id,
            JobStatus.SUCCEEDED,
            expect_owner=owner,
            set_values={"result_uri": result_uri, "finished_at": utc_now()},
        )

    def complete_quietly(self, job_id: str, owner: str, result_uri: str) -> None:
        """``complete()`` without the record sent back (the worker needs none): the same
        conditional write, a lighter reply."""
        self.transition(
            job_id,
            JobStatus.SUCCEEDED,
            expect_owner=owner,
            set_values={"result_uri": result_uri, "finished_at": utc_now()},
            return_record=False,
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

    def _update(
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
        return_record: bool = True,
    ) -> JobRecord:
        """The conditional UpdateItem behind every write (``increment`` ADDs a number, or
        strings to a string set). ``return_record=False`` asks
        DynamoDB for no reply item; the JobRecord returned then holds only ``job_id``."""
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
                ExpressionAttributeValues={k: _to_dynamo(v) for k, v in values.items()},
                ReturnValues="ALL_NEW" if return_record else "NONE",
            )
        except ClientError as exc:
            if is_conditional_failure(exc):
                raise TransitionRefused(
                    job_id, target or JobStatus.QUEUED, self.get(job_id)
                ) from exc
            raise JobStoreError(f"update_item failed for job {job_id}: {exc}") from exc
        except BotoCoreError as exc:  # the network, not the status machine
            raise JobStoreError(f"update_item failed for job {job_id}: {exc}") from exc
        if not return_record:
            return JobRecord(job_id=job_id, status=target or JobStatus.QUEUED, request={})
        return _record(response["Attributes"])

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
                    yield _record(item)
                    found += 1
                    if found >= limit:
                        return
                if "LastEvaluatedKey" not in response:
                    break
                kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]
