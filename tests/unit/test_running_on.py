"""The sparse RunningOnIndex: ``running_on`` exists exactly while a job is RUNNING, and the
standby counts its worker's jobs with a Query of it (never a Scan of every job ever run)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import boto3
import pytest

from devstack.cfn import Stack
from spot_events.fleet import Workload
from spotline.contract import TRANSITIONS, ErrorKind, JobStatus
from spotline.jobstore import (
    RUNNING_ON,
    RUNNING_ON_INDEX,
    JobError,
    JobStore,
    running_on,
    utc_now,
)

REQUEST = {"analyzer": "echo", "input": 1}
ERROR = JobError(ErrorKind.ANALYZER_ERROR, "flaky")
SPOT = "i-0123456789abcdef0"  # a worker whose WORKER_ID is its instance id (the user data)
OTHER = "i-0fedcba987654321f"
LOCAL = "devstack-worker-a"  # no instance: the worker id stands for itself


@pytest.mark.parametrize(
    ("worker", "instance"),
    [
        (SPOT, SPOT),
        (f"{SPOT}/gpu1", SPOT),  # anything after the instance id
        ("i-0123abcd", "i-0123abcd"),  # the old 8-digit ids
        (LOCAL, LOCAL),
        ("i-0123456789abcdef0x", "i-0123456789abcdef0x"),  # no separator after the id
        ("ip-10-0-0-1", "ip-10-0-0-1"),
    ],
)
def test_running_on_is_the_instance_id_a_worker_id_starts_with(worker: str, instance: str) -> None:
    assert running_on(worker) == instance


# -- presence iff RUNNING, over every transition the store can make ----------------------------


def raw_item(store: JobStore, job_id: str) -> dict[str, Any]:
    item = boto3.client("dynamodb").get_item(
        TableName=store._table, Key={"job_id": {"S": job_id}}, ConsistentRead=True
    )["Item"]
    return dict(item)


Step = tuple[str, Callable[[JobStore, str], Any]]

# Every write of JobStore that can change a status, and the worker's own dead-lettering write
# (gpu_worker/consumer.py, ``_dead_letter(ran=True)``), in paths from a new job. Bookkeeping
# writes ride along: they must leave the attribute as it is.
PATHS: dict[str, list[Step]] = {
    "claim, complete_quietly": [
        ("claim", lambda s, j: s.claim(j, "t1", SPOT, expect_owner=None)),
        ("mark_sent", lambda s, j: s.mark_sent(j)),
        ("complete_quietly", lambda s, j: s.complete_quietly(j, "t1", "s3://b/r")),
    ],
    "claim_queued, complete_quietly": [
        ("claim_queued", lambda s, j: s.claim_queued(j, "t1", SPOT)),
        ("complete_quietly", lambda s, j: s.complete_quietly(j, "t1", "s3://b/r")),
    ],
    "retry, re-claim elsewhere, takeover, interruption requeue": [
        ("claim_queued", lambda s, j: s.claim_queued(j, "t1", SPOT)),
        ("release", lambda s, j: s.release(j, "t1", ERROR)),
        ("claim_queued", lambda s, j: s.claim_queued(j, "t2", LOCAL)),
        ("set_fields", lambda s, j: s.set_fields(j, {"note": "bookkeeping"})),
        ("takeover", lambda s, j: s.claim(j, "t3", f"{OTHER}/gpu0", expect_owner="t2")),
        ("interrupted", lambda s, j: s.release(j, "t3", ERROR, interrupted=True)),
    ],
    "dead letter while running, redrive, claim again": [
        ("claim", lambda s, j: s.claim(j, "t1", SPOT, expect_owner=None)),
        ("dead_letter", lambda s, j: s.dead_letter(j, ERROR, expect_owner="t1")),
        ("redrive", lambda s, j: s.redrive(j, reset_attempts=True)),
        ("claim", lambda s, j: s.claim(j, "t2", OTHER, expect_owner=None)),
    ],
    "the worker's dead-lettering write after a failed run": [
        ("claim_queued", lambda s, j: s.claim_queued(j, "t1", SPOT)),
        (
            "worker dead-letters",
            lambda s, j: s.transition(
                j,
                JobStatus.DEAD_LETTERED,
                expect_owner="t1",
                set_values={"last_error": ERROR.to_dict(), "finished_at": utc_now()},
                remove=("owner_token",),
                increment={"attempts": 1},
            ),
        ),
    ],
    "invalid request dead-lettered from the queue": [
        ("dead_letter", lambda s, j: s.dead_letter(j, ERROR)),
    ],
}


def test_running_on_is_present_exactly_while_running_across_every_transition(
    job_store: JobStore,
) -> None:
    covered: set[tuple[JobStatus, JobStatus]] = set()
    for number, (path, steps) in enumerate(PATHS.items()):
        job_id = f"job-{number}"
        job_store.create(job_id, REQUEST)
        assert RUNNING_ON not in raw_item(job_store, job_id), "a new job is QUEUED"
        for name, step in steps:
            before = raw_item(job_store, job_id)
            step(job_store, job_id)
            item = raw_item(job_store, job_id)
            status = JobStatus(item["status"]["S"])
            where = f"{path}: after {name} ({status})"
            if before["status"]["S"] != status or name == "takeover":
                covered.add((JobStatus(before["status"]["S"]), status))
            if status is JobStatus.RUNNING:
                assert item[RUNNING_ON]["S"] == running_on(item["worker"]["S"]), where
            else:
                assert RUNNING_ON not in item, where
            assert job_store.get(job_id).extra.get(RUNNING_ON) is None, "not a user field"
    every_edge = {(source, target) for source, targets in TRANSITIONS.items() for target in targets}
    assert covered == every_edge


# -- the standby's question, through the index -------------------------------------------------


class Calls:
    """The DynamoDB operations a client made, with what each read."""

    def __init__(self, client: Any) -> None:
        self.made: list[tuple[str, int]] = []
        client.meta.events.register("after-call.dynamodb.*", self._record)

    def _record(self, http_response: Any, parsed: dict[str, Any], model: Any, **_: Any) -> None:
        self.made.append((model.name, int(parsed.get("ScannedCount", 0))))


@pytest.fixture
def dynamodb(stack: Stack) -> Any:
    return boto3.client("dynamodb")


@pytest.fixture
def workload(stack: Stack, dynamodb: Any) -> Workload:
    return Workload(None, JobStore(dynamodb, stack.ref("JobsTable")), page_size=2)


def test_in_flight_queries_the_index_and_reads_only_running_jobs(
    job_store: JobStore, workload: Workload, dynamodb: Any
) -> None:
    for number in range(30):  # history: finished jobs of the same instance
        job_id = f"done-{number}"
        job_store.create(job_id, REQUEST)
        job_store.claim_queued(job_id, f"d{number}", SPOT)
        job_store.complete_quietly(job_id, f"d{number}", "s3://b/r")
    for number, worker in enumerate([SPOT, SPOT, f"{SPOT}/gpu1", OTHER, LOCAL]):
        job_store.create(f"run-{number}", REQUEST)
        job_store.claim_queued(f"run-{number}", f"r{number}", worker)
    job_store.create("waiting", REQUEST)
    calls = Calls(dynamodb)

    counts = {holder: workload.in_flight(holder) for holder in (SPOT, OTHER, LOCAL, "i-0abc")}

    assert counts == {SPOT: 3, OTHER: 1, LOCAL: 1, "i-0abc": 0}
    assert {name for name, _ in calls.made} == {"Query"}
    assert len([call for call in calls.made if call[0] == "Query"]) > 4, "pages of 2 followed"
    assert sum(read for _, read in calls.made) == 5, "the 30 finished jobs are never read"


def test_in_flight_falls_as_the_instances_jobs_leave_running(
    job_store: JobStore, workload: Workload
) -> None:
    for job_id in ("a", "b", "c"):
        job_store.create(job_id, REQUEST)
        job_store.claim_queued(job_id, f"t-{job_id}", SPOT)
    assert workload.in_flight(SPOT) == 3
    job_store.complete_quietly("a", "t-a", "s3://b/r")
    job_store.release("b", "t-b", ERROR, interrupted=True)
    assert workload.in_flight(SPOT) == 1
    job_store.claim("c", "t-c2", OTHER, expect_owner="t-c")  # taken over: now the other's
    assert (workload.in_flight(SPOT), workload.in_flight(OTHER)) == (0, 1)


def test_a_job_claimed_before_the_upgrade_counts_once_reclaimed(
    job_store: JobStore, workload: Workload
) -> None:
    """Migration: a RUNNING job written by the old code has no running_on and is invisible to
    the index until its holder finishes it or its redelivered message is claimed again."""
    job_store.create("old", REQUEST)
    boto3.client("dynamodb").update_item(
        TableName=job_store._table,
        Key={"job_id": {"S": "old"}},
        UpdateExpression="SET #s = :running, owner_token = :t, worker = :w",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={
            ":running": {"S": str(JobStatus.RUNNING)},
            ":t": {"S": "old-token"},
            ":w": {"S": SPOT},
        },
    )
    assert workload.in_flight(SPOT) == 0
    job_store.claim("old", "new-token", SPOT, expect_owner="old-token")  # the redelivery
    assert workload.in_flight(SPOT) == 1


def test_the_provisioned_table_has_the_sparse_keys_only_index(stack: Stack) -> None:
    table = boto3.client("dynamodb").describe_table(TableName=stack.ref("JobsTable"))["Table"]
    (index,) = [i for i in table["GlobalSecondaryIndexes"] if i["IndexName"] == RUNNING_ON_INDEX]
    assert index["KeySchema"] == [{"AttributeName": RUNNING_ON, "KeyType": "HASH"}]
    assert index["Projection"] == {"ProjectionType": "KEYS_ONLY"}
