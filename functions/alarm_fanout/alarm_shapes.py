"""The two shapes a CloudWatch alarm state change arrives in (a notification inside an SNS
record, an EventBridge ``CloudWatch Alarm State Change`` event), each parsed into one
:class:`AlarmNotice`; what cannot be read becomes :class:`Unreadable`, never an exception."""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

ALARM_STATE_CHANGE = "CloudWatch Alarm State Change"
EMAIL_CHANNEL = "email"
RAW_EXCERPT_CHARS = 2500


class AlarmState(enum.StrEnum):
    OK = "OK"
    ALARM = "ALARM"
    INSUFFICIENT_DATA = "INSUFFICIENT_DATA"


class MalformedAlarm(ValueError):
    """The message is not a CloudWatch alarm notification we can read."""


# A field of an unexpected type anywhere in a notification is unreadable, never a crash.
UNREADABLE_ERRORS = (MalformedAlarm, TypeError, ValueError, AttributeError, KeyError, IndexError)


# -- the alarm model -------------------------------------------------------------------------

_OPERATORS = {
    "GreaterThanThreshold": ">",
    "GreaterThanOrEqualToThreshold": ">=",
    "LessThanThreshold": "<",
    "LessThanOrEqualToThreshold": "<=",
    "LessThanLowerOrGreaterThanUpperThreshold": "outside band",
    "LessThanLowerThreshold": "below band",
    "GreaterThanUpperThreshold": "above band",
}


@dataclass(frozen=True)
class AlarmNotice:
    """One alarm state transition, whichever way it arrived."""

    name: str
    old_state: str
    new_state: str
    reason: str
    time: datetime
    region: str
    account: str
    arn: str
    description: str = ""
    metric: str = ""
    threshold: str = ""
    composite: bool = False
    source: str = "sns"

    @property
    def transition_key(self) -> str:
        """The same for both delivery paths and every retry of one transition."""
        stamp = self.time.astimezone(UTC).isoformat(timespec="milliseconds")
        return f"{self.name}|{self.new_state}|{stamp}"

    @property
    def console_link(self) -> str:
        region = self.region or "us-east-1"
        return (
            f"https://{region}.console.aws.amazon.com/cloudwatch/home?region={region}"
            f"#alarmsV2:alarm/{quote(self.name, safe='')}"
        )

    @property
    def resolved(self) -> bool:
        return self.new_state == AlarmState.OK


@dataclass(frozen=True)
class Unreadable:
    """A message that is not an alarm notification: forwarded raw to the default channel."""

    raw: str
    ref: str
    problem: str

    @property
    def transition_key(self) -> str:
        digest = hashlib.sha256(self.raw.encode("utf-8", "replace")).hexdigest()[:16]
        return f"unreadable|{self.ref or digest}"


def _parse_time(value: Any) -> datetime:
    if not isinstance(value, str) or not value:
        raise MalformedAlarm("missing state change time")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise MalformedAlarm(f"unreadable time {value[:40]!r}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def text_field(data: Mapping[str, Any], key: str, *, required: bool = False) -> str:
    value = data.get(key)
    if value is None or value == "":
        if required:
            raise MalformedAlarm(f"missing {key}")
        return ""
    if not isinstance(value, str):
        raise MalformedAlarm(f"{key} is not text")
    return value


def _state(value: str, key: str) -> str:
    if value not in AlarmState.__members__.values():
        raise MalformedAlarm(f"{key} {value[:40]!r} is not an alarm state")
    return value


def _arn_part(arn: str, index: int) -> str:
    parts = arn.split(":")
    return parts[index] if len(parts) > 5 and parts[0] == "arn" else ""


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, int | float) else str(value)


def _metric_text(namespace: str, name: str, dimensions: Mapping[str, Any], detail: str) -> str:
    dims = ", ".join(f"{k}={v}" for k, v in sorted(dimensions.items()))
    text = f"{namespace} {name}".strip()
    if dims:
        text += f" ({dims})"
    return f"{text}, {detail}" if detail else text


def parse_sns_alarm(message: Mapping[str, Any], *, topic_arn: str = "") -> AlarmNotice:
    """A CloudWatch alarm notification (the JSON inside an SNS record's ``Message``)."""
    name = text_field(message, "AlarmName", required=True)
    arn = text_field(message, "AlarmArn")
    new_state = _state(text_field(message, "NewStateValue", required=True), "NewStateValue")
    old_state = _state(text_field(message, "OldStateValue") or "INSUFFICIENT_DATA", "OldStateValue")
    rule = text_field(message, "AlarmRule")
    trigger = message.get("Trigger")
    metric = threshold = ""
    if rule:
        metric = f"composite: {rule}"
    elif isinstance(trigger, Mapping):
        dims = trigger.get("Dimensions") or []
        dimensions = {str(d.get("name")): d.get("value") for d in dims if isinstance(d, Mapping)}
        if trigger.get("MetricName"):
            stat = str(trigger.get("Statistic") or trigger.get("ExtendedStatistic") or "").title()
            period = trigger.get("Period")
            detail = f"{stat} per {period} s" if stat and period else stat
            metric = _metric_text(
                str(trigger.get("Namespace") or ""), str(trigger["MetricName"]), dimensions, detail
            )
        elif isinstance(trigger.get("Metrics"), list):
            expressions = [
                m.get("Expression")
                for m in trigger["Metrics"]
                if isinstance(m, Mapping) and m.get("Expression")
            ]
            metric = f"expression: {expressions[0]}" if expressions else "metric math"
        operator = _OPERATORS.get(str(trigger.get("ComparisonOperator")), "")
        if trigger.get("Threshold") is not None:
            threshold = f"{operator} {_number(trigger['Threshold'])}".strip()
        elif trigger.get("ThresholdMetricId"):
            threshold = f"{operator} {trigger['ThresholdMetricId']}".strip()
    region = _arn_part(arn, 3) or _arn_part(topic_arn, 3)
    account = text_field(message, "AWSAccountId") or _arn_part(arn, 4)
    return AlarmNotice(
        name=name,
        old_state=old_state,
        new_state=new_state,
        reason=text_field(message, "NewStateReason"),
        time=_parse_time(message.get("StateChangeTime")),
        region=region,
        account=account,
        arn=arn,
        description=text_field(message, "AlarmDescription"),
        metric=metric,
        threshold=threshold,
        composite=bool(rule),
        source="sns",
    )


def parse_eventbridge_alarm(event: Mapping[str, Any]) -> AlarmNotice:
    """An EventBridge ``CloudWatch Alarm State Change`` event."""
    detail = event.get("detail")
    if not isinstance(detail, Mapping):
        raise MalformedAlarm("missing detail")
    state = detail.get("state")
    if not isinstance(state, Mapping):
        raise MalformedAlarm("missing detail.state")
    previous = detail.get("previousState")
    previous = previous if isinstance(previous, Mapping) else {}
    configuration = detail.get("configuration")
    configuration = configuration if isinstance(configuration, Mapping) else {}
    resources = event.get("resources")
    arn = resources[0] if isinstance(resources, list) and resources else ""
    arn = arn if isinstance(arn, str) else ""
    rule = text_field(configuration, "alarmRule")
    metric = threshold = ""
    if rule:
        metric = f"composite: {rule}"
    else:
        listed = configuration.get("metrics")
        metrics = [m for m in listed if isinstance(m, Mapping)] if isinstance(listed, list) else []
        shown = next((m for m in metrics if m.get("returnData", True)), None)
        if shown is not None and shown.get("expression"):
            metric = f"expression: {shown['expression']}"
        elif shown is not None and isinstance(shown.get("metricStat"), Mapping):
            stat = shown["metricStat"]
            inner = stat.get("metric") if isinstance(stat.get("metric"), Mapping) else {}
            detail_text = f"{stat.get('stat', '')} per {stat.get('period', '?')} s"
            dimensions = (
                inner.get("dimensions") if isinstance(inner.get("dimensions"), Mapping) else {}
            )
            metric = _metric_text(
                str(inner.get("namespace", "")), str(inner.get("name", "")), dimensions, detail_text
            )
        try:
            reason_data = json.loads(state.get("reasonData") or "{}")
        except (TypeError, ValueError):
            reason_data = {}
        if isinstance(reason_data, Mapping) and reason_data.get("threshold") is not None:
            threshold = f"threshold {_number(reason_data['threshold'])}"
    return AlarmNotice(
        name=text_field(detail, "alarmName", required=True),
        old_state=_state(text_field(previous, "value") or "INSUFFICIENT_DATA", "previousState"),
        new_state=_state(text_field(state, "value", required=True), "state"),
        reason=text_field(state, "reason"),
        time=_parse_time(state.get("timestamp") or event.get("time")),
        region=text_field(event, "region") or _arn_part(arn, 3),
        account=text_field(event, "account") or _arn_part(arn, 4),
        arn=arn,
        description=text_field(configuration, "description"),
        metric=metric,
        threshold=threshold,
        composite=bool(rule),
        source="eventbridge",
    )


def dump_raw(value: Any) -> str:
    try:
        return json.dumps(value, default=str, sort_keys=True)
    except (TypeError, ValueError):
        return repr(value)
