"""The stranded-job sweep: a job stored QUEUED whose message was never sent (enqueue stopped
between the two and the client never retried) is sent by a scheduled function, once."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

import boto3
import pytest

from devstack.cfn import Stack, load_template
from devstack.lambdas import LambdaContext, load_event, load_handler_module
from spotline.contract import JobStatus
from spotline.jobstore import UNSENT_INDEX, UNSENT_SHARDS, UNSENT_SINCE, JobStore, unsent_shard
from spotline.metrics_names import FunctionMetric
from spotline.queue import JobQueue, QueueError
from sweep import stranded
from tests.unit.conftest import emitted_metrics

REQUEST = {"analyzer": "echo", "input": {"n": 1}}
LOG = logging.getLogger("test_sweep")
TEMPLATE = load_template()


@pytest.fixture
def sweeper(stack: Stack) -> ModuleType:
    """The real sweep handler, configured from the template (threshold: its default)."""
    return load_handler_module("sweep.app", stack, "SweepFunction")


def later(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def sent_ids(queue: JobQueue) -> list[str]:
    found = []
    while batch := queue.receive(max_messages=10, wait_s=0):
        for message in batch:
            found.append(json.loads(message.body)["job_id"])
            queue.delete(message.receipt_handle)
    return found


def run(store: JobStore, queue: JobQueue, now: datetime, **kwargs: Any) -> stranded.SweepResult:
    return stranded.sweep(store, queue, now=now, stranded_after_s=120, logger=LOG, **kwargs)


def test_a_stored_job_never_sent_is_sent_once_it_is_older_than_the_threshold(
    job_store: JobStore, queue: JobQueue
) -> None:
    job_store.create("stranded", REQUEST)
    assert run(job_store, queue, later(60)).sent == []  # enqueue may still be sending it
    result = run(job_store, queue, later(121))
    assert result.sent == ["stranded"] and result.failed == {}
    assert sent_ids(queue) == ["stranded"]
    record = job_store.get("stranded")
    assert record is not None and record.sent and record.status == JobStatus.QUEUED
    assert run(job_store, queue, later(3600)).sent == []  # it left the index
    assert sent_ids(queue) == []


def test_the_message_is_the_jobs_own(job_store: JobStore, queue: JobQueue) -> None:
    job_store.create("stranded", REQUEST)
    run(job_store, queue, later(121))
    (message,) = queue.receive(max_messages=1, wait_s=0)
    assert json.loads(message.body) == {
        "job_id": "stranded",
        "request": REQUEST,
        "interruptions": 0,
    }


def test_a_job_enqueue_sent_never_enters_the_sweep(job_store: JobStore, queue: JobQueue) -> None:
    job_store.create("sent", REQUEST)
    job_store.mark_sent("sent")
    item = boto3.client("dynamodb").get_item(
        TableName=job_store._table, Key={"job_id": {"S": "sent"}}
    )["Item"]
    assert UNSENT_SINCE not in item
    assert list(job_store.unsent_before(later(3600))) == []


def test_a_job_a_worker_already_took_is_cleared_not_sent_again(
    job_store: JobStore, queue: JobQueue
) -> None:
    # The send succeeded and only the write after it failed: the worker has the message.
    job_store.create("running", REQUEST)
    job_store.claim_queued("running", "token", "worker-a")
    result = run(job_store, queue, later(121))
    assert (result.sent, result.cleared) == ([], ["running"])
    assert sent_ids(queue) == []
    assert list(job_store.unsent_before(later(3600))) == []
    assert job_store.get("running").status == JobStatus.RUNNING


def test_a_request_that_no_longer_validates_is_sent_for_the_worker_to_refuse(
    job_store: JobStore, queue: JobQueue
) -> None:
    # Stored under other rules (drills on, a higher cap): the worker answers INVALID_INPUT and
    # dead-letters it, which alerts; the sweep keeps one rule-keeper, not two.
    request = {"analyzer": "memory_hog", "input": None, "max_runtime_s": 43200}
    job_store.create("outdated", request)
    assert run(job_store, queue, later(121)).sent == ["outdated"]
    assert sent_ids(queue) == ["outdated"]


def test_jobs_in_every_shard_are_found_and_a_run_stops_at_its_limit(
    job_store: JobStore, queue: JobQueue
) -> None:
    job_ids = [f"job-{n:03d}" for n in range(60)]
    assert len({unsent_shard(j) for j in job_ids}) == UNSENT_SHARDS
    for job_id in job_ids:
        job_store.create(job_id, REQUEST)
    first = run(job_store, queue, later(121), limit=25)
    assert len(first.sent) == 25
    second = run(job_store, queue, later(121))
    assert sorted(first.sent + second.sent) == job_ids
    assert sorted(sent_ids(queue)) == job_ids


class RefusingQueue(JobQueue):
    def __init__(self, queue: JobQueue, refuse: str) -> None:
        super().__init__(queue.client, queue.url)
        self.refuse = refuse

    def send(self, message: Any, *, delay_s: int = 0) -> str:
        if message.job_id == self.refuse:
            raise QueueError("send_message failed: ServiceUnavailable")
        return super().send(message, delay_s=delay_s)


def test_one_job_that_cannot_be_sent_does_not_stop_the_others(
    job_store: JobStore, queue: JobQueue
) -> None:
    for job_id in ("a", "b", "c"):
        job_store.create(job_id, REQUEST)
    result = run(job_store, RefusingQueue(queue, "b"), later(121))
    assert sorted(result.sent) == ["a", "c"] and list(result.failed) == ["b"]
    assert [r.job_id for r in job_store.unsent_before(later(3600))] == ["b"]  # next run's
    assert sorted(sent_ids(queue)) == ["a", "c"]


def test_the_handler_counts_what_it_sent_and_fails_the_run_when_a_job_was_not(
    stack: Stack,
    job_store: JobStore,
    queue: JobQueue,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    event, context = load_event("sweep_scheduled"), LambdaContext(function_name="SweepFunction")
    for job_id in ("a", "b"):
        job_store.create(job_id, REQUEST)
    sweeper = load_handler_module("sweep.app", stack, "SweepFunction")
    assert sweeper.settings.stranded_after_s == 120  # the template's StrandedJobAfterSeconds
    assert sweeper.handler(event, context)["sent"] == []  # too young for that threshold
    sweeper = load_handler_module("sweep.app", stack, "SweepFunction", {"STRANDED_AFTER_S": "0"})
    monkeypatch.setattr(sweeper, "job_queue", lambda: RefusingQueue(queue, "b"))
    # Failing the run is the SweepFunction-errors alarm; the next run tries "b" again.
    with pytest.raises(stranded.StrandedJobsNotSent, match="1 stranded job"):
        sweeper.handler(event, context)
    assert sent_ids(queue) == ["a"]
    counts = [
        m[FunctionMetric.STRANDED_JOBS_SENT] for m in emitted_metrics(capsys.readouterr().out)
    ]
    assert counts == [[0.0], [1.0]]


# -- the template: the index, the schedule, least privilege ----------------------------------


def test_the_provisioned_table_has_the_sparse_sharded_unsent_index(stack: Stack) -> None:
    table = boto3.client("dynamodb").describe_table(TableName=stack.ref("JobsTable"))["Table"]
    (index,) = [i for i in table["GlobalSecondaryIndexes"] if i["IndexName"] == UNSENT_INDEX]
    assert index["KeySchema"] == [
        {"AttributeName": "unsent_shard", "KeyType": "HASH"},
        {"AttributeName": UNSENT_SINCE, "KeyType": "RANGE"},
    ]
    assert index["Projection"]["ProjectionType"] == "INCLUDE"
    assert set(index["Projection"]["NonKeyAttributes"]) == {"status", "request"}


def test_the_sweep_runs_on_a_schedule_after_enqueue_could_have_finished() -> None:
    props = TEMPLATE["Resources"]["SweepFunction"]["Properties"]
    (event,) = props["Events"].values()
    assert event["Type"] == "Schedule"
    assert event["Properties"]["Schedule"] == {"Ref": "StrandedJobSweepRate"}
    assert props["Environment"]["Variables"]["STRANDED_AFTER_S"] == {
        "Ref": "StrandedJobAfterSeconds"
    }
    threshold = TEMPLATE["Parameters"]["StrandedJobAfterSeconds"]
    enqueue_timeout = TEMPLATE["Resources"]["EnqueueFunction"]["Properties"].get(
        "Timeout", TEMPLATE["Globals"]["Function"]["Timeout"]
    )
    assert threshold["MinValue"] > enqueue_timeout
    assert threshold["Default"] == stranded.DEFAULT_STRANDED_AFTER_S
    assert props["EventInvokeConfig"]["MaximumRetryAttempts"] == 0  # the next run is the retry


def test_the_sweep_may_query_the_index_update_jobs_and_send_to_the_jobs_queue_only() -> None:
    policies = TEMPLATE["Resources"]["SweepFunction"]["Properties"]["Policies"]
    assert {"SQSSendMessagePolicy": {"QueueName": {"Fn::GetAtt": ["JobsQueue", "QueueName"]}}} in (
        policies
    )
    statements = [s for p in policies if "Statement" in p for s in p["Statement"]]
    granted = {
        (s["Action"], json.dumps(s["Resource"], sort_keys=True))
        for s in statements
        if "Fn::If" not in s
    }
    assert granted == {
        ("dynamodb:Query", json.dumps({"Fn::Sub": "${JobsTable.Arn}/index/UnsentIndex"})),
        ("dynamodb:UpdateItem", json.dumps({"Fn::GetAtt": ["JobsTable", "Arn"]})),
    }
    # With a larger tier only: its queue, and a read of the tier a stranded job was stored for.
    tiered = {
        (s["Fn::If"][1]["Action"], json.dumps(s["Fn::If"][1]["Resource"], sort_keys=True))
        for s in statements
        if "Fn::If" in s
    }
    assert all(s["Fn::If"][0] == "UseLargeTier" for s in statements if "Fn::If" in s)
    assert tiered == {
        ("sqs:SendMessage", json.dumps({"Fn::GetAtt": ["LargeTierQueue", "Arn"]})),
        ("dynamodb:GetItem", json.dumps({"Fn::GetAtt": ["JobsTable", "Arn"]})),
    }


# -- capacity tiers: a stranded job goes where enqueue would have sent it ----------------------


def test_a_job_stored_for_a_tier_is_sent_to_that_tiers_queue(
    job_store: JobStore, queue: JobQueue
) -> None:
    sqs = boto3.client("sqs")
    large = JobQueue(sqs, sqs.create_queue(QueueName="unit-sweep-large")["QueueUrl"])
    job_store.create("big", REQUEST, fields={"tier": "large"})
    job_store.create("small", REQUEST, fields={"tier": "default"})
    job_store.create("plain", REQUEST)
    result = run(job_store, queue, later(121), tier_queues={"default": queue, "large": large})
    assert sorted(result.sent) == ["big", "plain", "small"] and result.failed == {}
    assert sent_ids(large) == ["big"]
    assert sorted(sent_ids(queue)) == ["plain", "small"]


def test_a_tier_with_no_queue_here_falls_back_to_the_jobs_queue(
    job_store: JobStore, queue: JobQueue, caplog: pytest.LogCaptureFixture
) -> None:
    job_store.create("orphan", REQUEST, fields={"tier": "large"})
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        result = run(job_store, queue, later(121), tier_queues={"default": queue})
    assert result.sent == ["orphan"]
    assert sent_ids(queue) == ["orphan"]  # never left unsent
    assert "tier has no queue here" in caplog.text


def test_the_template_gives_the_sweep_the_tiers_and_their_queue() -> None:
    sweep = TEMPLATE["Resources"]["SweepFunction"]["Properties"]
    enqueue = TEMPLATE["Resources"]["EnqueueFunction"]["Properties"]
    assert (
        sweep["Environment"]["Variables"]["JOB_TIERS"]
        == enqueue["Environment"]["Variables"]["JOB_TIERS"]
    )
