"""Every notice in one Lambda event, whichever its source: SNS alarm notifications, EventBridge
alarm events, or a CloudWatch Logs delivery of the worker's log."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from alarm_fanout.alarm_shapes import (
    ALARM_STATE_CHANGE,
    UNREADABLE_ERRORS,
    AlarmNotice,
    Unreadable,
    dump_raw,
    parse_eventbridge_alarm,
    parse_sns_alarm,
)
from alarm_fanout.child_notices import CHILD_NOTICE_NAME, ChildFellOver, notices_from_worker_log

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
        except UNREADABLE_ERRORS as exc:
            return [Unreadable(dump_raw(event), str(event.get("id") or ""), str(exc))]
    problem = (
        "neither an SNS notification, a CloudWatch Alarm State Change event"
        " nor a CloudWatch Logs delivery"
    )
    ref = str(event.get("id") or "") if isinstance(event, Mapping) else ""
    return [Unreadable(dump_raw(event), ref, problem)]


def _from_sns_record(record: Any) -> AlarmNotice | Unreadable:
    sns = record.get("Sns") if isinstance(record, Mapping) else None
    if not isinstance(sns, Mapping):
        return Unreadable(dump_raw(record), "", "record without an Sns notification")
    message = sns.get("Message")
    ref = str(sns.get("MessageId") or "")
    raw = message if isinstance(message, str) else dump_raw(message)
    try:
        data = json.loads(raw)
    except ValueError:
        return Unreadable(raw, ref, "message is not JSON")
    if not isinstance(data, Mapping):
        return Unreadable(raw, ref, "message is not a JSON object")
    try:
        return parse_sns_alarm(data, topic_arn=str(sns.get("TopicArn") or ""))
    except UNREADABLE_ERRORS as exc:
        return Unreadable(raw, ref, str(exc))
