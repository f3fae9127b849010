"""CloudWatch alarms to chat: one alarm model from either source, routed, rendered, delivered once.

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
(:mod:`pipeline.notice_bursts`); the next notice posted says how many were held back.
"""

from __future__ import annotations

import base64
import binascii
import enum
import gzip
import hashlib
import io
import json
import math
import os
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from pipeline.alerts import Alert, AlertSender, Severity
from pipeline.contract import ErrorKind
from pipeline.notice_bursts import DEFAULT_BURST, DEFAULT_WINDOW_S, BurstDecision, ChildNoticeBursts
from pipeline.settings import MissingSetting, env_int, require_env
from pipeline.webhooks import Deadline, Delivery, TimeBudget

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
_UNREADABLE = (MalformedAlarm, TypeError, ValueError, AttributeError, KeyError, IndexError)


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


def _text(data: Mapping[str, Any], key: str, *, required: bool = False) -> str:
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
    name = _text(message, "AlarmName", required=True)
    arn = _text(message, "AlarmArn")
    new_state = _state(_text(message, "NewStateValue", required=True), "NewStateValue")
    old_state = _state(_text(message, "OldStateValue") or "INSUFFICIENT_DATA", "OldStateValue")
    rule = _text(message, "AlarmRule")
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
    account = _text(message, "AWSAccountId") or _arn_part(arn, 4)
    return AlarmNotice(
        name=name,
        old_state=old_state,
        new_state=new_state,
        reason=_text(message, "NewStateReason"),
        time=_parse_time(message.get("StateChangeTime")),
        region=region,
        account=account,
        arn=arn,
        description=_text(message, "AlarmDescription"),
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
    rule = _text(configuration, "alarmRule")
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
        name=_text(detail, "alarmName", required=True),
        old_state=_state(_text(previous, "value") or "INSUFFICIENT_DATA", "previousState"),
        new_state=_state(_text(state, "value", required=True), "state"),
        reason=_text(state, "reason"),
        time=_parse_time(state.get("timestamp") or event.get("time")),
        region=_text(event, "region") or _arn_part(arn, 3),
        account=_text(event, "account") or _arn_part(arn, 4),
        arn=arn,
        description=_text(configuration, "description"),
        metric=metric,
        threshold=threshold,
        composite=bool(rule),
        source="eventbridge",
    )


# -- the analysis child fell over: the worker's log, through a subscription filter -------------

# The "job finished" outcomes of an attempt that took the analysis child down: the memory guard
# killed it (OOM; an OOM the analyzer raised itself, a GPU OOM, leaves the child alive but is
# the same trouble), it died on its own (UNKNOWN: a signal, a segfault, an exit) or it outlived
# max_runtime_s and was killed (TIMEOUT). The worker log group's subscription filter in
# template.yaml matches exactly these kinds; a test holds the two together.
CHILD_FELL_OVER_KINDS = (ErrorKind.OOM, ErrorKind.UNKNOWN, ErrorKind.TIMEOUT)
JOB_FINISHED = "job finished"  # the worker's log message (gpu_worker/consumer.py)
# Routed like the alarm on the same trouble (STACK-worker-child-restarted, tagged warning).
CHILD_NOTICE_NAME = "worker-child-restarted"
CHILD_NOTICE_SEVERITY = Severity.WARNING
# CloudWatch Logs sends at most 1 MB per delivery; anything far larger is not from it.
MAX_LOG_PAYLOAD_BYTES = 8 * 1024 * 1024
_KIND_MEANING: dict[str, str] = {
    ErrorKind.OOM: "out of memory (the memory guard's limit or the GPU's)",
    ErrorKind.UNKNOWN: "the child died (a signal, a segfault or an exit)",
    ErrorKind.TIMEOUT: "the job ran past its max_runtime_s and the child was killed",
}
_NEXT_STEP = {"DEAD_LETTER": "dead-lettered", "REQUEUE": "requeued"}
CHILD_SUPPRESSED = "burst-suppressed"  # the fan-out's decision for a notice held back
ERROR_MESSAGE_CHARS = 300
_LOG_UNREADABLE = (*_UNREADABLE, OverflowError, OSError, EOFError, zlib.error, RecursionError)


@dataclass(frozen=True)
class ChildFellOver:
    """One attempt whose analysis child fell over, from the worker's "job finished" log line."""

    name: str
    job_id: str
    error_kind: str
    analyzer: str
    attempt: int | None
    action: str
    reason: str
    duration_s: float | None
    instance: str  # the log stream: the worker's instance id
    log_group: str
    event_id: str
    time: datetime
    region: str
    account: str
    backoff_s: float | None = None
    peak_memory_bytes: int | None = None
    # Lines from workers before these keys existed lack them: each is optional.
    max_attempts: int | None = None
    memory_limit_bytes: int | None = None
    error_message: str = ""  # the error's first line, bounded by the worker (and again here)

    @property
    def transition_key(self) -> str:
        """One per log event: a Lambda retry of the same delivery finds it in the ledger."""
        return f"child|{self.log_group}|{self.event_id}"

    @property
    def burst_series(self) -> str:
        """Notices "like this one", counted together by the flood control: the stack (its
        worker log group), the analyzer and the failure kind."""
        return f"{self.log_group}|{self.analyzer[:100]}|{self.error_kind}"

    @property
    def next_step(self) -> str:
        if self.action == "RETRY":
            return f"retrying in {self.backoff_s:g} s" if self.backoff_s is not None else "retrying"
        return _NEXT_STEP.get(self.action, self.action.lower() or "unknown")

    @property
    def attempt_text(self) -> str:
        if self.attempt is None:
            return "-"
        return f"{self.attempt} of {self.max_attempts}" if self.max_attempts else str(self.attempt)

    @property
    def memory_text(self) -> str:
        """ "3,072 MiB (96% of the 3,200 MiB limit)", or "" when the line has no peak."""
        if self.peak_memory_bytes is None:
            return ""
        text = f"{self.peak_memory_bytes / 2**20:,.0f} MiB"
        if self.memory_limit_bytes:
            share = 100 * self.peak_memory_bytes / self.memory_limit_bytes
            text += f" ({share:.0f}% of the {self.memory_limit_bytes / 2**20:,.0f} MiB limit)"
        return text

    @property
    def console_link(self) -> str:
        """The log stream in the CloudWatch console, opened a minute before the line."""
        region = self.region or "us-east-1"
        start_ms = int(self.time.timestamp() * 1000) - 60_000
        return (
            f"https://{region}.console.aws.amazon.com/cloudwatch/home?region={region}"
            f"#logsV2:log-groups/log-group/{_console_part(self.log_group)}"
            f"/log-events/{_console_part(self.instance)}$3Fstart$3D{start_ms}"
        )


def _console_part(value: str) -> str:
    """The console's logsV2 fragment encoding: URL-encoded twice, then '%' written as '$'."""
    return quote(quote(value, safe=""), safe="").replace("%", "$")


def _optional_number(line: Mapping[str, Any], key: str) -> float | None:
    value = line.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        return float(value) if math.isfinite(value) and value >= 0 else None
    except OverflowError:  # an int beyond a float
        return None


def _optional_count(line: Mapping[str, Any], key: str) -> int | None:
    value = line.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    return value if 0 <= value < 2**63 else None  # beyond that, no float or format holds it


def error_excerpt(value: Any) -> str:
    """The error text a notice shows: the first line, at most ERROR_MESSAGE_CHARS. The worker
    bounds it already (it may quote the job's input); a line from elsewhere is bounded here."""
    if not isinstance(value, str):
        return ""
    line = value.strip().partition("\n")[0].strip()
    return line if len(line) <= ERROR_MESSAGE_CHARS else line[: ERROR_MESSAGE_CHARS - 1] + "…"


def _decode_awslogs(awslogs: Any) -> Mapping[str, Any]:
    """``{"data": base64(gzip(json))}``, as CloudWatch Logs hands it to a subscribed function."""
    data = awslogs.get("data") if isinstance(awslogs, Mapping) else None
    if not isinstance(data, str) or not data:
        raise MalformedAlarm("awslogs.data missing")
    try:
        compressed = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedAlarm("awslogs.data is not base64") from exc
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(compressed)) as stream:
            raw = stream.read(MAX_LOG_PAYLOAD_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise MalformedAlarm("awslogs.data is not gzip (or cut short)") from exc
    if len(raw) > MAX_LOG_PAYLOAD_BYTES:
        raise MalformedAlarm("awslogs.data unpacks to more than a delivery can hold")
    try:
        payload = json.loads(raw)
    except ValueError as exc:
        raise MalformedAlarm("awslogs.data is not JSON") from exc
    if not isinstance(payload, Mapping):
        raise MalformedAlarm("awslogs.data is not a JSON object")
    return payload


def parse_child_line(
    log_event: Mapping[str, Any],
    *,
    name: str,
    log_group: str,
    log_stream: str,
    region: str,
    account: str,
) -> ChildFellOver:
    """One subscription log event holding the worker's "job finished" line (Powertools JSON)."""
    message = log_event.get("message")
    if not isinstance(message, str):
        raise MalformedAlarm("log event without a message")
    line = json.loads(message)
    if not isinstance(line, Mapping):
        raise MalformedAlarm("log line is not a JSON object")
    if line.get("message") != JOB_FINISHED or line.get("error_kind") not in CHILD_FELL_OVER_KINDS:
        # Only the subscription filter's mismatch with this module can get us here.
        raise MalformedAlarm("not a job-finished line of an analysis child that fell over")
    event_id = _text(log_event, "id", required=True)
    timestamp = log_event.get("timestamp")
    if not isinstance(timestamp, int) or isinstance(timestamp, bool):
        raise MalformedAlarm("log event without a timestamp")
    attempt = line.get("attempt")
    return ChildFellOver(
        name=name,
        job_id=_text(line, "job_id", required=True),
        error_kind=str(line["error_kind"]),
        analyzer=_text(line, "analyzer"),
        attempt=attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else None,
        action=_text(line, "action"),
        reason=_text(line, "reason"),
        duration_s=_optional_number(line, "duration_s"),
        instance=log_stream,
        log_group=log_group,
        event_id=event_id,
        time=datetime.fromtimestamp(timestamp / 1000, tz=UTC),
        region=region,
        account=account,
        backoff_s=_optional_number(line, "backoff_s"),
        peak_memory_bytes=_optional_count(line, "peak_memory_bytes"),
        max_attempts=_optional_count(line, "max_attempts") or None,
        memory_limit_bytes=_optional_count(line, "memory_limit_bytes") or None,
        error_message=error_excerpt(line.get("error_message")),
    )


def notices_from_worker_log(
    event: Mapping[str, Any], *, name: str, region: str
) -> list[ChildFellOver | Unreadable]:
    """A CloudWatch Logs subscription delivery: one notice per log event; a CONTROL_MESSAGE
    (CloudWatch Logs checking it can reach us) is none."""
    awslogs = event.get("awslogs")
    data = awslogs.get("data") if isinstance(awslogs, Mapping) else None
    excerpt = data if isinstance(data, str) else _dump(awslogs)
    try:
        payload = _decode_awslogs(awslogs)
        kind = payload.get("messageType")
        if kind == "CONTROL_MESSAGE":
            return []
        if kind != "DATA_MESSAGE":
            raise MalformedAlarm("messageType is neither DATA_MESSAGE nor CONTROL_MESSAGE")
        log_events = payload.get("logEvents")
        if not isinstance(log_events, list):
            raise MalformedAlarm("logEvents missing")
        where = {
            "log_group": _text(payload, "logGroup", required=True),
            "log_stream": _text(payload, "logStream", required=True),
            "account": _text(payload, "owner"),
        }
    except _LOG_UNREADABLE as exc:
        return [Unreadable(excerpt, "", f"CloudWatch Logs delivery: {exc}")]
    notices: list[ChildFellOver | Unreadable] = []
    for log_event in log_events:
        if not isinstance(log_event, Mapping):
            notices.append(Unreadable(_dump(log_event), "", "log event is not an object"))
            continue
        try:
            notices.append(parse_child_line(log_event, name=name, region=region, **where))
        except _LOG_UNREADABLE as exc:
            message = log_event.get("message")
            raw = message if isinstance(message, str) else _dump(log_event)
            notices.append(Unreadable(raw, str(log_event.get("id") or ""), str(exc)))
    return notices


def _dump(value: Any) -> str:
    try:
        return json.dumps(value, default=str, sort_keys=True)
    except (TypeError, ValueError):
        return repr(value)


Notice = AlarmNotice | ChildFellOver | Unreadable


def notices_from_event(
    event: Any, *, child_notice_name: str = CHILD_NOTICE_NAME, region: str = ""
) -> list[Notice]:
    """Every notice in a Lambda event; what cannot be read becomes :class:`Unreadable`.

    ``child_notice_name`` names (and so routes) the notices from the worker's log; ``region`` is
    the function's own (a CloudWatch Logs delivery does not say it).
    """
    if isinstance(event, Mapping) and "awslogs" in event:
        return list(notices_from_worker_log(event, name=child_notice_name, region=region))
    if isinstance(event, Mapping) and isinstance(event.get("Records"), list):
        return [_from_sns_record(record) for record in event["Records"]]
    if isinstance(event, Mapping) and event.get("detail-type") == ALARM_STATE_CHANGE:
        try:
            return [parse_eventbridge_alarm(event)]
        except _UNREADABLE as exc:
            return [Unreadable(_dump(event), str(event.get("id") or ""), str(exc))]
    problem = (
        "neither an SNS notification, a CloudWatch Alarm State Change event"
        " nor a CloudWatch Logs delivery"
    )
    ref = str(event.get("id") or "") if isinstance(event, Mapping) else ""
    return [Unreadable(_dump(event), ref, problem)]


def _from_sns_record(record: Any) -> AlarmNotice | Unreadable:
    sns = record.get("Sns") if isinstance(record, Mapping) else None
    if not isinstance(sns, Mapping):
        return Unreadable(_dump(record), "", "record without an Sns notification")
    message = sns.get("Message")
    ref = str(sns.get("MessageId") or "")
    raw = message if isinstance(message, str) else _dump(message)
    try:
        data = json.loads(raw)
    except ValueError:
        return Unreadable(raw, ref, "message is not JSON")
    if not isinstance(data, Mapping):
        return Unreadable(raw, ref, "message is not a JSON object")
    try:
        return parse_sns_alarm(data, topic_arn=str(sns.get("TopicArn") or ""))
    except _UNREADABLE as exc:
        return Unreadable(raw, ref, str(exc))


# -- routing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    channels: tuple[str, ...]
    prefix: str | None = None
    severity: str | None = None

    def matches(self, alarm_name: str, severity: str | None) -> bool:
        if self.prefix is not None and not alarm_name.startswith(self.prefix):
            return False
        return self.severity is None or self.severity == (severity or "").lower()


@dataclass(frozen=True)
class Routing:
    """Which channels get an alarm: every matching route's channels, else the default ones."""

    routes: tuple[Route, ...]
    default_channels: tuple[str, ...]

    def channels_for(self, alarm_name: str, severity: str | None) -> tuple[str, ...]:
        chosen: list[str] = []
        for route in self.routes:
            if route.matches(alarm_name, severity):
                chosen.extend(c for c in route.channels if c not in chosen)
        return tuple(chosen) or self.default_channels

    @property
    def fallback_channel(self) -> tuple[str, ...]:
        """Where unreadable messages go: the first default channel."""
        return self.default_channels[:1]

    @classmethod
    def parse(cls, routes: str, defaults: str, known: Iterable[str]) -> Routing:
        """``routes``: ``severity:critical=slack,email; prefix:spotline-prod-=discord``.

        A route names ``prefix:VALUE`` or ``severity:VALUE`` (or both, joined with ``&``) and the
        channels it sends to. Unknown channels fail here, at cold start, not on the first alarm.
        """
        known = tuple(known)
        parsed: list[Route] = []
        for text in (r.strip() for r in routes.split(";")):
            if not text:
                continue
            condition, sep, channel_text = text.rpartition("=")
            channels = tuple(c.strip().lower() for c in channel_text.split(",") if c.strip())
            if not sep or not condition or not channels:
                raise MissingSetting(f"ALARM_ROUTES: route {text!r} must be MATCH=channel,...")
            criteria: dict[str, str] = {}
            for part in condition.split("&"):
                kind, colon, value = part.strip().partition(":")
                if kind not in ("prefix", "severity") or not colon or not value:
                    raise MissingSetting(
                        f"ALARM_ROUTES: {part.strip()!r} must be prefix:VALUE or severity:VALUE"
                    )
                criteria[kind] = value if kind == "prefix" else value.lower()
            parsed.append(Route(channels, criteria.get("prefix"), criteria.get("severity")))
        default_channels = tuple(c.strip().lower() for c in defaults.split(",") if c.strip())
        default_channels = default_channels or known
        for channel in [c for r in parsed for c in r.channels] + list(default_channels):
            if channel not in known:
                raise MissingSetting(
                    f"alarm routing names channel {channel!r}, configured: {', '.join(known)}"
                )
        return cls(tuple(parsed), default_channels)


# -- rendering -------------------------------------------------------------------------------


def alert_severity(notice: AlarmNotice, severity_tag: str | None) -> Severity:
    """Colour by state: resolved is green; ALARM is red unless the alarm is tagged lower."""
    if notice.resolved:
        return Severity.RESOLVED
    if notice.new_state == AlarmState.INSUFFICIENT_DATA:
        return Severity.INFO
    tag = (severity_tag or "").lower()
    if tag in (Severity.WARNING, Severity.INFO):
        return Severity(tag)
    return Severity.CRITICAL


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def notice_alert(
    notice: AlarmNotice, *, severity_tag: str | None = None, flapping: FlapDecision | None = None
) -> Alert:
    """The alert for one transition (or the flapping summary that stands for several)."""
    arrow = f"{notice.old_state} → {notice.new_state}"
    if flapping is not None and flapping.kind == FlapDecision.SUMMARY:
        title = f"Flapping: {notice.name}"
        text = (
            f"{flapping.changes} state changes in the last {flapping.window_s // 60} min; now "
            f"{notice.new_state}. Further changes are held back until it has been quiet for "
            f"{flapping.window_s // 60} min; a change into ALARM is always posted."
        )
    else:
        title = (
            f"Resolved: {notice.name}" if notice.resolved else f"{notice.new_state}: {notice.name}"
        )
        text = notice.reason
        first = _first_line(notice.description)
        if first and not notice.resolved:
            text = f"{first}\n{notice.reason}".strip()
    fields = [("State", arrow)]
    if notice.metric:
        fields.append(("Metric", notice.metric))
    if notice.threshold:
        fields.append(("Threshold", notice.threshold))
    fields += [
        ("Region", notice.region or "-"),
        ("Account", notice.account or "-"),
        ("Time", notice.time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")),
    ]
    if severity_tag:
        fields.append(("Severity", severity_tag))
    return Alert(
        title=title,
        text=text or "(no reason given)",
        severity=alert_severity(notice, severity_tag),
        fields=tuple(fields),
        link=notice.console_link,
        dedupe_key=notice.transition_key,
        extra={
            "alarm": {
                "name": notice.name,
                "old_state": notice.old_state,
                "new_state": notice.new_state,
                "resolved": notice.resolved,
                "reason": notice.reason,
                "metric": notice.metric,
                "threshold": notice.threshold,
                "region": notice.region,
                "account": notice.account,
                "time": notice.time.astimezone(UTC).isoformat(timespec="milliseconds"),
                "arn": notice.arn,
                "composite": notice.composite,
                "flapping": flapping is not None and flapping.kind == FlapDecision.SUMMARY,
            }
        },
    )


def _code_span(text: str) -> str:
    """``text`` as one inline code span in Slack's and Discord's markdown."""
    return "`" + text.replace("`", "'") + "`"


def child_alert(
    notice: ChildFellOver, *, suppressed: int = 0, suppressed_since: datetime | None = None
) -> Alert:
    """The notice "Analysis child fell over: OOM on job ID: analyzer, attempt N of M, next:
    retrying in S s", what it means, its peak memory and error text, with the instance, the time
    and a link to the line in the worker's log stream. ``suppressed`` notices like it were held
    back by the flood control since ``suppressed_since``: the notice says so."""
    kind, job = notice.error_kind, notice.job_id
    where = [notice.analyzer or "analyzer unknown"]
    if notice.attempt is not None:
        where.append(f"attempt {notice.attempt_text}")
    where.append(f"next: {notice.next_step}")
    lines = [", ".join(where)]
    meaning = _KIND_MEANING.get(kind, "")
    ran = f"after {notice.duration_s:g} s" if notice.duration_s is not None else ""
    memory = f"peak memory {notice.memory_text}" if notice.memory_text else ""
    detail = "; ".join(part for part in (meaning, ran, memory, notice.reason) if part)
    if detail:
        lines.append(detail)
    if notice.error_message:
        lines.append(_code_span(notice.error_message))
    if suppressed:
        since = (
            f" since {suppressed_since.astimezone(UTC).strftime('%H:%M')} UTC"
            if suppressed_since is not None
            else ""
        )
        lines.append(f"… and {suppressed} more like this were suppressed{since}")
    fields = [
        ("Job", job),
        ("Failure", kind),
        ("Analyzer", notice.analyzer or "-"),
        ("Attempt", notice.attempt_text),
        ("Next", notice.next_step),
        ("Instance", notice.instance or "-"),
        ("Time", notice.time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")),
        ("Region", notice.region or "-"),
        ("Account", notice.account or "-"),
    ]
    if notice.memory_text:
        fields.append(("Peak memory", notice.memory_text))  # Slack shows 10 fields at most
    return Alert(
        title=f"Analysis child fell over: {kind} on job {job}",
        text="\n".join(lines),
        severity=CHILD_NOTICE_SEVERITY,
        fields=tuple(fields),
        link=notice.console_link,
        dedupe_key=notice.transition_key,
        extra={
            "child_fell_over": {
                "name": notice.name,
                "job_id": job,
                "error_kind": kind,
                "analyzer": notice.analyzer,
                "attempt": notice.attempt,
                "max_attempts": notice.max_attempts,
                "action": notice.action,
                "next": notice.next_step,
                "reason": notice.reason,
                "duration_s": notice.duration_s,
                "backoff_s": notice.backoff_s,
                "peak_memory_bytes": notice.peak_memory_bytes,
                "memory_limit_bytes": notice.memory_limit_bytes,
                "error_message": notice.error_message,
                "instance": notice.instance,
                "log_group": notice.log_group,
                "log_event_id": notice.event_id,
                "time": notice.time.astimezone(UTC).isoformat(timespec="milliseconds"),
                "region": notice.region,
                "account": notice.account,
                "suppressed_before": suppressed,
                "suppressed_since": (
                    suppressed_since.astimezone(UTC).isoformat(timespec="seconds")
                    if suppressed_since is not None
                    else None
                ),
            }
        },
    )


def unreadable_alert(message: Unreadable) -> Alert:
    excerpt = message.raw[:RAW_EXCERPT_CHARS]
    if len(message.raw) > RAW_EXCERPT_CHARS:
        excerpt += " …"
    return Alert(
        title="Unreadable alarm notification",
        text="```" + excerpt.replace("```", "'''") + "```",
        severity=Severity.WARNING,
        fields=(("Problem", message.problem), ("Message id", message.ref or "-")),
        dedupe_key=message.transition_key,
        extra={"raw": excerpt},
    )


def render_email(alert: Alert) -> tuple[str, str]:
    """Subject (SNS: ASCII, one line, at most 100 characters) and plain-text body."""
    subject = alert.title.replace("→", "->").encode("ascii", "replace").decode("ascii")
    subject = " ".join(subject.split())[:100]
    lines = [alert.title, "", alert.text, ""]
    lines += [f"{name}: {value}" for name, value in alert.fields]
    if alert.link:
        lines += ["", alert.link]
    return subject, "\n".join(lines)


# -- delivery memory -------------------------------------------------------------------------


class Claim(enum.StrEnum):
    CLAIMED = "CLAIMED"  # this invocation sends it
    DELIVERED = "DELIVERED"  # a previous invocation did
    BUSY = "BUSY"  # another invocation is sending it right now


class DeliveryLedger:
    """Per transition and channel: SENDING (with a lease), DELIVERED or FAILED, in DynamoDB.

    A claim is a conditional write, so two invocations of the same transition (the SNS and the
    EventBridge copy, or a retry racing a slow first attempt) never both send to a channel.
    """

    def __init__(
        self,
        client: Any,
        table: str,
        *,
        lease_s: int = 90,
        retain_s: int = 14 * 86400,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.table = table
        self.lease_s = lease_s
        self.retain_s = retain_s
        self._clock = clock

    @staticmethod
    def key(transition_key: str, channel: str) -> str:
        return f"delivery#{channel}#{transition_key}"

    def claim(self, transition_key: str, channel: str) -> Claim:
        now = int(self._clock())
        try:
            self.client.put_item(
                TableName=self.table,
                Item={
                    "pk": {"S": self.key(transition_key, channel)},
                    "status": {"S": "SENDING"},
                    "lease_until": {"N": str(now + self.lease_s)},
                    "expires_at": {"N": str(now + self.retain_s)},
                },
                ConditionExpression=(
                    "attribute_not_exists(pk) OR #s = :failed"
                    " OR (#s = :sending AND lease_until < :now)"
                ),
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={
                    ":failed": {"S": "FAILED"},
                    ":sending": {"S": "SENDING"},
                    ":now": {"N": str(now)},
                },
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            return (
                Claim.DELIVERED
                if self.status(transition_key, channel) == "DELIVERED"
                else Claim.BUSY
            )
        return Claim.CLAIMED

    def status(self, transition_key: str, channel: str) -> str | None:
        item = self.client.get_item(
            TableName=self.table,
            Key={"pk": {"S": self.key(transition_key, channel)}},
            ConsistentRead=True,
        ).get("Item")
        return item["status"]["S"] if item else None

    def _finish(self, transition_key: str, channel: str, status: str) -> None:
        self.client.update_item(
            TableName=self.table,
            Key={"pk": {"S": self.key(transition_key, channel)}},
            UpdateExpression="SET #s = :status, lease_until = :zero",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={":status": {"S": status}, ":zero": {"N": "0"}},
        )

    def delivered(self, transition_key: str, channel: str) -> None:
        self._finish(transition_key, channel, "DELIVERED")

    def failed(self, transition_key: str, channel: str) -> None:
        self._finish(transition_key, channel, "FAILED")


# -- flapping --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlapDecision:
    POST = "post"
    SUMMARY = "summary"
    SUPPRESS = "suppress"

    kind: str
    changes: int
    window_s: int


class FlapConflict(RuntimeError):
    """Too many concurrent updates of one alarm's history; the invocation is retried."""


class FlapTracker:
    """Counts each alarm's transitions in a sliding window (by transition time, so a retry of
    the same transition gets the same decision, stored with it)."""

    def __init__(
        self, client: Any, table: str, *, max_changes: int, window_s: int, retain_s: int = 6 * 3600
    ) -> None:
        self.client = client
        self.table = table
        self.max_changes = max_changes
        self.window_s = window_s
        self.retain_s = max(retain_s, window_s)

    def decide(self, notice: AlarmNotice) -> FlapDecision:
        key = {"pk": {"S": f"flap#{notice.name}"}}
        for _ in range(8):
            item = self.client.get_item(TableName=self.table, Key=key, ConsistentRead=True).get(
                "Item"
            )
            history: dict[str, Any] = json.loads(item["history"]["S"]) if item else {}
            version = int(item["version"]["N"]) if item else 0
            changes: dict[str, dict[str, Any]] = history.get("changes", {})
            this = notice.transition_key
            if this in changes:
                seen = changes[this]
                return FlapDecision(seen["decision"], int(seen["count"]), self.window_s)
            at = notice.time.timestamp()
            in_window = [c for c in changes.values() if at - self.window_s < c["at"] <= at]
            count = len(in_window) + 1
            posted_state = history.get("posted_state")
            summary_at = history.get("summary_at")
            if count <= self.max_changes:
                kind = FlapDecision.POST
            elif summary_at is None or at - summary_at >= self.window_s:
                kind = FlapDecision.SUMMARY
            elif notice.new_state == AlarmState.ALARM and posted_state != AlarmState.ALARM:
                kind = FlapDecision.SUMMARY  # never hide an alarm chat has not seen
            else:
                kind = FlapDecision.SUPPRESS
            changes = {k: c for k, c in changes.items() if c["at"] > at - self.retain_s}
            changes[this] = {"at": at, "decision": kind, "count": count}
            history = {
                "changes": changes,
                "posted_state": posted_state if kind == FlapDecision.SUPPRESS else notice.new_state,
                "summary_at": at if kind == FlapDecision.SUMMARY else summary_at,
                "suppressed": history.get("suppressed", 0) + (kind == FlapDecision.SUPPRESS),
            }
            try:
                self.client.put_item(
                    TableName=self.table,
                    Item={
                        **key,
                        "history": {"S": json.dumps(history, sort_keys=True)},
                        "version": {"N": str(version + 1)},
                        "expires_at": {"N": str(int(at + self.retain_s + 86400))},
                    },
                    ConditionExpression="attribute_not_exists(pk) OR version = :version",
                    ExpressionAttributeValues={":version": {"N": str(version)}},
                )
            except self.client.exceptions.ConditionalCheckFailedException:
                continue  # another invocation recorded a transition of this alarm: re-read
            return FlapDecision(kind, count, self.window_s)
        raise FlapConflict(f"alarm {notice.name}: history kept changing under us")


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
class Outcome:
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

    @property
    def channel_names(self) -> tuple[str, ...]:
        names = [c.name for c in self.sender.channels]
        return (*names, EMAIL_CHANNEL) if self.email else tuple(names)

    def handle(self, event: Any, *, budget: TimeBudget | None = None) -> list[Outcome]:
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

    def notify(self, notice: AlarmNotice, *, deadline: Deadline | None = None) -> Outcome:
        severity = self.tags(notice.arn).get("severity") if notice.arn else None
        decision = (
            self.flaps.decide(notice)
            if self.flaps is not None
            else FlapDecision(FlapDecision.POST, 1, 0)
        )
        if decision.kind == FlapDecision.SUPPRESS:
            return Outcome(notice.transition_key, notice.name, decision.kind)
        alert = notice_alert(notice, severity_tag=severity, flapping=decision)
        channels = self.routing.channels_for(notice.name, severity)
        return self.deliver(
            alert, channels, notice.transition_key, notice.name, decision.kind, deadline
        )

    def notify_child(self, notice: ChildFellOver, *, deadline: Deadline | None = None) -> Outcome:
        """Each fall is posted with its job, up to the flood control's burst per window; the
        next one posted after a hold-back says how many were held back."""
        burst = (
            self.bursts.decide(notice.burst_series, notice.event_id, notice.time)
            if self.bursts is not None
            else BurstDecision(True)
        )
        if not burst.post:
            return Outcome(
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
    ) -> Outcome:
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
    ) -> Outcome:
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
        return Outcome(
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
