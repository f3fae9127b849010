"""The one "claim once per key, with a lease" in DynamoDB (spotline.once)."""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError

from devstack.cfn import Stack
from spotline.once import OnceLedger, is_conditional_failure


@pytest.fixture
def clock() -> list[float]:
    return [1_000_000.0]


@pytest.fixture
def once(stack: Stack, clock: list[float]) -> OnceLedger:
    return OnceLedger(
        boto3.client("dynamodb"),
        stack.ref("AlarmDeliveriesTable"),
        lease_s=60,
        clock=lambda: clock[0],
    )


def test_a_key_is_held_by_one_holder_until_its_lease_runs_out(
    once: OnceLedger, clock: list[float]
) -> None:
    assert once.claim("k", "first")
    assert not once.claim("k", "second")
    clock[0] += 61  # the first holder died mid-work
    assert once.claim("k", "second")


def test_only_the_holder_releases_its_key(once: OnceLedger) -> None:
    assert once.claim("k", "first")
    once.release("k", "someone-else")
    assert not once.claim("k", "second")
    once.release("k", "first")
    assert once.claim("k", "second")


def test_a_mark_ends_the_lease_and_only_a_retry_mark_frees_the_key(
    stack: Stack, clock: list[float]
) -> None:
    once = OnceLedger(
        boto3.client("dynamodb"),
        stack.ref("AlarmDeliveriesTable"),
        holding="SENDING",
        retry_marks=("FAILED",),
        clock=lambda: clock[0],
    )
    assert once.claim("k") and once.status("k") == "SENDING"
    once.mark("k", "FAILED")
    assert once.claim("k")
    once.mark("k", "DELIVERED")
    clock[0] += 10**6
    assert not once.claim("k") and once.status("k") == "DELIVERED"


def test_claimed_for_good_the_first_holder_and_its_retries_keep_the_key(
    once: OnceLedger,
) -> None:
    client, table = once.client, once.table
    client.put_item(TableName=table, Item={"pk": {"S": "w"}, "work": {"S": "x"}})
    assert once.claim_for_good("w", "a", requires="absent_attribute") is None
    claimed = once.claim_for_good("w", "a", requires="work")
    assert claimed is not None and claimed["holder"] == {"S": "a"}
    assert once.claim_for_good("w", "a", requires="work") is not None  # a's retry
    assert once.claim_for_good("w", "b", requires="work") is None


def test_a_refused_condition_is_told_apart_from_a_failed_call() -> None:
    def error(code: str) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": ""}}, "PutItem")

    assert is_conditional_failure(error("ConditionalCheckFailedException"))
    assert not is_conditional_failure(error("ProvisionedThroughputExceededException"))
    assert not is_conditional_failure(RuntimeError("ConditionalCheckFailedException"))
