"""The dead-letter function: the real handler, events from events/, moto, a local webhook sink."""

from __future__ import annotations

import copy
import json
import socket
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities import parameters

from dead_letter.callbacks import TEST_MODE_ENV
from dead_letter.dead_letters import DeadLetter, DeadLetterConfig
from devstack.cfn import Stack, function_environment
from devstack.deadletters import event_record, store_secret
from devstack.lambdas import LambdaContext, load_event, load_handler_module
from devstack.motoserver import wait_until
from devstack.sink import Received, WebhookSink
from spotline.contract import ErrorKind, JobStatus
from spotline.jobstore import JobError, JobStore
from spotline.notified import CALLBACK, delivered_for
from spotline.standard_webhooks import generate_key_pair, verify
from spotline.webhooks import WebhookClient
from tests.unit.deadline_fixtures import CountdownContext, HostileServer, slow_headers
from tests.unit.ed25519_reference import receiver_accepts

SIGNING_KEY, PUBLIC_KEY = generate_key_pair()
WORKER_JOB = "6f0c2a8e-3b1d-4c7a-9e55-0d2b8f1a4c19"  # events/dead_letter_worker.json
REDRIVE_JOB = "a3d5f7b9-1c2e-4f60-8a7b-9c0d1e2f3a4b"  # events/dead_letter_redrive.json


@pytest.fixture
def sink() -> Iterator[WebhookSink]:
    with WebhookSink() as server:
        yield server


@pytest.fixture
def dead_letter(
    stack: Stack, sink: WebhookSink, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ModuleType]:
    """The real handler module, its webhook URLs and signing key in moto SSM/Secrets Manager."""
    names = stack.parameters
    store_secret(boto3.client, names["DeadLetterSlackWebhookSecret"], sink.url + "/slack")
    store_secret(boto3.client, names["DeadLetterDiscordWebhookSecret"], sink.url + "/discord")
    store_secret(boto3.client, names["NoticeSigningKeySecret"], SIGNING_KEY)
    parameters.clear_caches()  # a fresh container: no URL cached from another test
    monkeypatch.setenv(TEST_MODE_ENV, "true")
    module = load_handler_module(
        "dead_letter.app", stack, "DeadLetterFunction", {"NOTICE_PUBLIC_KEY": PUBLIC_KEY}
    )
    # Same retries, no backoff sleeps: the tests stay fast.
    service = module.service()
    service.alerts.client = WebhookClient(max_attempts=3, backoff_s=0)
    service.callbacks.client = WebhookClient(
        session=service.callbacks.client.session, max_attempts=2, backoff_s=0
    )
    yield module
    parameters.clear_caches()


def callback_url(sink: WebhookSink, path: str = "/callback") -> str:
    return sink.url.replace("http://", "https://") + path


def worker_dead_lettered(
    store: JobStore,
    job_id: str,
    *,
    callback: str | None,
    error: JobError | None = None,
) -> None:
    """A job as the worker leaves it: DEAD_LETTERED with its reason, after 3 attempts."""
    request: dict[str, Any] = {"analyzer": "memory_hog", "input": {"rows": 100000}}
    if callback:
        request["notify"] = {"callback_url": callback}
    store.create(job_id, request)
    for attempt in range(3):
        store.claim(job_id, f"token-{attempt}", "worker-a", expect_owner=None)
        failure = error or JobError(ErrorKind.OOM, "analysis child exceeded its memory limit")
        if attempt < 2:
            store.release(job_id, f"token-{attempt}", failure)
        else:
            store.dead_letter(job_id, failure, expect_owner=f"token-{attempt}")


def invoke(module: ModuleType, event: dict[str, Any]) -> list[str]:
    response = module.handler(event, LambdaContext(function_name="DeadLetterFunction"))
    return [failure["itemIdentifier"] for failure in response["batchItemFailures"]]


def mentioning(received: list[Received], text: str) -> list[Received]:
    return [r for r in received if text in r.body.decode("utf-8")]


def with_job(event_name: str, job_id: str, message_id: str | None = None) -> dict[str, Any]:
    """A sample event for another job id (and message id): one field changed, the shape kept."""
    event = copy.deepcopy(load_event(event_name))
    record = event["Records"][0]
    original = json.loads(record["body"])["job_id"]
    record["body"] = record["body"].replace(original, job_id)
    if "job_id" in record["messageAttributes"]:
        record["messageAttributes"]["job_id"]["stringValue"] = job_id
    if message_id:
        record["messageId"] = message_id
    return event


# -- the three kinds of record ------------------------------------------------------------------


def test_worker_dead_letter_alerts_each_channel_once_and_sends_a_signed_notice(
    dead_letter: ModuleType, job_store: JobStore, sink: WebhookSink
) -> None:
    worker_dead_lettered(
        job_store,
        WORKER_JOB,
        callback=callback_url(sink),
        error=JobError(ErrorKind.OOM, "child exceeded its limit", peak_memory_bytes=8482560409),
    )
    event = load_event("dead_letter_worker")

    assert invoke(dead_letter, event) == []

    (slack,) = sink.on("/slack")
    (discord,) = sink.on("/discord")
    (notice,) = sink.on("/callback")
    fields = slack.json()["attachments"][0]["blocks"][2]["fields"]
    shown = {f["text"].split("\n", 1)[0].strip("*"): f["text"].split("\n", 1)[1] for f in fields}
    assert shown["Job"] == WORKER_JOB
    assert shown["Analyzer"] == "memory_hog"
    assert shown["Error"].startswith("OOM: child exceeded its limit")
    assert shown["Attempts"] == "2"
    assert shown["Peak memory"] == "7.90 GiB"
    record = job_store.get(WORKER_JOB)
    assert shown["First submitted"] == record.created_at
    assert shown["Dead-lettered"] == record.finished_at
    assert shown["Redrive"] == f"spotline --stack-name unit dlq redrive --job {WORKER_JOB}"
    assert shown["User notice"].startswith("delivered")
    assert discord.json()["embeds"][0]["title"] == "Job dead-lettered: OOM"
    body = notice.json()
    assert body == {
        "job_id": WORKER_JOB,
        "status": "DEAD_LETTERED",
        "reason": "the input needed more memory than the analyzer allows",
        "error_kind": "OOM",
        "attempts": 2,
        "dead_lettered_at": record.finished_at,
    }
    assert verify(PUBLIC_KEY, notice.headers, notice.body)
    assert receiver_accepts(PUBLIC_KEY, notice.headers, notice.body, now=int(time.time()))
    assert set(delivered_for(record)) == {"slack", "discord", CALLBACK}


def test_a_redelivered_record_sends_nothing_twice(
    dead_letter: ModuleType, job_store: JobStore, sink: WebhookSink
) -> None:
    worker_dead_lettered(job_store, WORKER_JOB, callback=callback_url(sink))
    event = load_event("dead_letter_worker")
    assert invoke(dead_letter, event) == []
    assert invoke(dead_letter, event) == []
    assert [len(sink.on(p)) for p in ("/slack", "/discord", "/callback")] == [1, 1, 1]


def test_redrive_record_marks_a_crashed_job_with_the_receive_count(
    dead_letter: ModuleType, job_store: JobStore, sink: WebhookSink
) -> None:
    # The worker died hard on every attempt: SQS moved the message, no attributes, no last_error.
    job_store.create(REDRIVE_JOB, {"analyzer": "echo", "input": 1})
    job_store.claim(REDRIVE_JOB, "token", "worker-a", expect_owner=None)

    assert invoke(dead_letter, load_event("dead_letter_redrive")) == []

    record = job_store.get(REDRIVE_JOB)
    assert record.status == JobStatus.DEAD_LETTERED
    assert record.last_error.kind == ErrorKind.UNKNOWN
    assert record.last_error.message == "exceeded maxReceiveCount after 4 receives"
    (slack,) = sink.on("/slack")
    assert "exceeded maxReceiveCount after 4 receives" in slack.body.decode()
    assert "no callback_url" in slack.body.decode()
    assert sink.on("/callback") == []


def test_redrive_record_prefers_the_jobs_last_error(
    dead_letter: ModuleType, job_store: JobStore
) -> None:
    job_store.create(REDRIVE_JOB, {"analyzer": "echo", "input": 1})
    job_store.claim(REDRIVE_JOB, "t1", "worker-a", expect_owner=None)
    job_store.release(REDRIVE_JOB, "t1", JobError(ErrorKind.TIMEOUT, "ran past 60 s"))

    assert invoke(dead_letter, load_event("dead_letter_redrive")) == []

    error = job_store.get(REDRIVE_JOB).last_error
    assert error.kind == ErrorKind.TIMEOUT
    assert error.message == "ran past 60 s (exceeded maxReceiveCount after 4 receives)"


def test_unparseable_record_alerts_with_message_id_and_escaped_first_bytes(
    dead_letter: ModuleType, sink: WebhookSink
) -> None:
    event = load_event("dead_letter_garbage")
    message_id = event["Records"][0]["messageId"]

    assert invoke(dead_letter, event) == []

    (slack,) = sink.on("/slack")
    text = slack.json()["text"]
    assert "Unparseable dead letter" in text and message_id in text
    assert "\\x00\\x01not json" in text  # escaped, not raw control bytes
    assert "<script>" not in slack.body.decode()  # no markup or mentions reach the channel
    assert len(sink.on("/discord")) == 1
    # The same message again (a retry, or a duplicate): deduplicated by message id.
    assert invoke(dead_letter, event) == []
    assert len(sink.on("/slack")) == 1


def test_the_message_ledger_expires_with_the_tables_ttl(
    dead_letter: ModuleType, stack: Stack
) -> None:
    event = load_event("dead_letter_garbage")
    message_id = event["Records"][0]["messageId"]
    assert invoke(dead_letter, event) == []

    dynamodb = boto3.client("dynamodb")
    table = stack.ref("JobsTable")
    ttl = dynamodb.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
    assert ttl["TimeToLiveStatus"] == "ENABLED" and ttl["AttributeName"] == "expires_at"
    item = dynamodb.get_item(
        TableName=table, Key={"job_id": {"S": f"dead-letter-message#{message_id}"}}
    )["Item"]
    days = (int(item["expires_at"]["N"]) - time.time()) / 86400
    assert 29 < days <= 30  # longer than the DLQ keeps the message, then gone


def test_unparseable_record_with_slack_down_retries_only_slack(
    dead_letter: ModuleType, sink: WebhookSink
) -> None:
    sink.script = {"/slack": [500]}
    event = load_event("dead_letter_garbage")
    message_id = event["Records"][0]["messageId"]

    assert invoke(dead_letter, event) == [message_id]
    sink.script = {}
    assert invoke(dead_letter, event) == []

    assert len(mentioning(sink.on("/discord"), message_id)) == 1
    assert len(sink.on("/slack")) == 3 + 1  # three failed tries, then the delivery


def test_record_for_an_unknown_job_still_alerts(dead_letter: ModuleType, sink: WebhookSink) -> None:
    assert invoke(dead_letter, with_job("dead_letter_redrive", REDRIVE_JOB)) == []
    (slack,) = sink.on("/slack")
    assert "Dead letter for an unknown job" in slack.body.decode()
    assert REDRIVE_JOB in slack.body.decode()


def test_record_for_a_job_that_succeeded_is_acknowledged_quietly(
    dead_letter: ModuleType, job_store: JobStore, sink: WebhookSink
) -> None:
    job_store.create(REDRIVE_JOB, {"analyzer": "echo", "input": 1})
    job_store.claim(REDRIVE_JOB, "t", "worker-a", expect_owner=None)
    job_store.complete_quietly(REDRIVE_JOB, "t", "s3://bucket/results/x.json")

    assert invoke(dead_letter, load_event("dead_letter_redrive")) == []
    assert job_store.get(REDRIVE_JOB).status == JobStatus.SUCCEEDED
    assert sink.received == []


def test_record_older_than_an_operator_redrive_is_acknowledged_quietly(
    dead_letter: ModuleType, job_store: JobStore, sink: WebhookSink
) -> None:
    worker_dead_lettered(job_store, WORKER_JOB, callback=None)
    job_store.redrive(WORKER_JOB)
    job_store.set_fields(WORKER_JOB, {"redriven_at": "2030-01-01T00:00:00.000Z"})

    assert invoke(dead_letter, load_event("dead_letter_worker")) == []
    assert job_store.get(WORKER_JOB).status == JobStatus.QUEUED
    assert sink.received == []


def test_a_second_dead_lettering_after_a_redrive_alerts_again(
    dead_letter: ModuleType, job_store: JobStore, sink: WebhookSink
) -> None:
    worker_dead_lettered(job_store, WORKER_JOB, callback=None)
    assert invoke(dead_letter, load_event("dead_letter_worker")) == []
    job_store.redrive(WORKER_JOB)
    job_store.claim(WORKER_JOB, "again", "worker-b", expect_owner=None)
    job_store.dead_letter(WORKER_JOB, JobError(ErrorKind.OOM, "again"), expect_owner="again")

    assert invoke(dead_letter, load_event("dead_letter_worker")) == []
    assert len(mentioning(sink.on("/slack"), WORKER_JOB)) == 2


# -- channels failing ---------------------------------------------------------------------------


def test_slack_500_then_200_is_retried_and_alerts_once(
    dead_letter: ModuleType, job_store: JobStore, sink: WebhookSink
) -> None:
    sink.script = {"/slack": [500, 200]}
    worker_dead_lettered(job_store, WORKER_JOB, callback=None)

    assert invoke(dead_letter, load_event("dead_letter_worker")) == []

    statuses = [len(sink.on("/slack")), len(sink.on("/discord"))]
    assert statuses == [2, 1]  # one failed try, one delivered alert
    assert "slack" in delivered_for(job_store.get(WORKER_JOB))


def test_slack_down_fails_the_record_and_marks_nothing_delivered_for_it(
    dead_letter: ModuleType, job_store: JobStore, sink: WebhookSink
) -> None:
    sink.script = {"/slack": [503]}
    worker_dead_lettered(job_store, WORKER_JOB, callback=callback_url(sink))
    event = load_event("dead_letter_worker")
    message_id = event["Records"][0]["messageId"]

    assert invoke(dead_letter, event) == [message_id]
    assert set(delivered_for(job_store.get(WORKER_JOB))) == {"discord", CALLBACK}

    sink.script = {}  # Slack is back; the record comes back
    assert invoke(dead_letter, event) == []
    assert len(sink.on("/slack")) == 3 + 1
    assert len(sink.on("/discord")) == 1 and len(sink.on("/callback")) == 1
    assert set(delivered_for(job_store.get(WORKER_JOB))) == {"slack", "discord", CALLBACK}


def test_callback_failing_is_retried_but_the_alert_is_not_resent(
    dead_letter: ModuleType, job_store: JobStore, sink: WebhookSink
) -> None:
    sink.script = {"/callback": [502]}
    worker_dead_lettered(job_store, WORKER_JOB, callback=callback_url(sink))
    event = load_event("dead_letter_worker")

    assert invoke(dead_letter, event) == [event["Records"][0]["messageId"]]
    assert "failed: status 502" in sink.on("/slack")[0].body.decode()
    sink.script = {}
    assert invoke(dead_letter, event) == []
    assert [len(sink.on(p)) for p in ("/slack", "/discord")] == [1, 1]
    assert len(sink.on("/callback")) == 2 + 1


def _resolve_to_ten(host: str, port: int, **kwargs: Any) -> list[tuple[Any, ...]]:
    return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.20.30.40", port))]


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://10.1.2.3/hook", "private address 10.1.2.3"),
        ("https://169.254.169.254/latest/meta-data/", "link-local address"),
        ("https://callbacks.customer.test/hook", "resolves to a private address 10.20.30.40"),
        ("redirect", "redirects are not followed"),
        ("http://hooks.example.com/hook", "must use https"),
    ],
)
def test_callback_refused_is_not_sent_not_retried_and_the_alert_says_why(
    dead_letter: ModuleType,
    job_store: JobStore,
    sink: WebhookSink,
    url: str,
    why: str,
) -> None:
    dead_letter.service().callbacks.resolver = _resolve_to_ten
    if url == "redirect":
        sink.script = {"/moved": [302]}
        url = callback_url(sink, "/moved")
    worker_dead_lettered(job_store, WORKER_JOB, callback=url)

    assert invoke(dead_letter, load_event("dead_letter_worker")) == []

    assert sink.on("/callback") == []
    assert len(sink.on("/moved")) == (1 if why.startswith("redirects") else 0)  # never followed
    for channel in ("/slack", "/discord"):
        (alert,) = sink.on(channel)
        assert "refused" in alert.body.decode() and why in alert.body.decode()
    assert delivered_for(job_store.get(WORKER_JOB))[CALLBACK].startswith("refused")


# -- batches ------------------------------------------------------------------------------------


def test_batch_of_ten_with_three_failing_reports_exactly_those_three(
    dead_letter: ModuleType, job_store: JobStore, sink: WebhookSink
) -> None:
    sink.script = {"/broken-callback": [500]}
    records = []
    failing = set()
    for index in range(10):
        job_id = f"00000000-0000-4000-8000-{index:012d}"
        broken = index in (1, 4, 8)
        path = "/broken-callback" if broken else "/callback"
        worker_dead_lettered(job_store, job_id, callback=callback_url(sink, path))
        message_id = f"11111111-0000-4000-8000-{index:012d}"
        records.extend(with_job("dead_letter_worker", job_id, message_id)["Records"])
        if broken:
            failing.add(message_id)

    failed = invoke(dead_letter, {"Records": records})

    assert set(failed) == failing and len(failed) == 3
    assert len(sink.on("/callback")) == 7
    assert len(sink.on("/slack")) == 10  # every job's operators were told, failures included


def test_a_batch_where_every_record_fails_reports_them_all(
    dead_letter: ModuleType, job_store: JobStore, sink: WebhookSink
) -> None:
    sink.script = {"/slack": [500], "/discord": [500]}
    event = load_event("dead_letter_garbage")
    second = copy.deepcopy(event["Records"][0])
    second["messageId"] = "22222222-0000-4000-8000-000000000000"
    event["Records"].append(second)

    failed = invoke(dead_letter, event)

    assert sorted(failed) == sorted(r["messageId"] for r in event["Records"])


@pytest.fixture
def slow_loris() -> Iterator[HostileServer]:
    """A user's callback endpoint that trickles its headers, a byte every 0.5 s, forever."""
    with HostileServer(slow_headers) as server:
        yield server


def test_a_slow_loris_callback_costs_its_share_and_the_rest_of_the_batch_is_delivered(
    dead_letter: ModuleType, job_store: JobStore, sink: WebhookSink, slow_loris: HostileServer
) -> None:
    records = []
    for index in range(3):
        job_id = f"00000000-0000-4000-8000-{index:012d}"
        slow = index == 0
        url = callback_url(sink, f"/callback-{index}")
        worker_dead_lettered(
            job_store, job_id, callback=slow_loris.url + "/callback" if slow else url
        )
        message_id = f"11111111-0000-4000-8000-{index:012d}"
        records.extend(with_job("dead_letter_worker", job_id, message_id)["Records"])
    context = CountdownContext(remaining_s=6.0, function_name="DeadLetterFunction")

    started = time.monotonic()
    response = dead_letter.handler({"Records": records}, context)
    took_s = time.monotonic() - started

    # Reserve 3 s, three records: the first may spend 1 s, its callback half of that.
    assert took_s < 6.0 - dead_letter.RESPONSE_RESERVE_S, took_s
    assert [f["itemIdentifier"] for f in response["batchItemFailures"]] == [records[0]["messageId"]]
    assert len(sink.on("/callback-1")) == len(sink.on("/callback-2")) == 1
    assert len(sink.on("/slack")) == len(sink.on("/discord")) == 3  # every job's operators told
    slow_job = records[0]["messageAttributes"]["job_id"]["stringValue"]
    (alert,) = mentioning(sink.on("/slack"), slow_job)
    assert "DeadlineExceeded" in alert.body.decode()  # the alert says the notice timed out
    # The notice is not recorded as done: the record comes back and the callback is tried again.
    assert set(delivered_for(job_store.get(slow_job))) == {"slack", "discord"}
    wait_until(lambda: slow_loris.ended == slow_loris.accepted == 1, timeout=3)


def test_records_left_without_time_are_reported_failed_untouched(
    dead_letter: ModuleType, job_store: JobStore, sink: WebhookSink
) -> None:
    worker_dead_lettered(job_store, WORKER_JOB, callback=callback_url(sink))
    event = load_event("dead_letter_worker")
    # Less time left than the reserve for the batch response: nothing may start.
    context = CountdownContext(remaining_s=dead_letter.RESPONSE_RESERVE_S - 0.5)

    response = dead_letter.handler(event, context)

    assert [f["itemIdentifier"] for f in response["batchItemFailures"]] == [
        event["Records"][0]["messageId"]
    ]
    assert sink.received == []
    assert context.get_remaining_time_in_millis() > 0


def test_dead_letter_parses_attributes_from_the_event_shape() -> None:
    record = load_event("dead_letter_worker")["Records"][0]
    letter = DeadLetter.from_event_record(record)
    assert letter.from_worker and letter.job_id == WORKER_JOB
    error = letter.attribute_error()
    assert error is not None and error.kind == ErrorKind.OOM
    assert error.peak_memory_bytes == 8482560409
    redrive = DeadLetter.from_event_record(load_event("dead_letter_redrive")["Records"][0])
    assert not redrive.from_worker and redrive.receive_count == 4
    assert redrive.job_id == REDRIVE_JOB and redrive.attribute_error() is None


def test_config_reads_channels_and_keeps_test_mode_off_by_default() -> None:
    env = {
        "ALERT_CHANNELS": "slack,discord",
        "SLACK_WEBHOOK_SECRET": "ssm:/s",
        "DISCORD_WEBHOOK_SECRET": "ssm:/d",
        "NOTICE_SIGNING_KEY_SECRET": "secretsmanager:k",
        "NOTICE_PUBLIC_KEY": PUBLIC_KEY,
        "CALLBACK_SIGNING_SECRET": "",
        "STACK_NAME": "prod",
    }
    config = DeadLetterConfig.from_env(env)
    assert [c.name for c in config.channels] == ["slack", "discord"]
    assert config.notice_key_ref == "secretsmanager:k" and config.stack_name == "prod"
    assert config.notice_public_key == PUBLIC_KEY and config.legacy_secret_ref is None
    legacy = DeadLetterConfig.from_env({**env, "CALLBACK_SIGNING_SECRET": "secretsmanager:old"})
    assert legacy.legacy_secret_ref == "secretsmanager:old"
    assert config.callback_test_mode is False
    assert DeadLetterConfig.from_env({**env, TEST_MODE_ENV: "true"}).callback_test_mode
    with pytest.raises(ValueError, match="DISCORD_WEBHOOK_SECRET"):
        DeadLetterConfig.from_env({**env, "DISCORD_WEBHOOK_SECRET": ""})


def test_the_template_never_enables_callback_test_mode(stack: Stack) -> None:
    env = function_environment(stack, "DeadLetterFunction")
    assert TEST_MODE_ENV not in env
    assert env["NOTICE_SIGNING_KEY_SECRET"].startswith("secretsmanager:spotline/dead-letters/")
    assert env["CALLBACK_SIGNING_SECRET"] == ""  # deprecated header: off unless asked for
    assert env["SLACK_WEBHOOK_SECRET"].startswith("ssm:/spotline/dead-letters/")


def test_devstack_builds_event_records_in_the_shape_of_the_sample_events(stack: Stack) -> None:
    sqs = boto3.client("sqs")
    url = stack.ref("JobsDeadLetterQueue")
    sqs.send_message(
        QueueUrl=url,
        MessageBody="{}",
        MessageAttributes={"job_id": {"DataType": "String", "StringValue": WORKER_JOB}},
    )
    (message,) = sqs.receive_message(
        QueueUrl=url, MessageSystemAttributeNames=["All"], MessageAttributeNames=["All"]
    )["Messages"]
    built = event_record(message, stack.attr("JobsDeadLetterQueue", "Arn"), "us-east-1")
    sample = load_event("dead_letter_worker")["Records"][0]
    assert built.keys() == sample.keys()
    attribute = sample["messageAttributes"]["job_id"]
    assert built["messageAttributes"]["job_id"].keys() == attribute.keys()
    assert {"ApproximateReceiveCount", "SentTimestamp"} <= built["attributes"].keys()


# -- two copies at once -----------------------------------------------------------------------


def test_a_copy_waits_while_another_invocation_is_notifying_for_the_same_job(
    dead_letter: ModuleType, job_store: JobStore, sink: WebhookSink, stack: Stack
) -> None:
    """A worker that crashed between "sent to the DLQ" and "marked sent" leaves two copies; two
    concurrent invocations must not both read "nothing delivered yet" and both alert."""
    worker_dead_lettered(job_store, WORKER_JOB, callback=callback_url(sink))
    ledger = dead_letter.service().ledger
    assert ledger.lease(WORKER_JOB, "message:first-copy")  # the other invocation, mid-delivery
    second = with_job("dead_letter_worker", WORKER_JOB, message_id="second-copy")

    assert invoke(dead_letter, second) == ["second-copy"]  # retried later, nothing sent
    assert sink.received == []
    assert not ledger.lease(WORKER_JOB, "message:third-copy")  # the holder keeps its lease

    ledger.release(WORKER_JOB, "message:first-copy")
    assert invoke(dead_letter, second) == []
    assert invoke(dead_letter, load_event("dead_letter_worker")) == []  # the first copy, late
    assert len(sink.on("/slack")) == len(sink.on("/discord")) == len(sink.on("/callback")) == 1
    # Each holder gave its lease back: none is left behind in the table.
    item = boto3.client("dynamodb").get_item(
        TableName=stack.ref("JobsTable"), Key={"job_id": {"S": f"dead-letter-lease#{WORKER_JOB}"}}
    )
    assert "Item" not in item


def test_a_lease_left_by_a_crashed_invocation_expires(
    dead_letter: ModuleType, job_store: JobStore, sink: WebhookSink, stack: Stack
) -> None:
    worker_dead_lettered(job_store, WORKER_JOB, callback=None)
    now = int(time.time())
    boto3.client("dynamodb").put_item(
        TableName=stack.ref("JobsTable"),
        Item={
            "job_id": {"S": f"dead-letter-lease#{WORKER_JOB}"},
            "holder": {"S": "message:crashed"},
            "lease_until": {"N": str(now - 1)},
            "expires_at": {"N": str(now + 86400)},
        },
    )
    assert invoke(dead_letter, load_event("dead_letter_worker")) == []
    assert len(sink.on("/slack")) == len(sink.on("/discord")) == 1
    # Releasing is only ever our own lease: the crashed holder's late release takes nothing.
    ledger = dead_letter.service().ledger
    assert ledger.lease(WORKER_JOB, "message:next")
    ledger.release(WORKER_JOB, "message:crashed")
    assert not ledger.lease(WORKER_JOB, "message:another")
