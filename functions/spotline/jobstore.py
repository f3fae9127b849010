"""The job store: job records in DynamoDB, with the status machine enforced by conditional writes.

``JobStore`` is the one class the worker, the functions and the tools take; it is built in
layers, each a module whose name says what it holds:

- ``job_record``: the record type, its field and index attribute names, its (de)serialisation;
- ``job_queries``: reads (one job, and the RunningOnIndex, UnsentIndex and dead-lettered queries);
- ``job_writes``: creation and the status machine's conditional moves;
- ``job_claims``: ownership: claim, takeover after the lease ran out, lease renewal, give back.

Every name that was importable from here still is.
"""

from __future__ import annotations

from spotline.job_claims import JobClaims
from spotline.job_record import (
    ATTEMPT_IDS,
    HOLDER_MESSAGE_ID,
    LEASE_EXPIRES_AT,
    LEASE_FIELDS,
    RUNNING_ON,
    RUNNING_ON_INDEX,
    UNSENT_INDEX,
    UNSENT_SHARD,
    UNSENT_SHARDS,
    UNSENT_SINCE,
    JobError,
    JobRecord,
    JobStoreError,
    TransitionRefused,
    attempt_id,
    running_on,
    unsent_shard,
    utc_now,
)
from spotline.job_writes import predecessors

__all__ = [
    "ATTEMPT_IDS",
    "HOLDER_MESSAGE_ID",
    "LEASE_EXPIRES_AT",
    "LEASE_FIELDS",
    "RUNNING_ON",
    "RUNNING_ON_INDEX",
    "UNSENT_INDEX",
    "UNSENT_SHARD",
    "UNSENT_SHARDS",
    "UNSENT_SINCE",
    "JobError",
    "JobRecord",
    "JobStore",
    "JobStoreError",
    "TransitionRefused",
    "attempt_id",
    "predecessors",
    "running_on",
    "unsent_shard",
    "utc_now",
]


class JobStore(JobClaims):
    """Job records keyed by ``job_id``. Takes its DynamoDB client so tests can pass moto's."""
