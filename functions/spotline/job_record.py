"""The job record: its fields as the jobs table stores them, the names of the attributes its
indexes and leases use, and its (de)serialisation to DynamoDB's typed items."""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from spotline.contract import ErrorKind, JobStatus

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
# Set by a claim made ahead of its start (the worker prepares the next job while one runs) and
# removed when the job starts or leaves RUNNING: a RUNNING record that has it is claimed but not
# yet started, and no attempt of it is counted (its attempt id is added only at the start).
PREPARED_AT = "prepared_at"


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


# Capacity tiers (functions/spotline/tiers.py): the tier a job was last sent to, and one entry
# per move between tiers (the attempt that moved it, its error kind and peak memory).
TIER = "tier"
TIER_HISTORY = "tier_history"


@dataclass(frozen=True)
class JobError:
    kind: ErrorKind
    message: str
    peak_memory_bytes: int | None = None
    limit_bytes: int | None = None
    tier: str | None = None  # the capacity tier the attempt ran on (stacks with tiers)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": str(self.kind), "message": self.message[:2000]}
        if self.peak_memory_bytes is not None:
            data["peak_memory_bytes"] = int(self.peak_memory_bytes)
        if self.limit_bytes is not None:
            data["limit_bytes"] = int(self.limit_bytes)
        if self.tier:
            data["tier"] = self.tier
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobError:
        kind = data.get("kind", ErrorKind.UNKNOWN)
        return cls(
            kind=ErrorKind(kind) if kind in ErrorKind.__members__ else ErrorKind.UNKNOWN,
            message=str(data.get("message", "")),
            peak_memory_bytes=_opt_int(data.get("peak_memory_bytes")),
            limit_bytes=_opt_int(data.get("limit_bytes")),
            tier=str(data["tier"]) if data.get("tier") else None,
        )


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


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
    submitter: str | None = None  # the API caller who submitted it ("jwt:SUB", "iam:ARN")
    prepared_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def attempt_ids(self) -> frozenset[str]:
        found = self.extra.get(ATTEMPT_IDS)
        return frozenset(str(x) for x in found) if isinstance(found, set | list) else frozenset()

    @property
    def prepared(self) -> bool:
        """Claimed ahead by a worker that has not started it yet (it may still give it back)."""
        return self.status == JobStatus.RUNNING and self.prepared_at is not None

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
            "submitter": self.submitter,
            # Capacity tiers (functions/spotline/tiers.py): where it was sent, and every move.
            **{key: self.extra[key] for key in (TIER, TIER_HISTORY) if key in self.extra},
            "started_at": self.started_at,
            "prepared_at": self.prepared_at,
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
    "submitter",
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
    PREPARED_AT,
    RUNNING_ON,
    UNSENT_SINCE,
    UNSENT_SHARD,
}


def to_dynamo(value: Any) -> dict[str, Any]:
    def convert(v: Any) -> Any:
        if isinstance(v, float):
            return Decimal(str(v))
        if isinstance(v, dict):
            return {k: convert(x) for k, x in v.items() if x is not None}
        if isinstance(v, list):
            return [convert(x) for x in v]
        return v

    return _serializer.serialize(convert(value))


def from_dynamo(value: dict[str, Any]) -> Any:
    def convert(v: Any) -> Any:
        if isinstance(v, Decimal):
            return int(v) if v == v.to_integral_value() else float(v)
        if isinstance(v, dict):
            return {k: convert(x) for k, x in v.items()}
        if isinstance(v, list):
            return [convert(x) for x in v]
        return v

    return convert(_deserializer.deserialize(value))


def record_from_item(item: dict[str, Any]) -> JobRecord:
    data = {k: from_dynamo(v) for k, v in item.items()}
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
        submitter=data.get("submitter"),
        prepared_at=data.get(PREPARED_AT),
        extra={k: v for k, v in data.items() if k not in _KNOWN and k not in LEASE_FIELDS},
    )
