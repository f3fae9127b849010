"""The analysis child fell over: the worker's "job finished" line, through the worker log group's
subscription filter, becomes one chat notice naming the job, routed like the child-restarted
alarm, posted once per log event however often Lambda retries the delivery."""

from __future__ import annotations

import base64
import fnmatch
import gzip
import io
import json
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

import boto3
import pytest
import yaml
from botocore.exceptions import ClientError, EndpointConnectionError

from alarm_fanout.alarm_shapes import Unreadable
from alarm_fanout.child_notices import (
    CHILD_FELL_OVER_KINDS,
    CHILD_NOTICE_NAME,
    CHILD_NOTICE_SEVERITY,
    ERROR_MESSAGE_CHARS,
    ChildFellOver,
)
from alarm_fanout.notice_bursts import BurstDecision, ChildNoticeBursts
from alarm_fanout.notices import notices_from_event
from alarm_fanout.rendering import child_alert
from devstack.cfn import Stack, load_template, provision
from devstack.drills.alarms import fanout_env, worker_log_event, worker_log_payload
from devstack.lambdas import LambdaContext, load_event, load_handler_module
from devstack.sink import WebhookSink
from gpu_worker import consumer
from gpu_worker.consumer import Worker
from spotline.contract import ErrorKind, JobMessage, new_job_id
from spotline.jobstore import JobStore
from spotline.queue import JobQueue
from spotline.webhooks import WebhookClient
from tests.unit.conftest import emitted_metrics, stack_worker_config

EVENT = "alarm_worker_child_fell_over"
TEMPLATE = load_template()
RESOURCES: dict[str, Any] = TEMPLATE["Resources"]
NAME = "spotline-worker-child-restarted"


def read(event: Any, **kwargs: str) -> list[Any]:
    return notices_from_event(event, child_notice_name=NAME, region="eu-west-1", **kwargs)


def delivery(payload: dict[str, Any]) -> dict[str, Any]:
    """A CloudWatch Logs delivery of ``payload`` (any JSON), packed as AWS packs it."""
    data = gzip.compress(json.dumps(payload).encode("utf-8"))
    return {"awslogs": {"data": base64.b64encode(data).decode("ascii")}}


def with_lines(*lines: dict[str, Any]) -> dict[str, Any]:
    """The sample delivery with its log events' lines replaced."""
    event = load_event(EVENT)
    payload = worker_log_payload(event)
    texts = [json.dumps(line) for line in lines]
    return worker_log_event(
        texts,
        log_group=payload["logGroup"],
        log_stream=payload["logStream"],
        start_ms=payload["logEvents"][0]["timestamp"],
    )


def sample_line(index: int = 0) -> dict[str, Any]:
    payload = worker_log_payload(load_event(EVENT))
    line: dict[str, Any] = json.loads(payload["logEvents"][index]["message"])
    return line


# -- reading a delivery ----------------------------------------------------------------------


def test_each_log_event_of_a_delivery_is_one_notice_with_its_job() -> None:
    oom, crash = read(load_event(EVENT))
    assert isinstance(oom, ChildFellOver) and isinstance(crash, ChildFellOver)
    assert (oom.job_id, oom.error_kind, oom.analyzer, oom.attempt, oom.next_step) == (
        "0b8e9c4e-5f7a-4d21-9a3c-7e1f2d6b8a90",
        "OOM",
        "memory_hog",
        1,
        "retrying in 10 s",
    )
    assert (oom.max_attempts, oom.peak_memory_bytes, oom.memory_limit_bytes) == (
        3,
        3080 * 2**20,
        3072 * 2**20,
    )
    assert oom.error_message.startswith("analysis used 3080 MiB")
    assert (crash.error_kind, crash.attempt, crash.next_step) == ("UNKNOWN", 3, "dead-lettered")
    assert (oom.instance, oom.log_group, oom.account, oom.region, oom.name) == (
        "i-0a1b2c3d4e5f60718",
        "/spotline/spotline/worker",
        "123456789012",
        "eu-west-1",
        NAME,
    )
    assert oom.time == datetime(2026, 11, 23, 5, 43, 12, 345000, tzinfo=UTC)
    assert oom.transition_key != crash.transition_key  # one per log event
    assert oom.console_link == (
        "https://eu-west-1.console.aws.amazon.com/cloudwatch/home?region=eu-west-1"
        "#logsV2:log-groups/log-group/$252Fspotline$252Fspotline$252Fworker"
        "/log-events/i-0a1b2c3d4e5f60718$3Fstart$3D1795412532345"
    )


def test_a_control_message_is_no_notice() -> None:
    assert read(delivery({"messageType": "CONTROL_MESSAGE", "logEvents": []})) == []


NEW_KEYS = ("max_attempts", "backoff_s", "peak_memory_bytes", "memory_limit_bytes", "error_message")


def test_peak_memory_backoff_and_error_text_are_rendered() -> None:
    (oom, crash) = read(load_event(EVENT))
    alert = child_alert(oom)
    assert alert.text.splitlines() == [
        "memory_hog, attempt 1 of 3, next: retrying in 10 s",
        "out of memory (the memory guard's limit or the GPU's); after 41.203 s; peak memory "
        "3,080 MiB (100% of the 3,072 MiB limit); OOM on attempt 1 of 3",
        "`analysis used 3080 MiB, over its limit of 3072 MiB; the child was killed`",
    ]
    assert ("Peak memory", "3,080 MiB (100% of the 3,072 MiB limit)") in alert.fields
    assert ("Attempt", "1 of 3") in alert.fields and ("Next", "retrying in 10 s") in alert.fields
    assert len(alert.fields) <= 10  # Slack shows no more
    hook = alert.extra["child_fell_over"]
    assert (hook["backoff_s"], hook["max_attempts"], hook["memory_limit_bytes"]) == (
        10.0,
        3,
        3 * 2**30,
    )
    dead = child_alert(crash)
    assert "next: dead-lettered" in dead.text and "`analysis child killed by SIGSEGV`" in dead.text
    assert "peak memory 192 MiB (6% of the 3,072 MiB limit)" in dead.text


def test_an_old_worker_line_without_the_new_keys_still_renders() -> None:
    line = {k: v for k, v in sample_line().items() if k not in NEW_KEYS}
    (notice,) = read(with_lines(line))
    assert isinstance(notice, ChildFellOver)
    assert (notice.next_step, notice.attempt_text, notice.memory_text) == ("retrying", "1", "")
    alert = child_alert(notice)
    assert alert.text.splitlines()[0] == "memory_hog, attempt 1, next: retrying"
    assert "`" not in alert.text and "Peak memory" not in dict(alert.fields)


@pytest.mark.parametrize(
    "bad",
    [None, "x", True, -5, [], {}, 10**400, float("nan")],
)
def test_malformed_new_keys_are_left_out_not_fatal(bad: Any) -> None:
    line = {**sample_line(), **dict.fromkeys(NEW_KEYS, bad)}
    (notice,) = read(with_lines(line))
    assert isinstance(notice, ChildFellOver)
    assert notice.max_attempts is None and notice.peak_memory_bytes is None
    assert notice.memory_limit_bytes is None and notice.backoff_s is None
    assert notice.error_message == ("x" if bad == "x" else "")
    child_alert(notice)  # renders


def test_a_peak_without_a_limit_shows_the_peak_alone() -> None:
    line = {**sample_line(), "memory_limit_bytes": 0, "peak_memory_bytes": 512 * 2**20}
    (notice,) = read(with_lines(line))
    assert ("Peak memory", "512 MiB") in child_alert(notice).fields


def test_a_payload_like_error_message_is_bounded_to_its_first_line() -> None:
    payload = "SECRET-INPUT " * 2000
    line = {**sample_line(), "error_message": f"ValueError: bad '{payload}'\n{payload}\nmore"}
    (notice,) = read(with_lines(line))
    assert len(notice.error_message) == ERROR_MESSAGE_CHARS
    assert notice.error_message.endswith("…") and "\n" not in notice.error_message
    alert = child_alert(notice)
    assert alert.text.count("SECRET-INPUT") < 30 and len(alert.text) < 700
    # A backtick in the text cannot end the code span early.
    (ticked,) = read(with_lines({**sample_line(), "error_message": "KeyError: 'a`b'"}))
    assert "`KeyError: 'a'b'`" in child_alert(ticked).text


GARBAGE_GZIP = base64.b64encode(b"\x1f\x8b\x08\x00garbage").decode()
CUT_SHORT = load_event(EVENT)["awslogs"]["data"][:120]


@pytest.mark.parametrize(
    ("event", "problem"),
    [
        ({"awslogs": None}, "awslogs.data missing"),
        ({"awslogs": {"data": 7}}, "awslogs.data missing"),
        ({"awslogs": {"data": "not base64 at all!"}}, "not base64"),
        ({"awslogs": {"data": base64.b64encode(b"plain text").decode()}}, "not gzip"),
        ({"awslogs": {"data": GARBAGE_GZIP}}, "not gzip"),
        ({"awslogs": {"data": CUT_SHORT}}, "not gzip"),
        ({"awslogs": {"data": "é"}}, "not base64"),
        (
            {"awslogs": {"data": base64.b64encode(gzip.compress(b"{cut")).decode()}},
            "not JSON",
        ),
        (delivery([1, 2]), "not a JSON object"),
        (delivery({"messageType": "SOMETHING"}), "neither DATA_MESSAGE"),
        (delivery({"messageType": "DATA_MESSAGE", "logEvents": {}}), "logEvents missing"),
        (
            delivery({"messageType": "DATA_MESSAGE", "logEvents": [], "logStream": "i-1"}),
            "missing logGroup",
        ),
    ],
)
def test_an_unreadable_delivery_is_one_unreadable_notice(event: Any, problem: str) -> None:
    (notice,) = read(event)
    assert isinstance(notice, Unreadable) and problem in notice.problem


def test_a_delivery_that_unpacks_to_too_much_is_refused_unread() -> None:
    bomb = gzip.compress(b" " * (9 * 1024 * 1024))  # 9 MiB of spaces, 9 KiB packed
    (notice,) = read({"awslogs": {"data": base64.b64encode(bomb).decode()}})
    assert isinstance(notice, Unreadable) and "more than a delivery can hold" in notice.problem


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"error_kind": "ANALYZER_ERROR"}, "not a job-finished line"),
        ({"error_kind": None}, "not a job-finished line"),
        ({"message": "job started"}, "not a job-finished line"),
        ({"job_id": None}, "missing job_id"),
        ({"job_id": 5}, "job_id is not text"),
    ],
)
def test_a_line_the_filter_should_not_have_sent_is_unreadable_with_its_event_id(
    change: dict[str, Any], problem: str
) -> None:
    (notice,) = read(with_lines({**sample_line(), **change}))
    assert isinstance(notice, Unreadable) and problem in notice.problem
    assert notice.ref and notice.ref in notice.transition_key


def test_broken_log_events_are_unreadable_one_by_one_beside_good_ones() -> None:
    payload = worker_log_payload(load_event(EVENT))
    good = payload["logEvents"][0]
    payload["logEvents"] = [
        good,
        "junk",
        {**good, "id": "x1", "message": "[ERROR] not json"},
        {**good, "id": "x2", "message": None},
        {**good, "id": "x3", "timestamp": "yesterday"},
        {**good, "id": "x4", "timestamp": 10**30},
        {**good, "id": None},
    ]
    notices = read(delivery(payload))
    assert isinstance(notices[0], ChildFellOver)
    assert [type(n).__name__ for n in notices[1:]] == ["Unreadable"] * 6
    assert notices[2].raw == "[ERROR] not json"


def _variants(value: Any) -> Iterator[Any]:
    """``value`` with each node in turn replaced by values of other types."""
    yield from (None, 7, True, "x", "", [], {}, [1], {"a": 1}, 10**30)
    if isinstance(value, dict):
        for key in value:
            for mutated in _variants(value[key]):
                yield {**value, key: mutated}
    elif isinstance(value, list):
        for index, item in enumerate(value):
            for mutated in _variants(item):
                yield [*value[:index], mutated, *value[index + 1 :]]


def test_every_mutation_inside_the_packed_payload_reads_or_is_unreadable() -> None:
    payload = worker_log_payload(load_event(EVENT))
    variants = list(_variants(payload))
    first = payload["logEvents"][0]
    for line in _variants(json.loads(first["message"])):
        log_event = {**first, "message": json.dumps(line)}
        variants.append({**payload, "logEvents": [log_event]})
    assert len(variants) > 300
    for variant in variants:
        for notice in read(delivery(variant)):
            assert isinstance(notice, ChildFellOver | Unreadable), variant
            if isinstance(notice, ChildFellOver):
                child_alert(notice)  # renders, too


# -- rendering, routing and delivery through the real handler ---------------------------------


@pytest.fixture
def sink() -> Iterator[WebhookSink]:
    with WebhookSink() as server:
        yield server


class _Devstack:
    def client(self, service: str) -> Any:
        return boto3.client(service, region_name="us-east-1")


@pytest.fixture
def make_fanout_app(stack: Stack, sink: WebhookSink) -> Callable[..., ModuleType]:
    from aws_lambda_powertools.utilities import parameters

    def make(**extra: str) -> ModuleType:
        parameters.clear_caches()
        env = {
            **fanout_env(sink.url, _Devstack()),  # type: ignore[arg-type]
            "POWERTOOLS_METRICS_DISABLED": "true",
            "AWS_REGION": "eu-west-1",
            **extra,
        }
        return load_handler_module("alarm_fanout.app", stack, "AlarmFanoutFunction", env)

    return make


def invoke(app: ModuleType, event: Any) -> dict[str, Any]:
    result: dict[str, Any] = app.handler(event, LambdaContext(function_name="AlarmFanout"))
    return result


def test_each_fall_is_posted_once_to_every_channel_with_job_instance_and_link(
    make_fanout_app: Callable[..., ModuleType], sink: WebhookSink
) -> None:
    app = make_fanout_app()
    app.fanout().sender.client = WebhookClient(max_attempts=1)  # no backoff waits here
    sink.script = {"/discord": [500, 500, 200]}
    with pytest.raises(app.FanoutIncomplete, match="discord"):
        invoke(app, load_event(EVENT))
    slack = [r.json() for r in sink.on("/slack")]
    assert [s["attachments"][0]["blocks"][0]["text"]["text"] for s in slack] == [
        "Analysis child fell over: OOM on job 0b8e9c4e-5f7a-4d21-9a3c-7e1f2d6b8a90",
        "Analysis child fell over: UNKNOWN on job c4a1e7d2-9b3f-4e58-8d60-2f1a7c9e3b54",
    ]
    assert slack[0]["attachments"][0]["color"] == "#f2a33a"  # warning, like the alarm
    assert slack[0]["text"] == (
        "Analysis child fell over: OOM on job 0b8e9c4e-5f7a-4d21-9a3c-7e1f2d6b8a90: "
        "memory_hog, attempt 1 of 3, next: retrying in 10 s\nout of memory (the memory guard's "
        "limit or the GPU's); after 41.203 s; peak memory 3,080 MiB (100% of the 3,072 MiB "
        "limit); OOM on attempt 1 of 3\n"
        "`analysis used 3080 MiB, over its limit of 3072 MiB; the child was killed`"
    )
    (hook, _) = [r.json() for r in sink.on("/webhook")]
    assert hook["child_fell_over"]["job_id"] == "0b8e9c4e-5f7a-4d21-9a3c-7e1f2d6b8a90"
    assert hook["child_fell_over"]["log_event_id"] == hook["dedupe_key"].rsplit("|", 1)[1]

    # Lambda's retry: only the channel that failed gets them; the next retry changes nothing.
    assert invoke(app, load_event(EVENT)) == {"notices": 2, "delivered": 2, "skipped": 4}
    assert invoke(app, load_event(EVENT)) == {"notices": 2, "delivered": 0, "skipped": 6}
    assert len(sink.on("/slack")) == len(sink.on("/webhook")) == 2
    assert len(sink.on("/discord")) == 4  # two refused, then each taken once
    discord = [r.json()["embeds"][0] for r in sink.on("/discord")[2:]]
    fields = {f["name"]: f["value"] for f in discord[1]["fields"]}
    assert fields["Instance"] == "i-0a1b2c3d4e5f60718" and fields["Next"] == "dead-lettered"
    assert fields["Time"] == "2026-11-23 05:43:12 UTC" and fields["Region"] == "eu-west-1"
    assert discord[1]["url"].startswith("https://eu-west-1.console.aws.amazon.com/")


def test_falls_route_like_the_child_restarted_alarm_and_garbage_goes_to_the_default(
    make_fanout_app: Callable[..., ModuleType], sink: WebhookSink, stack: Stack
) -> None:
    # The template names the notices STACK-worker-child-restarted (the alarm's name), severity
    # warning (the alarm's tag).
    app = make_fanout_app(
        ALARM_ROUTES=f"prefix:{stack.name}-worker-=discord; severity:warning=webhook",
        ALARM_DEFAULT_CHANNELS="slack",
    )
    assert app.settings.child_notice_name == f"{stack.name}-worker-child-restarted"
    invoke(app, load_event(EVENT))
    assert len(sink.on("/discord")) == len(sink.on("/webhook")) == 2
    assert sink.on("/slack") == []
    # An unreadable delivery is forwarded to the first default channel, never raised.
    result = invoke(app, {"awslogs": {"data": CUT_SHORT}})
    assert result == {"notices": 1, "delivered": 1, "skipped": 0}
    (forwarded,) = [r.json() for r in sink.on("/slack")]
    assert "not gzip" in json.dumps(forwarded)
    assert invoke(app, delivery({"messageType": "CONTROL_MESSAGE"}))["notices"] == 0


# -- the template: log group, role, user data, subscription and permission agree ---------------


def _tokens(pattern: str) -> list[str]:
    token = re.compile(r'\s*(\{|\}|\(|\)|&&|\|\||!=|=|\$\.[A-Za-z_][\w.]*|"[^"*]*")')
    out, position = [], 0
    while position < len(pattern.rstrip()):
        match = token.match(pattern, position)
        assert match, f"filter pattern not in the supported subset at {pattern[position:]!r}"
        out.append(match.group(1))
        position = match.end()
    return out


def filter_matches(pattern: str, line: dict[str, Any]) -> bool:
    """CloudWatch Logs JSON filter patterns, the subset the template uses:
    ``{ EXPR }``, EXPR = TERM (``&&`` / ``||`` TERM)*, TERM = ``(EXPR)`` or
    ``$.key = "text"`` / ``$.key != "text"`` (no wildcards)."""
    tokens = _tokens(pattern)
    assert tokens[0] == "{" and tokens[-1] == "}"
    position = 1

    def take() -> str:
        nonlocal position
        position += 1
        return tokens[position - 1]

    def term() -> bool:
        if tokens[position] == "(":
            take()
            value = expression()
            assert take() == ")"
            return value
        selector, operator, literal = take(), take(), take()
        assert selector.startswith("$.") and operator in ("=", "!=") and literal[0] == '"'
        value: Any = line
        for key in selector[2:].split("."):
            value = value.get(key) if isinstance(value, dict) else None
        equal = isinstance(value, str) and value == literal[1:-1]
        return equal if operator == "=" else not equal

    def expression() -> bool:
        value = term()
        while tokens[position] in ("&&", "||"):
            operator, right = take(), term()
            value = (value and right) if operator == "&&" else (value or right)
        return value

    result = expression()
    assert tokens[position:] == ["}"]
    return result


PATTERN = RESOURCES["WorkerChildFellOverSubscription"]["Properties"]["FilterPattern"]


class _Capture:
    """The worker's log lines exactly as it writes them (its Powertools handler's stream)."""

    def __enter__(self) -> list[dict[str, Any]]:
        self.buffer = io.StringIO()
        self.previous = consumer.logger.registered_handler.setStream(self.buffer)  # type: ignore[attr-defined]
        self.lines: list[dict[str, Any]] = []
        return self.lines

    def __exit__(self, *_: Any) -> None:
        consumer.logger.registered_handler.setStream(self.previous)  # type: ignore[attr-defined]
        self.lines += [json.loads(t) for t in self.buffer.getvalue().splitlines() if t.strip()]


SECRET_INPUT = "user-secret-text " * 25  # the drill's message is at most 1000 characters


@pytest.fixture
def real_lines(stack: Stack, job_store: JobStore, queue: JobQueue) -> list[dict[str, Any]]:
    """The "job finished" lines of a real worker that ran a job that succeeded, one whose
    analyzer failed (the child lives), one that killed the analysis child (SIGKILL) and a GPU
    OOM whose error quotes its (secret) input at length."""
    config = stack_worker_config(
        stack,
        worker_id="unit",
        wait_s=0,
        visibility_window_s=30,
        metrics_sink="off",
        imds_endpoint="",
    )
    worker = Worker(
        config, sqs=boto3.client("sqs"), dynamodb=boto3.client("dynamodb"), s3=boto3.client("s3")
    )
    requests = [
        {"analyzer": "echo", "input": {"ok": True}},
        {"analyzer": "fail", "input": None, "params": {"error": "retryable"}},
        # after_s: the memory guard's first sample (its peak) comes before the kill.
        {"analyzer": "crash", "input": None, "params": {"signal": "SIGKILL", "after_s": 0.2}},
        {
            "analyzer": "fail",
            "input": {"text": SECRET_INPUT * 100},
            "params": {"error": "gpu_oom", "message": f"on '{SECRET_INPUT}'\n{SECRET_INPUT}"},
        },
    ]
    try:
        with _Capture() as lines:
            for request in requests:
                job_id = new_job_id()
                job_store.create(job_id, request)
                queue.send(JobMessage(job_id, request))
                worker.poll_once()
        restarts = worker.supervisor.restarts
    finally:
        worker.supervisor.close()
    assert restarts == 1, "only the crash takes the analysis child down"
    return [line for line in lines if line.get("message") == "job finished"]


def test_the_filter_pattern_matches_the_real_line_of_a_fall_and_nothing_else(
    real_lines: list[dict[str, Any]],
) -> None:
    succeeded, failed, crashed, _ = real_lines
    assert (succeeded.get("error_kind"), failed["error_kind"], crashed["error_kind"]) == (
        None,
        "ANALYZER_ERROR",
        "UNKNOWN",
    )
    assert filter_matches(PATTERN, crashed)
    assert not filter_matches(PATTERN, succeeded) and not filter_matches(PATTERN, failed)
    for kind in ErrorKind:
        expected = kind in CHILD_FELL_OVER_KINDS
        assert filter_matches(PATTERN, {**crashed, "error_kind": str(kind)}) is expected, kind
    assert not filter_matches(PATTERN, {**crashed, "message": "job started"})
    # And the fan-out reads that very line into its notice.
    (notice,) = read(with_lines(crashed))
    assert isinstance(notice, ChildFellOver)
    assert (notice.job_id, notice.analyzer, notice.attempt, notice.next_step) == (
        crashed["job_id"],
        "crash",
        1,
        "retrying in 10 s",
    )
    assert notice.error_message == "analysis child killed by SIGKILL"
    assert notice.peak_memory_bytes and notice.memory_limit_bytes


def test_the_real_line_carries_memory_backoff_and_a_bounded_error_never_the_input(
    real_lines: list[dict[str, Any]],
) -> None:
    succeeded, failed, crashed, gpu_oom = real_lines
    for line in (failed, crashed, gpu_oom):
        assert line["max_attempts"] == 3 and line["backoff_s"] == 10.0
        assert 0 < line["peak_memory_bytes"] < line["memory_limit_bytes"]
        assert line["attempt"] == 1 and line["action"] == "RETRY"
    assert "error_message" not in succeeded and "backoff_s" not in succeeded
    assert crashed["error_message"] == "analysis child killed by SIGKILL"
    assert failed["error_message"] == "RetryableError: drill failure (retryable)"  # no traceback
    assert gpu_oom["error_kind"] == "OOM"
    assert gpu_oom["error_message"].startswith("OutOfMemoryError: CUDA out of memory. on 'user-")
    assert len(gpu_oom["error_message"]) == 300 and gpu_oom["error_message"].endswith("…")
    # Bounded, and no more of the input than the excerpt (each line parsed as one JSON line).
    text = json.dumps(gpu_oom)
    assert len(text) < 1500
    assert text.count("user-secret-text") < 20


def test_the_pattern_names_exactly_the_kinds_the_fanout_reads() -> None:
    tokens = _tokens(PATTERN)
    kinds = {tokens[i + 2].strip('"') for i, t in enumerate(tokens) if t == "$.error_kind"}
    assert kinds == {str(k) for k in CHILD_FELL_OVER_KINDS}
    assert ErrorKind.INTERRUPTED not in CHILD_FELL_OVER_KINDS  # preemption has its own path


def test_log_group_subscription_and_permission_agree() -> None:
    group = RESOURCES["WorkerLogGroup"]
    subscription = RESOURCES["WorkerChildFellOverSubscription"]
    permission = RESOURCES["WorkerChildFellOverPermission"]
    assert {r["Condition"] for r in (group, subscription, permission)} == {"DeployWorkers"}
    assert group["Properties"]["RetentionInDays"] == {"Ref": "WorkerLogRetentionDays"}
    assert subscription["Properties"]["LogGroupName"] == {"Ref": "WorkerLogGroup"}
    # The function's alias (AutoPublishAlias), as every invocation path: SnapStart serves it.
    assert subscription["Properties"]["DestinationArn"] == {"Ref": "AlarmFanoutFunction.Alias"}
    assert subscription["DependsOn"] == "WorkerChildFellOverPermission"
    assert permission["Properties"] == {
        "Action": "lambda:InvokeFunction",
        "FunctionName": {"Ref": "AlarmFanoutFunction.Alias"},
        "Principal": "logs.amazonaws.com",
        "SourceAccount": {"Ref": "AWS::AccountId"},
        "SourceArn": {"Fn::GetAtt": ["WorkerLogGroup", "Arn"]},
    }


def test_the_notice_is_named_and_tagged_like_the_child_restarted_alarm() -> None:
    alarm = RESOURCES["WorkerChildRestartedAlarm"]["Properties"]
    env = RESOURCES["AlarmFanoutFunction"]["Properties"]["Environment"]["Variables"]
    assert env["CHILD_NOTICE_NAME"] == alarm["AlarmName"]
    assert alarm["AlarmName"]["Fn::Sub"].endswith(f"-{CHILD_NOTICE_NAME}")
    assert {"Key": "severity", "Value": str(CHILD_NOTICE_SEVERITY)} in alarm["Tags"]
    assert "/spotline/STACK/worker" in alarm["AlarmDescription"]


def test_the_worker_role_may_write_to_its_log_group_only() -> None:
    statements = RESOURCES["WorkerRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    logs = [s for s in statements if any(str(a).startswith("logs:") for a in _list(s["Action"]))]
    (statement,) = logs
    assert sorted(statement["Action"]) == ["logs:CreateLogStream", "logs:PutLogEvents"]
    for resource in statement["Resource"]:
        assert "${WorkerLogGroup}" in resource["Fn::Sub"]
        assert resource["Fn::Sub"].startswith("arn:${AWS::Partition}:logs:${AWS::Region}:")


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _user_data() -> str:
    data = RESOURCES["WorkerLaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]
    text: str = data["Fn::Base64"]["Fn::Sub"][0]  # the script; [1] holds its variables
    return text


def test_the_worker_container_logs_to_its_group_without_ever_blocking() -> None:
    script = _user_data()
    variables = RESOURCES["WorkerLaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"][
        "Fn::Base64"
    ]["Fn::Sub"][1]
    compose = yaml.safe_load(variables["ComposeFile"])  # the repository's compose file
    logging = compose["services"]["worker"]["logging"]
    assert logging["driver"] == "awslogs"
    options = logging["options"]
    # compose reads them from the .env the user data writes from the stack
    assert options["awslogs-group"] == "${WORKER_LOG_GROUP:?set WORKER_LOG_GROUP}"
    assert "WORKER_LOG_GROUP=${WorkerLogGroup}" in script
    assert options["awslogs-region"] == "${AWS_REGION:-us-east-1}"
    assert "AWS_REGION=${AWS::Region}" in script
    assert options["awslogs-stream"] == "${WORKER_ID:?set WORKER_ID}"
    assert "WORKER_ID=$INSTANCE_ID" in script
    assert options["mode"] == "non-blocking"
    size = re.fullmatch(r"(\d+)([kmg])", options["max-buffer-size"])
    assert size is not None
    assert int(size.group(1)) * {"k": 2**10, "m": 2**20, "g": 2**30}[size.group(2)] <= 64 * 2**20
    assert "awslogs-create-group" not in options  # the template owns the group (retention)


def test_the_sample_event_is_what_cloudwatch_logs_sends() -> None:
    payload = worker_log_payload(load_event(EVENT))
    assert set(payload) == {
        "messageType",
        "owner",
        "logGroup",
        "logStream",
        "subscriptionFilters",
        "logEvents",
    }
    for log_event in payload["logEvents"]:
        assert set(log_event) == {"id", "timestamp", "message"} and len(log_event["id"]) == 56
        assert filter_matches(PATTERN, json.loads(log_event["message"]))


def test_devstack_creates_the_worker_log_group_with_its_retention(aws: None) -> None:
    stack = provision(
        boto3.Session(region_name="us-east-1"),
        stack_name="fleet",
        parameters={"DeployWorkers": "true", "WorkerLogRetentionDays": 14},
        types={"AWS::Logs::LogGroup"},
    )
    (group,) = boto3.client("logs", region_name="us-east-1").describe_log_groups(
        logGroupNamePrefix="/spotline/fleet/worker"
    )["logGroups"]
    assert group["retentionInDays"] == 14
    assert stack.attr("WorkerLogGroup", "Arn") == group["arn"]


# -- flood control: a burst per (stack, analyzer, failure kind) and window ---------------------

WINDOW_S = 900
# The start of a 15-minute window, and a minute into it.
WINDOW_START_S = 1795412592 // WINDOW_S * WINDOW_S
BURST_START_MS = (WINDOW_START_S + 60) * 1000


def falls(count: int, *, start_ms: int, **change: Any) -> dict[str, Any]:
    """One delivery of ``count`` OOM lines of memory_hog, each its own job, 1 ms apart."""
    lines = [{**sample_line(), "job_id": new_job_id(), **change} for _ in range(count)]
    payload = worker_log_payload(load_event(EVENT))
    return worker_log_event(
        [json.dumps(line) for line in lines],
        log_group=payload["logGroup"],
        log_stream=payload["logStream"],
        start_ms=start_ms,
    )


def slack_texts(sink: WebhookSink) -> list[str]:
    return [r.json()["text"] for r in sink.on("/slack")]


def test_a_burst_past_the_limit_is_held_back_and_the_next_window_counts_it(
    make_fanout_app: Callable[..., ModuleType], sink: WebhookSink
) -> None:
    app = make_fanout_app()
    assert (app.settings.child_notice_burst, app.settings.child_notice_window_s) == (5, WINDOW_S)
    burst = falls(8, start_ms=BURST_START_MS)
    assert invoke(app, burst) == {"notices": 8, "delivered": 15, "skipped": 0}
    assert len(sink.on("/slack")) == len(sink.on("/discord")) == len(sink.on("/webhook")) == 5
    # A Lambda retry of the delivery: the same five are skipped, the same three held back.
    assert invoke(app, burst) == {"notices": 8, "delivered": 0, "skipped": 15}
    # Another failure kind, or another analyzer, is another series: posted.
    invoke(app, falls(1, start_ms=BURST_START_MS + 100, error_kind="UNKNOWN"))
    invoke(app, falls(1, start_ms=BURST_START_MS + 200, analyzer="text_embed"))
    assert len(sink.on("/slack")) == 7
    assert not any("suppressed" in text for text in slack_texts(sink))

    later = falls(2, start_ms=(WINDOW_START_S + WINDOW_S + 30) * 1000)
    assert invoke(app, later)["delivered"] == 6
    *_, reporting, next_one = slack_texts(sink)
    assert reporting.endswith("\n… and 3 more like this were suppressed since 05:31 UTC")
    assert "suppressed" not in next_one  # said once
    (hook, _) = [r.json()["child_fell_over"] for r in sink.on("/webhook")[-2:]]
    assert (hook["suppressed_before"], hook["suppressed_since"]) == (3, "2026-11-23T05:31:00+00:00")


def test_held_back_notices_are_counted_once_in_a_metric(
    make_fanout_app: Callable[..., ModuleType],
    sink: WebhookSink,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A hold-back that no later notice reports (none comes within a day) still shows on
    CloudWatch; a Lambda retry of the delivery does not count it twice."""
    app = make_fanout_app(POWERTOOLS_METRICS_DISABLED="false")
    # Powertools keeps metrics on the class; a handler run with metrics disabled never flushes.
    app.metrics.clear_metrics()
    burst = falls(8, start_ms=BURST_START_MS)
    invoke(app, burst)
    invoke(app, burst)  # Lambda's retry: the same three held back again
    # The retry posts nothing new and holds nothing back for the first time: no metric at all.
    (first,) = emitted_metrics(capsys.readouterr().out)
    assert first["ChildNoticesHeldBack"] == [1.0] * 3
    assert first["AlarmNotifications"] == [1.0] * 15
    assert len(sink.on("/slack")) == 5


class _Serialized:
    """A DynamoDB client whose calls run one at a time, as each request does in DynamoDB
    (in-process moto interleaves a condition check with another thread's write)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return attribute(*args, **kwargs)

        return call


def test_concurrent_invocations_never_post_more_than_the_burst(stack: Stack) -> None:
    bursts = ChildNoticeBursts(
        _Serialized(boto3.client("dynamodb")), stack.ref("AlarmDeliveriesTable"), burst=5
    )
    start = datetime.fromtimestamp(WINDOW_START_S + 60, tz=UTC)
    barrier = threading.Barrier(12)

    def decide(index: int, at: datetime) -> BurstDecision:
        barrier.wait()
        return bursts.decide("series", f"event-{at.timestamp()}-{index}", at)

    with ThreadPoolExecutor(max_workers=12) as pool:
        first = list(pool.map(lambda i: decide(i, start), range(12)))
        later = start + timedelta(seconds=WINDOW_S)
        second = list(pool.map(lambda i: decide(i, later), range(12)))
    assert sum(d.post for d in first) == 5 and not any(d.error for d in first)
    assert sum(d.post for d in second) == 5
    # Exactly one notice of the next window reports the seven held back.
    assert sorted(d.suppressed_before for d in second if d.post) == [0, 0, 0, 0, 7]
    (reporter,) = [i for i, d in enumerate(second) if d.suppressed_before]
    assert second[reporter].suppressed_since == start
    # A retry of that notice says it again; a retry of another one does not.
    assert (
        bursts.decide("series", f"event-{later.timestamp()}-{reporter}", later)
        == (second[reporter])
    )
    other = next(i for i, d in enumerate(second) if d.post and i != reporter)
    assert bursts.decide("series", f"event-{later.timestamp()}-{other}", later) == (
        BurstDecision(True)
    )


class _Throttled:
    """A DynamoDB client that refuses ``failing`` calls as an overloaded table does."""

    def __init__(self, client: Any, failing: set[str], error: Exception | None = None) -> None:
        self._client = client
        self._failing = failing
        self._error = error or ClientError(
            {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}},
            "UpdateItem",
        )

    def __getattr__(self, name: str) -> Any:
        if name in self._failing:

            def refuse(*_: Any, **__: Any) -> Any:
                raise self._error

            return refuse
        return getattr(self._client, name)


def test_a_throttled_ledger_posts_the_notice_anyway_and_warns(
    make_fanout_app: Callable[..., ModuleType],
    sink: WebhookSink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_fanout_app(CHILD_NOTICE_BURST="1")
    bursts = app.fanout().bursts
    bursts.client = _Throttled(bursts.client, {"update_item"})
    result = invoke(app, falls(3, start_ms=BURST_START_MS))
    assert result == {"notices": 3, "delivered": 9, "skipped": 0}  # not held to the burst of 1
    warnings = [r for r in caplog.records if r.getMessage() == "posted despite a failure"]
    assert len(warnings) == 3 and {r.levelname for r in warnings} == {"WARNING"}
    assert "ProvisionedThroughputExceededException" in warnings[0].problem


def test_a_ledger_that_cannot_be_reached_posts_every_notice(stack: Stack) -> None:
    unreachable = EndpointConnectionError(endpoint_url="https://dynamodb.us-east-1.amazonaws.com")
    client = _Throttled(boto3.client("dynamodb"), {"update_item"}, unreachable)
    bursts = ChildNoticeBursts(client, stack.ref("AlarmDeliveriesTable"), burst=1)
    at = datetime.fromtimestamp(WINDOW_START_S, tz=UTC)
    decisions = [bursts.decide("series", f"event-{i}", at) for i in range(3)]
    assert decisions == [BurstDecision(True, error="EndpointConnectionError")] * 3


def test_a_report_that_cannot_be_read_still_posts_the_notice(stack: Stack) -> None:
    client = _Throttled(boto3.client("dynamodb"), {"get_item"})
    bursts = ChildNoticeBursts(client, stack.ref("AlarmDeliveriesTable"), burst=1)
    at = datetime.fromtimestamp(WINDOW_START_S, tz=UTC)
    first, second = (bursts.decide("series", f"event-{i}", at) for i in range(2))
    assert first == BurstDecision(True, error="ProvisionedThroughputExceededException")
    assert second == BurstDecision(False)  # the count itself was written: held back


def test_a_hold_back_that_cannot_be_written_posts_the_notice(stack: Stack) -> None:
    table = stack.ref("AlarmDeliveriesTable")
    bursts = ChildNoticeBursts(boto3.client("dynamodb"), table, burst=1)
    at = datetime.fromtimestamp(WINDOW_START_S, tz=UTC)
    assert bursts.decide("series", "first", at) == BurstDecision(True)
    assert bursts.decide("series", "second", at) == BurstDecision(False)

    class _RefuseHoldBack(_Throttled):
        def __getattr__(self, name: str) -> Any:
            if name != "update_item":
                return getattr(self._client, name)

            def update_item(**kwargs: Any) -> Any:
                if "suppressed" in kwargs["UpdateExpression"]:
                    raise self._error
                return self._client.update_item(**kwargs)

            return update_item

    bursts.client = _RefuseHoldBack(bursts.client, set())
    third = bursts.decide("series", "third", at)
    assert third.post and third.error == "ProvisionedThroughputExceededException"


def test_a_flood_past_the_kept_ids_is_still_counted(stack: Stack) -> None:
    table = stack.ref("AlarmDeliveriesTable")
    bursts = ChildNoticeBursts(boto3.client("dynamodb"), table, burst=1, held_ids_max=2)
    at = datetime.fromtimestamp(WINDOW_START_S, tz=UTC)
    decisions = [bursts.decide("series", f"event-{i}", at) for i in range(6)]
    assert [d.post for d in decisions] == [True] + [False] * 5
    item = boto3.client("dynamodb").get_item(
        TableName=table, Key=bursts.window_key("series", WINDOW_START_S)
    )
    assert len(item["Item"]["suppressed"]["SS"]) == 2  # the item stays small
    later = bursts.decide("series", "next", at + timedelta(seconds=WINDOW_S))
    assert (later.post, later.suppressed_before, later.suppressed_since) == (True, 5, at)


# -- the template: parameters, environment and the ledger keys the policy allows ---------------


def test_the_burst_and_window_come_from_template_parameters() -> None:
    env = RESOURCES["AlarmFanoutFunction"]["Properties"]["Environment"]["Variables"]
    parameters = TEMPLATE["Parameters"]
    assert env["CHILD_NOTICE_BURST"] == {"Ref": "ChildNoticeBurst"}
    assert env["CHILD_NOTICE_WINDOW_MINUTES"] == {"Ref": "ChildNoticeWindowMinutes"}
    assert parameters["ChildNoticeBurst"]["Default"] == 5
    assert parameters["ChildNoticeWindowMinutes"]["Default"] == WINDOW_S // 60


def _ledger_statement() -> dict[str, Any]:
    policies = RESOURCES["AlarmFanoutFunction"]["Properties"]["Policies"]
    statements = [s for p in policies for s in p.get("Statement", [])]
    (statement,) = [
        s for s in statements if s["Resource"] == {"Fn::GetAtt": ["AlarmDeliveriesTable", "Arn"]}
    ]
    return statement


def test_the_fanout_may_touch_only_its_own_ledger_keys(
    make_fanout_app: Callable[..., ModuleType], stack: Stack
) -> None:
    statement = _ledger_statement()
    patterns = statement["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"]
    assert sorted(statement["Action"]) == [
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
    ]
    # Every item the fan-out writes (an alarm, its flapping history, child notices, a
    # hold-back and its report) has a key the policy allows, and every pattern is used.
    app = make_fanout_app(CHILD_NOTICE_BURST="1")
    invoke(app, load_event("alarm_sns_alarm"))
    invoke(app, falls(2, start_ms=BURST_START_MS))
    invoke(app, falls(1, start_ms=(WINDOW_START_S + WINDOW_S) * 1000))
    items = boto3.client("dynamodb").scan(TableName=stack.ref("AlarmDeliveriesTable"))["Items"]
    keys = [item["pk"]["S"] for item in items]
    assert all(any(fnmatch.fnmatchcase(k, p) for p in patterns) for k in keys), keys
    assert all(any(fnmatch.fnmatchcase(k, p) for k in keys) for p in patterns), patterns
    assert all(
        int(item["expires_at"]["N"]) > WINDOW_START_S
        for item in items
        if "child-burst#" in item["pk"]["S"]
    )
