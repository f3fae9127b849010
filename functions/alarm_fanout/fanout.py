"""CloudWatch alarms to chat: one alarm model from either source, routed, rendered, delivered once.

The fan-out itself is here; its parts sit beside it: ``alarm_shapes`` and ``child_notices`` parse
(``notices`` picks the parser for an event), ``routing``, ``rendering``, ``delivery_memory`` (the
ledger and flap tracking) and ``notice_bursts``.

Alarm state changes arrive in two shapes: a CloudWatch alarm notification inside an SNS record
(the alarm's ``AlarmActions`` / ``OKActions`` point at the alarm topic) and an EventBridge
``CloudWatch Alarm State Change`` event. Both become one :class:`AlarmNotice`. The same
transition often arrives by both paths (every alarm also emits the EventBridge event), and
Lambda retries a failed invocation, so deliveries are remembered per transition and channel in a
small DynamoDB table: a channel that took a transition never gets it again.

An alarm that toggles more than ``max_changes`` times in ``window_s`` is *flapping*: it is
summarised instead of posted each time, but a change into ``ALARM`` that chat has not yet seen is
always posted, so flapping can never hide an alarm.

A third input is the worker's own log: a CloudWatch Logs subscription on the worker log group
delivers each "job finished" line of an attempt that took the analysis child down (OOM, crash,
timeout), and each becomes a :class:`ChildFellOver` notice naming the job, routed like the
``worker-child-restarted`` alarm and remembered per log event, so a retry never posts it twice.
A model that falls over on every job is held to a burst of notices per window
(:mod:`alarm_fanout.notice_bursts`); the next notice posted says how many were held back.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from alarm_fanout.alarm_shapes import EMAIL_CHANNEL, AlarmNotice, Unreadable
from alarm_fanout.child_notices import (
    CHILD_NOTICE_NAME,
    CHILD_NOTICE_SEVERITY,
    CHILD_SUPPRESSED,
    ChildFellOver,
)
from alarm_fanout.delivery_memory import Claim, DeliveryLedger, FlapDecision, FlapTracker
from alarm_fanout.notice_bursts import (
    DEFAULT_BURST,
    DEFAULT_WINDOW_S,
    BurstDecision,
    ChildNoticeBursts,
)
from alarm_fanout.notices import notices_from_event
from alarm_fanout.rendering import child_alert, notice_alert, render_email, unreadable_alert
from alarm_fanout.routing import Routing
from spotline.alerts import Alert, AlertSender
from spotline.deadlines import Deadline, TimeBudget
from spotline.settings import env_int, require_env
from spotline.webhooks import Delivery

# -- channels beyond webhooks ----------------------------------------------------------------


class EmailChannel:
    """Email through an SNS topic with email subscriptions (one publish per alert)."""

    name = EMAIL_CHANNEL

    def __init__(self, client: Any, topic_arn: str) -> None:
        self.client = client
        self.topic_arn = topic_arn

    def send(self, alert: Alert) -> Delivery:
        subject, body = render_email(alert)
        try:
            self.client.publish(TopicArn=self.topic_arn, Subject=subject, Message=body)
        except Exception as exc:  # noqa: BLE001 - a failed publish fails this channel only
            return Delivery(False, None, 1, type(exc).__name__)
        return Delivery(True, 200, 1)


# -- the fan-out -----------------------------------------------------------------------------


@dataclass
class FanoutOutcome:
    """What happened to one notice: the decision and each channel's delivery."""

    key: str
    name: str
    decision: str
    deliveries: dict[str, Delivery] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()  # channels that had it already
    busy: tuple[str, ...] = ()  # channels another invocation was still sending to
    problem: str = ""  # why a message was unreadable
    excerpt: str = ""  # its first characters, for the log
    warning: str = ""  # something went wrong on the way, yet it was posted (fail open)
    repeat: bool = False  # held back again: a retry of a notice held back before

    @property
    def failed(self) -> list[str]:
        return sorted(n for n, d in self.deliveries.items() if not d.ok) + list(self.busy)

    @property
    def ok(self) -> bool:
        return not self.failed


def _tags_none(_: str) -> dict[str, str]:
    return {}


class AlarmFanout:
    def __init__(
        self,
        *,
        sender: AlertSender,
        routing: Routing,
        ledger: DeliveryLedger,
        flaps: FlapTracker | None = None,
        bursts: ChildNoticeBursts | None = None,
        email: EmailChannel | None = None,
        tags: Callable[[str], Mapping[str, str]] = _tags_none,
        child_notice_name: str = CHILD_NOTICE_NAME,
        region: str = "",
        busy_wait_s: float = 20.0,
        poll_s: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.sender = sender
        self.routing = routing
        self.ledger = ledger
        self.flaps = flaps
        self.bursts = bursts
        self.email = email
        self.tags = tags
        self.child_notice_name = child_notice_name
        self.region = region
        self.busy_wait_s = busy_wait_s
        self.poll_s = poll_s
        self._sleep = sleep

    def handle(self, event: Any, *, budget: TimeBudget | None = None) -> list[FanoutOutcome]:
        """Each notice delivered by its share of ``budget`` (the invocation's time left): a
        slow channel costs one notice's share, never the notices after it."""
        outcomes = []
        notices = notices_from_event(
            event, child_notice_name=self.child_notice_name, region=self.region
        )
        deadlines = budget.shares(len(notices)) if budget is not None else None
        for notice in notices:
            deadline = next(deadlines) if deadlines is not None else None
            if isinstance(notice, Unreadable):
                outcomes.append(self.forward_unreadable(notice, deadline=deadline))
            elif isinstance(notice, ChildFellOver):
                outcomes.append(self.notify_child(notice, deadline=deadline))
            else:
                outcomes.append(self.notify(notice, deadline=deadline))
        return outcomes

    def notify(self, notice: AlarmNotice, *, deadline: Deadline | None = None) -> FanoutOutcome:
        severity = self.tags(notice.arn).get("severity") if notice.arn else None
        decision = (
            self.flaps.decide(notice)
            if self.flaps is not None
            else FlapDecision(FlapDecision.POST, 1, 0)
        )
        if decision.kind == FlapDecision.SUPPRESS:
            return FanoutOutcome(notice.transition_key, notice.name, decision.kind)
        alert = notice_alert(notice, severity_tag=severity, flapping=decision)
        channels = self.routing.channels_for(notice.name, severity)
        return self.deliver(
            alert, channels, notice.transition_key, notice.name, decision.kind, deadline
        )

    def notify_child(
        self, notice: ChildFellOver, *, deadline: Deadline | None = None
    ) -> FanoutOutcome:
        """Each fall is posted with its job, up to the flood control's burst per window; the
        next one posted after a hold-back says how many were held back."""
        burst = (
            self.bursts.decide(notice.burst_series, notice.event_id, notice.time)
            if self.bursts is not None
            else BurstDecision(True)
        )
        if not burst.post:
            return FanoutOutcome(
                notice.transition_key, notice.name, CHILD_SUPPRESSED, repeat=burst.repeat
            )
        alert = child_alert(
            notice, suppressed=burst.suppressed_before, suppressed_since=burst.suppressed_since
        )
        channels = self.routing.channels_for(notice.name, CHILD_NOTICE_SEVERITY)
        outcome = self.deliver(
            alert, channels, notice.transition_key, notice.name, "post", deadline
        )
        if burst.error:
            outcome.warning = f"flood control ledger failed ({burst.error}): posted uncounted"
        return outcome

    def forward_unreadable(
        self, message: Unreadable, *, deadline: Deadline | None = None
    ) -> FanoutOutcome:
        alert = unreadable_alert(message)
        channels = self.routing.fallback_channel
        outcome = self.deliver(
            alert, channels, message.transition_key, "unreadable", "forward", deadline
        )
        outcome.problem = message.problem
        outcome.excerpt = message.raw[:300]
        return outcome

    def deliver(
        self,
        alert: Alert,
        channels: Iterable[str],
        key: str,
        name: str,
        decision: str,
        deadline: Deadline | None = None,
    ) -> FanoutOutcome:
        claims = {channel: self.ledger.claim(key, channel) for channel in channels}
        busy_until = Deadline.after(self.busy_wait_s)
        if deadline is not None:
            # Waiting on another path may take half of this notice's time; ours keeps the rest.
            busy_until = min(busy_until, deadline.part(0.5))
        while any(c == Claim.BUSY for c in claims.values()) and not busy_until.expired:
            # Usually the other delivery path of this same transition: wait for its verdict.
            self._sleep(self.poll_s)
            for channel in [ch for ch, c in claims.items() if c == Claim.BUSY]:
                claims[channel] = self.ledger.claim(key, channel)
        mine = [ch for ch, c in claims.items() if c == Claim.CLAIMED]
        deliveries = self._send(alert, mine, deadline)
        for channel, delivery in deliveries.items():
            if delivery.ok:
                self.ledger.delivered(key, channel)
            else:
                self.ledger.failed(key, channel)
        return FanoutOutcome(
            key,
            name,
            decision,
            deliveries,
            skipped=tuple(ch for ch, c in claims.items() if c == Claim.DELIVERED),
            busy=tuple(ch for ch, c in claims.items() if c == Claim.BUSY),
        )

    def _send(
        self, alert: Alert, channels: list[str], deadline: Deadline | None
    ) -> dict[str, Delivery]:
        webhooks = {c.name for c in self.sender.channels}
        skip = webhooks - set(channels)
        with ThreadPoolExecutor(max_workers=2) as pool:
            chat = (
                pool.submit(self.sender.send, alert, skip=skip, deadline=deadline)
                if webhooks - skip
                else None
            )
            mail = (
                pool.submit(self.email.send, alert)
                if self.email is not None and EMAIL_CHANNEL in channels
                else None
            )
            deliveries = dict(chat.result()) if chat else {}
            if mail is not None:
                deliveries[EMAIL_CHANNEL] = mail.result()
        return deliveries


# -- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FanoutSettings:
    deliveries_table: str
    routes: str = ""
    default_channels: str = ""
    email_topic_arn: str = ""
    flap_max_changes: int = 4
    flap_window_s: int = 1800
    child_notice_name: str = CHILD_NOTICE_NAME
    child_notice_burst: int = DEFAULT_BURST
    child_notice_window_s: int = DEFAULT_WINDOW_S
    region: str = ""

    @classmethod
    def from_env(cls) -> FanoutSettings:
        return cls(
            deliveries_table=require_env("ALARM_DELIVERIES_TABLE"),
            routes=os.environ.get("ALARM_ROUTES", ""),
            default_channels=os.environ.get("ALARM_DEFAULT_CHANNELS", ""),
            email_topic_arn=os.environ.get("ALARM_EMAIL_TOPIC_ARN", "").strip(),
            flap_max_changes=env_int("ALARM_FLAP_MAX_CHANGES", 4),
            flap_window_s=60 * env_int("ALARM_FLAP_WINDOW_MINUTES", 30),
            child_notice_name=os.environ.get("CHILD_NOTICE_NAME", "").strip() or CHILD_NOTICE_NAME,
            child_notice_burst=env_int("CHILD_NOTICE_BURST", DEFAULT_BURST),
            child_notice_window_s=60
            * env_int("CHILD_NOTICE_WINDOW_MINUTES", DEFAULT_WINDOW_S // 60),
            region=os.environ.get("AWS_REGION", ""),
        )


class AlarmTags:
    """An alarm's tags (``severity`` routes it), cached per alarm for the container's life."""

    def __init__(self, client: Any, *, on_error: Callable[[str, Exception], None] | None = None):
        self.client = client
        self._cache: dict[str, dict[str, str]] = {}
        self._on_error = on_error

    def __call__(self, arn: str) -> dict[str, str]:
        if arn not in self._cache:
            try:
                tags = self.client.list_tags_for_resource(ResourceARN=arn).get("Tags", [])
                self._cache[arn] = {t["Key"].lower(): t["Value"] for t in tags}
            except Exception as exc:  # noqa: BLE001 - untagged routing beats no alert at all
                if self._on_error is not None:
                    self._on_error(arn, exc)
                return {}
        return self._cache[arn]
