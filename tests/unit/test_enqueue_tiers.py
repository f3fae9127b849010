"""Enqueue with tiers (JOB_TIERS): a job starts on the smallest tier that fits its analyzer's
declared memory (the catalog's ``memory_mib``)."""

from __future__ import annotations

import json
from types import ModuleType

import boto3
import pytest

from devstack.cfn import Stack
from devstack.lambdas import LambdaContext, load_event, load_handler_module
from spotline.jobstore import JobStore
from spotline.queue import JobQueue
from spotline.settings import MissingSetting
from spotline.tiers import Tier, parse_tiers, tier_for

MIB = 1024 * 1024


@pytest.fixture
def large_queue(stack: Stack) -> JobQueue:
    sqs = boto3.client("sqs")
    return JobQueue(sqs, sqs.create_queue(QueueName="unit-large-tier")["QueueUrl"])


@pytest.fixture
def tiered_enqueue(stack: Stack, large_queue: JobQueue) -> ModuleType:
    # text_embed declares 2048 MiB (functions/spotline/catalog.json): more than this default.
    tiers = f"default=1024={stack.ref('JobsQueue')},large=4096={large_queue.url}"
    return load_handler_module("enqueue.app", stack, "EnqueueFunction", {"JOB_TIERS": tiers})


def submit(module: ModuleType, event_name: str) -> str:
    response = module.handler(load_event(event_name), LambdaContext())
    assert response["statusCode"] == 202, response["body"]
    return json.loads(response["body"])["job_id"]


def test_a_job_whose_analyzer_needs_more_starts_on_the_larger_tier(
    tiered_enqueue: ModuleType, large_queue: JobQueue, queue: JobQueue, job_store: JobStore
) -> None:
    job_id = submit(tiered_enqueue, "enqueue_submit_text_embed")

    (message,) = large_queue.receive(max_messages=10, wait_s=0)
    assert json.loads(message.body)["job_id"] == job_id
    assert queue.approximate_counts() == (0, 0)
    record = job_store.get(job_id)
    assert record.extra["tier"] == "large" and record.sent


def test_a_job_that_declares_nothing_starts_on_the_default_queue(
    tiered_enqueue: ModuleType, large_queue: JobQueue, queue: JobQueue, job_store: JobStore
) -> None:
    job_id = submit(tiered_enqueue, "enqueue_submit")

    (message,) = queue.receive(max_messages=10, wait_s=0)
    assert json.loads(message.body)["job_id"] == job_id
    assert large_queue.approximate_counts() == (0, 0)
    assert "tier" not in job_store.get(job_id).extra


def test_tiers_are_read_smallest_first_and_the_largest_takes_what_none_fits() -> None:
    tiers = parse_tiers("large=4096=https://q/l, default=1024=https://q/d")
    assert [t.name for t in tiers] == ["default", "large"]
    assert tier_for(tiers, 512 * MIB) == Tier("default", 1024 * MIB, "https://q/d")
    assert tier_for(tiers, 2048 * MIB).name == "large"
    assert tier_for(tiers, 9000 * MIB).name == "large"  # fails there, with the usual dead letter
    assert tier_for(tiers, None) is None and tier_for((), 512 * MIB) is None


@pytest.mark.parametrize("text", ["default=1024", "default=lots=https://q/d", "=1=https://q"])
def test_a_malformed_job_tiers_fails_the_cold_start_with_its_name(stack: Stack, text: str) -> None:
    with pytest.raises(MissingSetting, match="JOB_TIERS"):
        load_handler_module("enqueue.app", stack, "EnqueueFunction", {"JOB_TIERS": text})
