"""The analysis child fell over: the worker's "job finished" log lines, delivered by a
CloudWatch Logs subscription, each parsed into a :class:`ChildFellOver` notice naming the job."""

from __future__ import annotations

import base64
import binascii
import gzip
import io
import json
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from alarm_fanout.alarm_shapes import (
    UNREADABLE_ERRORS,
    MalformedAlarm,
    Unreadable,
    dump_raw,
    text_field,
)
from spotline.alerts import Severity
from spotline.contract import ErrorKind
from spotline.log_lines import JOB_FINISHED

# -- the analysis child fell over: the worker's log, through a subscription filter -------------

# The "job finished" outcomes of an attempt that took the analysis child down: the memory guard
# killed it (OOM; an OOM the analyzer raised itself, a GPU OOM, leaves the child alive but is
# the same trouble), it died on its own (UNKNOWN: a signal, a segfault, an exit) or it outlived
# max_runtime_s and was killed (TIMEOUT). The worker log group's subscription filter in
# template.yaml matches exactly these kinds; a test holds the two together.
CHILD_FELL_OVER_KINDS = (ErrorKind.OOM, ErrorKind.UNKNOWN, ErrorKind.TIMEOUT)
# Routed like the alarm on the same trouble (STACK-worker-child-restarted, tagged warning).
CHILD_NOTICE_NAME = "worker-child-restarted"
CHILD_NOTICE_SEVERITY = Severity.WARNING
# CloudWatch Logs sends at most 1 MB per delivery; anything far larger is not from it.
MAX_LOG_PAYLOAD_BYTES = 8 * 1024 * 1024
KIND_MEANING: dict[str, str] = {
    ErrorKind.OOM: "out of memory (the memory guard's limit or the GPU's)",
    ErrorKind.UNKNOWN: "the child died (a signal, a segfault or an exit)",
    ErrorKind.TIMEOUT: "the job ran past its max_runtime_s and the child was killed",
}
_NEXT_STEP = {"DEAD_LETTER": "dead-lettered", "REQUEUE": "requeued"}
CHILD_SUPPRESSED = "burst-suppressed"  # the fan-out's decision for a notice held back
ERROR_MESSAGE_CHARS = 300
_LOG_UNREADABLE = (*UNREADABLE_ERRORS, OverflowError, OSError, EOFError, zlib.error, RecursionError)


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
    event_id = text_field(log_event, "id", required=True)
    timestamp = log_event.get("timestamp")
    if not isinstance(timestamp, int) or isinstance(timestamp, bool):
        raise MalformedAlarm("log event without a timestamp")
    attempt = line.get("attempt")
    return ChildFellOver(
        name=name,
        job_id=text_field(line, "job_id", required=True),
        error_kind=str(line["error_kind"]),
        analyzer=text_field(line, "analyzer"),
        attempt=attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else None,
        action=text_field(line, "action"),
        reason=text_field(line, "reason"),
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
    excerpt = data if isinstance(data, str) else dump_raw(awslogs)
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
            "log_group": text_field(payload, "logGroup", required=True),
            "log_stream": text_field(payload, "logStream", required=True),
            "account": text_field(payload, "owner"),
        }
    except _LOG_UNREADABLE as exc:
        return [Unreadable(excerpt, "", f"CloudWatch Logs delivery: {exc}")]
    notices: list[ChildFellOver | Unreadable] = []
    for log_event in log_events:
        if not isinstance(log_event, Mapping):
            notices.append(Unreadable(dump_raw(log_event), "", "log event is not an object"))
            continue
        try:
            notices.append(parse_child_line(log_event, name=name, region=region, **where))
        except _LOG_UNREADABLE as exc:
            message = log_event.get("message")
            raw = message if isinstance(message, str) else dump_raw(log_event)
            notices.append(Unreadable(raw, str(log_event.get("id") or ""), str(exc)))
    return notices
