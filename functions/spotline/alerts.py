"""Operator alerts: one model, rendered per channel (Slack, Discord, generic webhook), delivered
to each channel independently and in parallel.

Webhook URLs are secrets: they come from SSM Parameter Store (SecureString) or Secrets Manager
through Powertools parameters (cached), never from plain template parameters, and are never
logged.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from spotline.deadlines import Deadline, DeadlineExceeded, run_within
from spotline.webhooks import DEADLINE_EXCEEDED, Delivery, WebhookClient


class Severity(enum.StrEnum):
    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"
    RESOLVED = "resolved"


# Slack attachment / Discord embed colours by severity.
COLOURS = {
    Severity.CRITICAL: 0xD72B3F,
    Severity.WARNING: 0xF2A33A,
    Severity.INFO: 0x3A87F2,
    Severity.RESOLVED: 0x2EB67D,
}


@dataclass(frozen=True)
class Alert:
    title: str
    text: str
    severity: Severity = Severity.WARNING
    fields: tuple[tuple[str, str], ...] = ()
    link: str | None = None
    # Identifies the alert across retries: a channel that already took it is skipped.
    dedupe_key: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def render_slack(alert: Alert) -> dict[str, Any]:
    """Slack incoming-webhook payload: Block Kit inside a coloured attachment."""
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": alert.title[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": alert.text[:3000] or " "}},
    ]
    if alert.fields:
        blocks.append(
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": f"*{name}*\n{value}"[:2000]}
                    for name, value in alert.fields[:10]
                ],
            }
        )
    if alert.link:
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Open in console"},
                        "url": alert.link,
                    }
                ],
            }
        )
    return {
        "text": f"{alert.title}: {alert.text}"[:3000],
        "attachments": [{"color": f"#{COLOURS[alert.severity]:06x}", "blocks": blocks}],
    }


def render_discord(alert: Alert) -> dict[str, Any]:
    """Discord webhook payload: one embed."""
    embed: dict[str, Any] = {
        "title": alert.title[:256],
        "description": alert.text[:4096],
        "color": COLOURS[alert.severity],
        "fields": [
            {"name": name[:256], "value": (value or "-")[:1024], "inline": True}
            for name, value in alert.fields[:25]
        ],
    }
    if alert.link:
        embed["url"] = alert.link
    return {"embeds": [embed], "allowed_mentions": {"parse": []}}


def render_webhook(alert: Alert) -> dict[str, Any]:
    """Generic JSON webhook payload."""
    return {
        "title": alert.title,
        "text": alert.text,
        "severity": str(alert.severity),
        "fields": dict(alert.fields),
        "link": alert.link,
        "dedupe_key": alert.dedupe_key,
        **alert.extra,
    }


RENDERERS: dict[str, Callable[[Alert], dict[str, Any]]] = {
    "slack": render_slack,
    "discord": render_discord,
    "webhook": render_webhook,
}


@dataclass(frozen=True)
class Channel:
    """A named destination: its kind picks the renderer, ``secret_ref`` names where its URL is
    (``ssm:/path`` for a SecureString parameter, ``secretsmanager:name`` for a secret)."""

    name: str
    kind: str
    secret_ref: str


def channels_from_env(environ: Mapping[str, str] | None = None) -> list[Channel]:
    """``ALERT_CHANNELS=slack,discord`` with ``SLACK_WEBHOOK_SECRET=ssm:/spotline/slack`` etc.

    A channel listed without its ``<NAME>_WEBHOOK_SECRET`` is a configuration error, raised at
    cold start with the variable's name.
    """
    env = os.environ if environ is None else environ
    names = [n.strip().lower() for n in env.get("ALERT_CHANNELS", "").split(",") if n.strip()]
    channels = []
    for name in names:
        kind = name.split("-", 1)[0]
        if kind not in RENDERERS:
            raise ValueError(f"ALERT_CHANNELS: unknown channel kind {kind!r} in {name!r}")
        variable = f"{name.upper().replace('-', '_')}_WEBHOOK_SECRET"
        secret_ref = env.get(variable, "").strip()
        if not secret_ref:
            raise ValueError(f"environment variable {variable} is required for channel {name}")
        channels.append(Channel(name, kind, secret_ref))
    return channels


def resolve_secret(secret_ref: str, *, max_age_s: int = 300) -> str:
    """The secret's value, through Powertools parameters (cached for ``max_age_s``)."""
    from aws_lambda_powertools.utilities import parameters

    source, _, name = secret_ref.partition(":")
    if source == "ssm":
        return str(parameters.get_parameter(name, decrypt=True, max_age=max_age_s))
    if source == "secretsmanager":
        return str(parameters.get_secret(name, max_age=max_age_s))
    raise ValueError(f"secret reference must start with ssm: or secretsmanager:, got {source!r}")


class AlertSender:
    """Deliver an alert to every channel, each independently, in parallel."""

    def __init__(
        self,
        channels: Iterable[Channel],
        *,
        client: WebhookClient | None = None,
        resolve: Callable[[str], str] = resolve_secret,
    ) -> None:
        self.channels = list(channels)
        self.client = client or WebhookClient()
        self._resolve = resolve

    def _deliver(self, channel: Channel, alert: Alert, deadline: Deadline) -> Delivery:
        try:
            url = run_within(deadline, lambda: self._resolve(channel.secret_ref))
        except DeadlineExceeded:
            return Delivery(False, None, 0, f"{DEADLINE_EXCEEDED} (reading the webhook secret)")
        except Exception as exc:  # noqa: BLE001 - a missing secret fails this channel only
            return Delivery(False, None, 0, f"secret unavailable: {type(exc).__name__}")
        return self.client.post_json(url, RENDERERS[channel.kind](alert), deadline=deadline)

    def send(
        self, alert: Alert, *, skip: Iterable[str] = (), deadline: Deadline | None = None
    ) -> dict[str, Delivery]:
        """Deliveries by channel name; channels in ``skip`` (delivered before) are left out.

        Every channel is done by ``deadline`` (and within the client's ``max_total_s``): the
        channels deliver side by side, so a slow one never delays the others.
        """
        todo = [c for c in self.channels if c.name not in set(skip)]
        if not todo:
            return {}
        deadline = self.client.deadline(deadline)
        with ThreadPoolExecutor(max_workers=len(todo)) as pool:
            futures = {c.name: pool.submit(self._deliver, c, alert, deadline) for c in todo}
            return {name: future.result() for name, future in futures.items()}
