from __future__ import annotations

from collections.abc import Iterator

import pytest

from devstack.sink import WebhookSink
from spotline.alerts import (
    Alert,
    AlertSender,
    Channel,
    Severity,
    channels_from_env,
    render_discord,
    render_slack,
)
from spotline.webhooks import WebhookClient, retry_after_s

ALERT = Alert("Job dead-lettered", "OOM", Severity.CRITICAL, (("job", "abc"),), dedupe_key="k")


@pytest.fixture
def sink() -> Iterator[WebhookSink]:
    with WebhookSink() as server:
        yield server


def test_renderers_shape_slack_blocks_and_discord_embeds() -> None:
    slack = render_slack(ALERT)
    assert slack["attachments"][0]["blocks"][0]["type"] == "header"
    discord = render_discord(ALERT)
    assert discord["embeds"][0]["fields"][0] == {"name": "job", "value": "abc", "inline": True}


def test_channels_from_env_requires_a_secret_per_channel() -> None:
    env = {"ALERT_CHANNELS": "slack, discord", "SLACK_WEBHOOK_SECRET": "ssm:/s"}
    with pytest.raises(ValueError, match="DISCORD_WEBHOOK_SECRET"):
        channels_from_env(env)
    env["DISCORD_WEBHOOK_SECRET"] = "secretsmanager:d"
    assert [c.kind for c in channels_from_env(env)] == ["slack", "discord"]


def test_one_channel_failing_never_blocks_the_others(sink: WebhookSink) -> None:
    sink.script = {"/slack": [500], "/discord": [200]}
    sender = AlertSender(
        [Channel("slack", "slack", "/slack"), Channel("discord", "discord", "/discord")],
        client=WebhookClient(max_attempts=2, backoff_s=0),
        resolve=lambda ref: sink.url + ref,
    )
    deliveries = sender.send(ALERT)
    assert not deliveries["slack"].ok and deliveries["slack"].attempts == 2
    assert deliveries["discord"].ok
    assert sender.send(ALERT, skip=["discord"]).keys() == {"slack"}


def test_429_and_5xx_are_retried_then_succeed(sink: WebhookSink) -> None:
    sink.script = {"/s": [429, 503, 200]}
    delivery = WebhookClient(max_attempts=3, backoff_s=0).post_json(sink.url + "/s", {"a": 1})
    assert delivery.ok and delivery.attempts == 3


def test_redirects_are_not_followed(sink: WebhookSink) -> None:
    sink.script = {"/r": [302]}
    delivery = WebhookClient().post_json(sink.url + "/r", {})
    assert not delivery.ok and delivery.attempts == 1


def test_unreachable_webhook_is_a_failed_delivery_not_an_exception() -> None:
    delivery = WebhookClient(max_attempts=2, backoff_s=0).post_json("http://127.0.0.1:9/x", {})
    assert not delivery.ok and delivery.error


def test_missing_secret_fails_only_that_channel(sink: WebhookSink) -> None:
    def resolve(ref: str) -> str:
        if ref == "missing":
            raise KeyError(ref)
        return sink.url + ref

    sender = AlertSender(
        [Channel("slack", "slack", "missing"), Channel("webhook", "webhook", "/w")],
        resolve=resolve,
    )
    deliveries = sender.send(ALERT)
    assert not deliveries["slack"].ok and deliveries["webhook"].ok


def test_retry_after_accepts_seconds_and_dates() -> None:
    assert retry_after_s("3", 1.0) == 3.0
    assert retry_after_s("garbage", 1.5) == 1.5
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", 2.0) == 0.0
