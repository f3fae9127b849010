"""The alarm fan-out: both input shapes, routing, rendering per channel, independent delivery,
no duplicates on retry, flapping, and unreadable messages."""

from __future__ import annotations

import copy
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest

from alarm_fanout.alarm_shapes import AlarmNotice, Unreadable, parse_eventbridge_alarm
from alarm_fanout.delivery_memory import Claim, DeliveryLedger, FlapDecision, FlapTracker
from alarm_fanout.fanout import AlarmFanout, AlarmTags, EmailChannel
from alarm_fanout.notices import notices_from_event
from alarm_fanout.rendering import notice_alert, render_email
from alarm_fanout.routing import Routing
from devstack.cfn import Stack
from devstack.drills.alarms import CHANNELS, fanout_env
from devstack.lambdas import LambdaContext, load_event, load_handler_module
from devstack.motoserver import wait_until
from devstack.sink import WebhookSink
from spotline.alerts import AlertSender, Channel, Severity
from spotline.settings import MissingSetting
from spotline.webhooks import WebhookClient
from tests.unit.deadline_fixtures import CountdownContext, HostileServer, slow_headers

SNAPSHOTS = Path(__file__).parent / "snapshots"


def snapshot(name: str, actual: Any) -> None:
    """Compare with tests/unit/snapshots/NAME.json (SPOTLINE_UPDATE_SNAPSHOTS=1 rewrites it)."""
    path = SNAPSHOTS / f"{name}.json"
    text = json.dumps(actual, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    if os.environ.get("SPOTLINE_UPDATE_SNAPSHOTS") == "1":
        path.write_text(text, encoding="utf-8")
    assert json.loads(path.read_text(encoding="utf-8")) == actual, f"snapshot {path.name} differs"


class _Devstack:
    """What fanout_env needs from Devstack: an SSM client (moto in-process here)."""

    def client(self, service: str) -> Any:
        return boto3.client(service, region_name="us-east-1")


@pytest.fixture
def sink() -> Iterator[WebhookSink]:
    with WebhookSink() as server:
        yield server


@pytest.fixture
def make_fanout_app(stack: Stack, sink: WebhookSink) -> Callable[..., ModuleType]:
    """The real handler module, configured from the template (plus ``extra`` variables),
    channels pointing at the sink through SSM SecureString parameters read the real way."""
    from aws_lambda_powertools.utilities import parameters

    def make(**extra: str) -> ModuleType:
        parameters.clear_caches()
        env = {
            **fanout_env(sink.url, _Devstack()),  # type: ignore[arg-type]
            "POWERTOOLS_METRICS_DISABLED": "true",
            **extra,
        }
        return load_handler_module("alarm_fanout.app", stack, "AlarmFanoutFunction", env)

    return make


@pytest.fixture
def fanout_app(make_fanout_app: Callable[..., ModuleType]) -> ModuleType:
    return make_fanout_app()


def invoke(app: ModuleType, event: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = app.handler(event, LambdaContext(function_name="AlarmFanout"))
    return result


def posts(sink: WebhookSink, channel: str) -> list[Any]:
    return [r.json() for r in sink.on(f"/{channel}")]


# -- input shapes ----------------------------------------------------------------------------


def test_sns_alarm_notification_is_normalised() -> None:
    (notice,) = notices_from_event(load_event("alarm_sns_alarm"))
    assert isinstance(notice, AlarmNotice)
    assert (notice.name, notice.old_state, notice.new_state) == (
        "spotline-jobs-queue-age",
        "OK",
        "ALARM",
    )
    assert notice.metric == (
        "AWS/SQS ApproximateAgeOfOldestMessage (QueueName=spotline-JobsQueue-8GQ7kQm2), "
        "Maximum per 60 s"
    )
    assert notice.threshold == "> 900"
    assert (notice.region, notice.account) == ("us-east-1", "123456789012")
    assert notice.time == datetime(2026, 11, 23, 5, 43, 12, 345000, tzinfo=UTC)
    assert notice.console_link == (
        "https://us-east-1.console.aws.amazon.com/cloudwatch/home?region=us-east-1"
        "#alarmsV2:alarm/spotline-jobs-queue-age"
    )


def test_eventbridge_state_change_is_normalised() -> None:
    (notice,) = notices_from_event(load_event("alarm_eventbridge_state_change"))
    assert isinstance(notice, AlarmNotice)
    assert (notice.name, notice.old_state, notice.new_state, notice.source) == (
        "spotline-jobs-dlq-not-empty",
        "OK",
        "ALARM",
        "eventbridge",
    )
    assert notice.metric.startswith("AWS/SQS ApproximateNumberOfMessagesVisible (QueueName=")
    assert notice.threshold == "threshold 1"
    assert notice.region == "us-east-1" and notice.account == "123456789012"
    assert notice.arn.endswith(":alarm:spotline-jobs-dlq-not-empty")


def test_both_shapes_of_one_transition_share_its_key() -> None:
    (from_sns,) = notices_from_event(load_event("alarm_sns_alarm"))
    event = copy.deepcopy(load_event("alarm_eventbridge_state_change"))
    event["detail"]["alarmName"] = "spotline-jobs-queue-age"
    event["detail"]["state"]["timestamp"] = "2026-11-23T05:43:12.345+0000"
    assert isinstance(from_sns, AlarmNotice)
    assert parse_eventbridge_alarm(event).transition_key == from_sns.transition_key


def test_composite_alarm_shows_its_rule() -> None:
    (notice,) = notices_from_event(load_event("alarm_composite"))
    assert isinstance(notice, AlarmNotice) and notice.composite
    assert notice.metric.startswith('composite: ALARM("spotline-jobs-queue-age") AND')
    event = copy.deepcopy(load_event("alarm_eventbridge_state_change"))
    event["detail"]["configuration"] = {"alarmRule": 'ALARM("a") OR ALARM("b")'}
    assert parse_eventbridge_alarm(event).metric == 'composite: ALARM("a") OR ALARM("b")'


@pytest.mark.parametrize(
    ("event", "problem"),
    [
        (load_event("alarm_malformed"), "message is not JSON"),
        ({"Records": [{"Sns": {"MessageId": "m", "Message": '{"AlarmName": "x"}'}}]}, "missing"),
        ({"Records": [{"Sns": {"MessageId": "m", "Message": "[1]"}}]}, "not a JSON object"),
        ({"Records": ["junk"]}, "record without an Sns notification"),
        ({"detail-type": "CloudWatch Alarm State Change", "detail": {}}, "missing detail.state"),
        ({"hello": "world"}, "neither an SNS notification"),
        ("just text", "neither an SNS notification"),
    ],
)
def test_unreadable_messages_are_described_not_raised(event: Any, problem: str) -> None:
    (notice,) = notices_from_event(event)
    assert isinstance(notice, Unreadable) and problem in notice.problem


# -- rendering: one snapshot of the JSON sent per channel --------------------------------------


def test_every_channel_renders_the_alarm_as_snapshotted(
    fanout_app: ModuleType, sink: WebhookSink
) -> None:
    invoke(fanout_app, load_event("alarm_sns_alarm"))
    for channel in CHANNELS:
        (sent,) = posts(sink, channel)
        snapshot(f"alarm_{channel}", sent)
    (slack,) = posts(sink, "slack")
    assert slack["attachments"][0]["color"] == "#d72b3f"  # ALARM is red


def test_ok_transition_renders_as_resolved_in_green(
    fanout_app: ModuleType, sink: WebhookSink
) -> None:
    invoke(fanout_app, load_event("alarm_sns_ok"))
    (slack,) = posts(sink, "slack")
    assert slack["attachments"][0]["blocks"][0]["text"]["text"] == (
        "Resolved: spotline-jobs-queue-age"
    )
    assert slack["attachments"][0]["color"] == "#2eb67d"
    (discord,) = posts(sink, "discord")
    snapshot("alarm_discord_resolved", discord)
    (webhook,) = posts(sink, "webhook")
    assert webhook["severity"] == "resolved" and webhook["alarm"]["resolved"] is True


def test_email_channel_publishes_a_plain_text_rendering(stack: Stack) -> None:
    sns = boto3.client("sns", region_name="us-east-1")
    sqs = boto3.client("sqs", region_name="us-east-1")
    inbox = sqs.create_queue(QueueName="inbox")["QueueUrl"]
    inbox_arn = sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])
    sns.subscribe(
        TopicArn=stack.ref("AlarmEmailTopic"),
        Protocol="sqs",
        Endpoint=inbox_arn["Attributes"]["QueueArn"],
    )
    (notice,) = notices_from_event(load_event("alarm_sns_alarm"))
    assert isinstance(notice, AlarmNotice)
    delivery = EmailChannel(sns, stack.ref("AlarmEmailTopic")).send(notice_alert(notice))
    assert delivery.ok
    (message,) = sqs.receive_message(QueueUrl=inbox)["Messages"]
    published = json.loads(message["Body"])
    snapshot("alarm_email", {"Subject": published["Subject"], "Message": published["Message"]})


def test_email_subject_is_one_ascii_line_of_at_most_100_characters() -> None:
    (notice,) = notices_from_event(load_event("alarm_sns_ok"))
    assert isinstance(notice, AlarmNotice)
    long = AlarmNotice(**{**notice.__dict__, "name": "é" * 300})
    subject, _ = render_email(notice_alert(long))
    assert len(subject) <= 100 and subject.isascii() and "\n" not in subject


def test_email_publish_failure_fails_only_that_channel() -> None:
    class Broken:
        def publish(self, **_: Any) -> None:
            raise ConnectionError("sns down")

    (notice,) = notices_from_event(load_event("alarm_sns_alarm"))
    assert isinstance(notice, AlarmNotice)
    delivery = EmailChannel(Broken(), "arn:aws:sns:us-east-1:1:t").send(notice_alert(notice))
    assert not delivery.ok and delivery.error == "ConnectionError"


# -- routing ---------------------------------------------------------------------------------


def test_routes_by_prefix_and_severity_else_default() -> None:
    routing = Routing.parse(
        "severity:critical=slack,email; prefix:spotline-prod-=discord;"
        " prefix:spotline-prod-&severity:warning=webhook",
        "slack",
        ["slack", "discord", "webhook", "email"],
    )
    assert routing.channels_for("spotline-prod-jobs-queue-age", "critical") == (
        "slack",
        "email",
        "discord",
    )
    assert routing.channels_for("spotline-prod-worker-memory-high", "warning") == (
        "discord",
        "webhook",
    )
    assert routing.channels_for("other-alarm", "CRITICAL") == ("slack", "email")
    assert routing.channels_for("other-alarm", None) == ("slack",)
    assert routing.fallback_channel == ("slack",)


def test_routing_without_defaults_uses_every_channel() -> None:
    routing = Routing.parse("", "", ["slack", "discord"])
    assert routing.channels_for("x", None) == ("slack", "discord")


@pytest.mark.parametrize(
    ("routes", "defaults", "message"),
    [
        ("severity:critical=pager", "", "names channel 'pager'"),
        ("", "teams", "names channel 'teams'"),
        ("colour:red=slack", "", "must be prefix:VALUE or severity:VALUE"),
        ("severity:critical", "", "must be MATCH=channel"),
    ],
)
def test_bad_routes_fail_at_cold_start(routes: str, defaults: str, message: str) -> None:
    with pytest.raises(MissingSetting, match=message):
        Routing.parse(routes, defaults, ["slack", "discord"])


def test_severity_tag_of_the_template_alarm_routes_it(
    stack: Stack, make_fanout_app: Callable[..., ModuleType], sink: WebhookSink
) -> None:
    # The template tags the queue-age alarm severity=critical.
    app = make_fanout_app(
        ALARM_ROUTES="severity:critical=discord", ALARM_DEFAULT_CHANNELS="webhook"
    )
    event = copy.deepcopy(load_event("alarm_sns_alarm"))
    message = json.loads(event["Records"][0]["Sns"]["Message"])
    message["AlarmArn"] = stack.attr("JobsQueueAgeAlarm", "Arn")
    message["AlarmName"] = stack.ref("JobsQueueAgeAlarm")
    event["Records"][0]["Sns"]["Message"] = json.dumps(message)
    invoke(app, event)
    assert len(posts(sink, "discord")) == 1
    assert posts(sink, "slack") == [] and posts(sink, "webhook") == []
    assert posts(sink, "discord")[0]["embeds"][0]["fields"][-1] == {
        "name": "Severity",
        "value": "critical",
        "inline": True,
    }


def test_tag_lookup_failure_means_no_tags_not_no_alert() -> None:
    class Broken:
        def list_tags_for_resource(self, **_: Any) -> None:
            raise TimeoutError

    errors: list[str] = []
    tags = AlarmTags(Broken(), on_error=lambda arn, exc: errors.append(arn))
    assert tags("arn:aws:cloudwatch:us-east-1:1:alarm:x") == {}
    assert errors == ["arn:aws:cloudwatch:us-east-1:1:alarm:x"]


# -- delivery: independent channels, retries without duplicates --------------------------------


@pytest.fixture
def ledger(stack: Stack) -> DeliveryLedger:
    return DeliveryLedger(boto3.client("dynamodb"), stack.ref("AlarmDeliveriesTable"))


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts connections and never answers: a webhook that times out."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()


def test_one_channel_500_and_one_timing_out_never_block_the_other(
    ledger: DeliveryLedger, sink: WebhookSink, silent_server: str
) -> None:
    sink.script = {"/slack": [500]}
    urls = {"slack": sink.url + "/slack", "discord": silent_server, "webhook": sink.url + "/hook"}
    sender = AlertSender(
        [Channel(name, name, name) for name in ("slack", "discord", "webhook")],
        client=WebhookClient(read_timeout_s=0.3, max_attempts=2, backoff_s=0),
        resolve=urls.__getitem__,
    )
    fanout = AlarmFanout(sender=sender, routing=Routing.parse("", "", CHANNELS), ledger=ledger)
    (outcome,) = fanout.handle(load_event("alarm_sns_alarm"))
    assert outcome.failed == ["discord", "slack"]
    assert outcome.deliveries["discord"].error == "ReadTimeout"
    assert outcome.deliveries["slack"].status == 500
    assert len(sink.on("/hook")) == 1 and outcome.deliveries["webhook"].ok
    # The retry sends only to the channels that failed.
    sink.script = {}
    urls["discord"] = sink.url + "/discord"
    (retry,) = fanout.handle(load_event("alarm_sns_alarm"))
    assert retry.ok and sorted(retry.deliveries) == ["discord", "slack"]
    assert retry.skipped == ("webhook",)
    assert len(sink.on("/hook")) == 1


def test_a_slow_loris_channel_costs_the_notice_its_share_and_the_others_are_delivered(
    make_fanout_app: Callable[..., ModuleType], sink: WebhookSink
) -> None:
    from aws_lambda_powertools.utilities import parameters

    with HostileServer(slow_headers) as slow:
        app = make_fanout_app()
        boto3.client("ssm").put_parameter(
            Name="/spotline/alarms/discord-webhook-url",
            Value=slow.url + "/discord",
            Type="SecureString",
            Overwrite=True,
        )
        parameters.clear_caches()
        context = CountdownContext(remaining_s=4.0, function_name="AlarmFanoutFunction")
        started = time.monotonic()
        with pytest.raises(app.FanoutIncomplete, match="discord"):
            app.handler(load_event("alarm_sns_alarm"), context)
        took_s = time.monotonic() - started
        # One notice, reserve 3 s: the slow channel may hold it 1 s, never its client's 15 s.
        assert took_s < 4.0 - app.RESPONSE_RESERVE_S + 1.0, took_s
        assert len(posts(sink, "slack")) == len(posts(sink, "webhook")) == 1
        wait_until(lambda: slow.ended == slow.accepted == 1, timeout=3)


def test_handler_raises_for_a_retry_and_the_retry_never_reposts(
    fanout_app: ModuleType, sink: WebhookSink
) -> None:
    sink.script = {"/slack": [500, 500, 500, 200]}
    with pytest.raises(fanout_app.FanoutIncomplete, match="slack"):
        invoke(fanout_app, load_event("alarm_sns_alarm"))
    assert len(posts(sink, "discord")) == len(posts(sink, "webhook")) == 1
    result = invoke(fanout_app, load_event("alarm_sns_alarm"))  # Lambda's retry
    assert result == {"notices": 1, "delivered": 1, "skipped": 2}
    assert len(posts(sink, "slack")) == 4  # three 500s, then the one that landed
    assert len(posts(sink, "discord")) == len(posts(sink, "webhook")) == 1
    # And the EventBridge copy of the same transition changes nothing.
    event = copy.deepcopy(load_event("alarm_eventbridge_state_change"))
    event["detail"]["alarmName"] = "spotline-jobs-queue-age"
    event["detail"]["state"]["timestamp"] = "2026-11-23T05:43:12.345+0000"
    assert invoke(fanout_app, event) == {"notices": 1, "delivered": 0, "skipped": 3}


def test_a_delivery_in_flight_elsewhere_is_awaited_not_duplicated(
    ledger: DeliveryLedger, sink: WebhookSink
) -> None:
    (notice,) = notices_from_event(load_event("alarm_sns_alarm"))
    assert isinstance(notice, AlarmNotice)
    assert ledger.claim(notice.transition_key, "slack") == Claim.CLAIMED  # the other path

    def other_path_finishes(_: float) -> None:
        ledger.delivered(notice.transition_key, "slack")

    fanout = AlarmFanout(
        sender=AlertSender([Channel("slack", "slack", "/s")], resolve=lambda r: sink.url + r),
        routing=Routing.parse("", "", ["slack"]),
        ledger=ledger,
        sleep=other_path_finishes,
    )
    outcome = fanout.notify(notice)
    assert outcome.ok and outcome.skipped == ("slack",) and sink.on("/s") == []


def test_a_delivery_still_in_flight_after_the_wait_is_a_failure_to_retry(
    ledger: DeliveryLedger,
) -> None:
    (notice,) = notices_from_event(load_event("alarm_sns_alarm"))
    assert isinstance(notice, AlarmNotice)
    ledger.claim(notice.transition_key, "slack")
    fanout = AlarmFanout(
        sender=AlertSender([Channel("slack", "slack", "/s")], resolve=lambda r: r),
        routing=Routing.parse("", "", ["slack"]),
        ledger=ledger,
        busy_wait_s=0,
    )
    outcome = fanout.notify(notice)
    assert outcome.busy == ("slack",) and outcome.failed == ["slack"]


def test_an_expired_lease_is_taken_over(stack: Stack) -> None:
    now = [1_000_000.0]
    ledger = DeliveryLedger(
        boto3.client("dynamodb"), stack.ref("AlarmDeliveriesTable"), clock=lambda: now[0]
    )
    assert ledger.claim("k", "slack") == Claim.CLAIMED
    assert ledger.claim("k", "slack") == Claim.BUSY
    now[0] += ledger.lease_s + 1  # the first holder died mid-send
    assert ledger.claim("k", "slack") == Claim.CLAIMED
    ledger.failed("k", "slack")
    assert ledger.claim("k", "slack") == Claim.CLAIMED
    ledger.delivered("k", "slack")
    assert ledger.claim("k", "slack") == Claim.DELIVERED


# -- flapping --------------------------------------------------------------------------------


def _transitions(start: datetime, states: list[str], step: timedelta) -> list[AlarmNotice]:
    (base,) = notices_from_event(load_event("alarm_sns_alarm"))
    assert isinstance(base, AlarmNotice)
    notices, old = [], "OK"
    for index, state in enumerate(states):
        notices.append(
            AlarmNotice(
                **{
                    **base.__dict__,
                    "old_state": old,
                    "new_state": state,
                    "time": start + index * step,
                }
            )
        )
        old = state
    return notices


def test_flapping_alarm_is_summarised_then_held_back(
    ledger: DeliveryLedger, sink: WebhookSink, stack: Stack
) -> None:
    flaps = FlapTracker(
        boto3.client("dynamodb"), stack.ref("AlarmDeliveriesTable"), max_changes=4, window_s=1800
    )
    fanout = AlarmFanout(
        sender=AlertSender([Channel("slack", "slack", "/s")], resolve=lambda r: sink.url + r),
        routing=Routing.parse("", "", ["slack"]),
        ledger=ledger,
        flaps=flaps,
    )
    start = datetime(2026, 11, 23, 5, 0, tzinfo=UTC)
    states = ["ALARM", "OK", "ALARM", "OK", "ALARM", "OK", "ALARM", "OK"]
    decisions = [
        fanout.notify(n).decision for n in _transitions(start, states, timedelta(minutes=1))
    ]
    assert decisions == ["post"] * 4 + ["summary"] + ["suppress"] * 3
    titles = [r.json()["attachments"][0]["blocks"][0]["text"]["text"] for r in sink.on("/s")]
    assert titles[4] == "Flapping: spotline-jobs-queue-age"
    assert len(titles) == 5
    summary = sink.on("/s")[4].json()
    assert "5 state changes in the last 30 min; now ALARM" in summary["text"]
    # Quiet for longer than the window: the next change is posted as usual.
    (later,) = _transitions(start + timedelta(minutes=45), ["ALARM"], timedelta(0))
    assert fanout.notify(later).decision == "post"


def test_flapping_never_hides_an_alarm_chat_has_not_seen(stack: Stack) -> None:
    flaps = FlapTracker(
        boto3.client("dynamodb"), stack.ref("AlarmDeliveriesTable"), max_changes=3, window_s=600
    )
    start = datetime(2026, 11, 23, 5, 0, tzinfo=UTC)
    states = ["ALARM", "OK", "ALARM", "OK", "ALARM", "OK"]
    notices = _transitions(start, states, timedelta(seconds=30))
    # The 4th change (into OK) is the summary; the 5th, into ALARM, must still be posted.
    kinds = [flaps.decide(n).kind for n in notices]
    assert kinds == ["post", "post", "post", "summary", "summary", "suppress"]
    # A retry of an already decided transition gets the same decision.
    assert flaps.decide(notices[3]) == FlapDecision("summary", 4, 600)


def test_flap_summary_shows_as_flapping_for_webhooks() -> None:
    (notice,) = notices_from_event(load_event("alarm_sns_alarm"))
    assert isinstance(notice, AlarmNotice)
    alert = notice_alert(notice, flapping=FlapDecision("summary", 6, 1800))
    assert alert.title.startswith("Flapping:") and alert.extra["alarm"]["flapping"] is True
    assert alert.severity == Severity.CRITICAL


# -- unreadable messages ---------------------------------------------------------------------


def test_malformed_message_is_logged_and_forwarded_raw_to_the_default_channel(
    fanout_app: ModuleType, sink: WebhookSink, caplog: pytest.LogCaptureFixture
) -> None:
    result = invoke(fanout_app, load_event("alarm_malformed"))
    assert result["notices"] == 1 and result["delivered"] == 1
    (forwarded,) = posts(sink, "slack")  # the first default channel only
    assert posts(sink, "discord") == [] and posts(sink, "webhook") == []
    assert "Budget report: spending is up 12% {see attached" in json.dumps(forwarded)
    snapshot("alarm_unreadable_slack", forwarded)
    (warning,) = [r for r in caplog.records if r.getMessage().startswith("unreadable")]
    assert warning.levelname == "WARNING"
    assert warning.problem == "message is not JSON"  # type: ignore[attr-defined]
    assert warning.excerpt.startswith("Budget report")  # type: ignore[attr-defined]


@pytest.mark.parametrize("event", [{}, {"Records": None}, {"detail-type": 3}])
def test_events_of_no_known_shape_never_crash(
    fanout_app: ModuleType, sink: WebhookSink, event: dict[str, Any]
) -> None:
    assert invoke(fanout_app, event)["notices"] == 1
    assert len(posts(sink, "slack")) == 1


def _leaf_mutations(value: Any) -> Iterator[Any]:
    """``value`` with each leaf (and each container) replaced by values of other types."""
    replacements: list[Any] = [None, 7, "x", [], {}, [1], {"a": 1}]
    if isinstance(value, dict):
        for key in value:
            for mutated in _leaf_mutations(value[key]):
                yield {**value, key: mutated}
    elif isinstance(value, list):
        for index, item in enumerate(value):
            for mutated in _leaf_mutations(item):
                yield [*value[:index], mutated, *value[index + 1 :]]
    yield from replacements


@pytest.mark.parametrize(
    "name",
    [
        "alarm_sns_alarm",
        "alarm_sns_ok",
        "alarm_composite",
        "alarm_eventbridge_state_change",
        "alarm_malformed",
    ],
)
def test_mutated_events_are_read_or_unreadable_never_an_exception(name: str) -> None:
    event = load_event(name)
    variants = list(_leaf_mutations(event))
    if "Records" in event:  # the alarm JSON inside the SNS message too
        record = event["Records"][0]
        try:
            message = json.loads(record["Sns"]["Message"])
        except ValueError:
            message = None
        if message is not None:
            for mutated in _leaf_mutations(message):
                sns = {**record["Sns"], "Message": json.dumps(mutated)}
                variants.append({"Records": [{**record, "Sns": sns}]})
    text = json.dumps(event)
    variants += [text[:cut] for cut in range(0, len(text), max(1, len(text) // 40))]
    for variant in variants:
        notices = notices_from_event(variant)
        assert len(notices) >= 1 or variant.get("Records") == []
