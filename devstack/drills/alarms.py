"""Alarms, simulated: set a template alarm's state in moto, deliver what AWS would deliver to the
real alarm_fanout handler (the SNS notification and the EventBridge state change), and watch the
posts arrive at a local webhook sink standing in for Slack, Discord and a JSON webhook.

moto never evaluates alarms or fires their actions, so the drill does what CloudWatch would: it
builds both event shapes from the alarm as moto describes it, starting from the files in events/.
"""

from __future__ import annotations

import base64
import copy
import gzip
import json
import uuid
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

from devstack.drills.base import Check, Drill, Expectation
from devstack.lambdas import LambdaContext, load_event, load_handler_module
from devstack.sink import WebhookSink
from devstack.stack import Devstack

CHANNELS = ("slack", "discord", "webhook")
DRILL_ALARM = "JobsQueueAgeAlarm"


def _cloudwatch_time(value: datetime) -> str:
    """CloudWatch's own timestamp format: 2026-11-23T05:43:12.345+0000."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{value.microsecond // 1000:03d}+0000"
    )


def sns_alarm_event(alarm: dict[str, Any], old_state: str, topic_arn: str) -> dict[str, Any]:
    """The SNS record CloudWatch publishes for ``alarm`` (a describe_alarms entry)."""
    event = copy.deepcopy(load_event("alarm_sns_alarm"))
    message = json.loads(event["Records"][0]["Sns"]["Message"])
    changed = alarm["StateUpdatedTimestamp"]
    message.update(
        {
            "AlarmName": alarm["AlarmName"],
            "AlarmDescription": alarm.get("AlarmDescription", ""),
            "AlarmArn": alarm["AlarmArn"],
            "NewStateValue": alarm["StateValue"],
            "OldStateValue": old_state,
            "NewStateReason": alarm["StateReason"],
            "StateChangeTime": _cloudwatch_time(changed),
            "AlarmActions": alarm.get("AlarmActions", []),
            "OKActions": alarm.get("OKActions", []),
        }
    )
    message["Trigger"].update(
        {
            "MetricName": alarm["MetricName"],
            "Namespace": alarm["Namespace"],
            "Statistic": str(alarm.get("Statistic", "")).upper(),
            "Dimensions": [
                {"name": d["Name"], "value": d["Value"]} for d in alarm.get("Dimensions", [])
            ],
            "Period": alarm["Period"],
            "EvaluationPeriods": alarm["EvaluationPeriods"],
            "ComparisonOperator": alarm["ComparisonOperator"],
            "Threshold": alarm["Threshold"],
            "TreatMissingData": alarm.get("TreatMissingData", "missing"),
        }
    )
    sns = event["Records"][0]["Sns"]
    sns.update(
        {
            "MessageId": str(uuid.uuid4()),
            "TopicArn": topic_arn,
            "Subject": f'{alarm["StateValue"]}: "{alarm["AlarmName"]}" in US East (N. Virginia)',
            "Message": json.dumps(message),
            "Timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        }
    )
    event["Records"][0]["EventSubscriptionArn"] = f"{topic_arn}:{uuid.uuid4()}"
    return event


def eventbridge_alarm_event(alarm: dict[str, Any], old_state: str) -> dict[str, Any]:
    """The EventBridge ``CloudWatch Alarm State Change`` event for ``alarm``."""
    event = copy.deepcopy(load_event("alarm_eventbridge_state_change"))
    changed = alarm["StateUpdatedTimestamp"]
    event.update(
        {
            "id": str(uuid.uuid4()),
            "time": changed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "resources": [alarm["AlarmArn"]],
        }
    )
    detail = event["detail"]
    detail["alarmName"] = alarm["AlarmName"]
    detail["state"] = {
        "value": alarm["StateValue"],
        "reason": alarm["StateReason"],
        "reasonData": json.dumps({"version": "1.0", "threshold": alarm["Threshold"]}),
        "timestamp": _cloudwatch_time(changed),
    }
    detail["previousState"] = {"value": old_state, "reason": "", "timestamp": ""}
    detail["configuration"] = {
        "description": alarm.get("AlarmDescription", ""),
        "metrics": [
            {
                "id": "m1",
                "metricStat": {
                    "metric": {
                        "namespace": alarm["Namespace"],
                        "name": alarm["MetricName"],
                        "dimensions": {d["Name"]: d["Value"] for d in alarm.get("Dimensions", [])},
                    },
                    "period": alarm["Period"],
                    "stat": alarm.get("Statistic", ""),
                },
                "returnData": True,
            }
        ],
    }
    return event


def worker_log_event(
    lines: list[str],
    *,
    log_group: str,
    log_stream: str,
    start_ms: int,
    owner: str = "123456789012",
    filter_name: str = "WorkerChildFellOverSubscription",
) -> dict[str, Any]:
    """What CloudWatch Logs hands a subscribed function for ``lines`` of the worker's log (its
    filter having matched them): ``{"awslogs": {"data": base64(gzip(JSON))}}``, one log event
    per line, a millisecond apart, each with CloudWatch's 56-digit event id."""
    payload = {
        "messageType": "DATA_MESSAGE",
        "owner": owner,
        "logGroup": log_group,
        "logStream": log_stream,
        "subscriptionFilters": [filter_name],
        "logEvents": [
            {
                # 56 digits like CloudWatch's (which start with the time, too).
                "id": f"{start_ms + index:013d}{uuid.uuid4().int % 10**43:043d}",
                "timestamp": start_ms + index,
                "message": line,
            }
            for index, line in enumerate(lines)
        ],
    }
    data = gzip.compress(json.dumps(payload).encode("utf-8"), mtime=0)
    return {"awslogs": {"data": base64.b64encode(data).decode("ascii")}}


def worker_log_payload(event: dict[str, Any]) -> dict[str, Any]:
    """The JSON inside a CloudWatch Logs delivery (the reverse of :func:`worker_log_event`)."""
    payload: dict[str, Any] = json.loads(
        gzip.decompress(base64.b64decode(event["awslogs"]["data"]))
    )
    return payload


def fanout_env(sink_url: str, dev: Devstack) -> dict[str, str]:
    """Channels pointing at the sink, with their URLs in SSM SecureString parameters."""
    ssm = dev.client("ssm")
    env = {"ALERT_CHANNELS": ",".join(CHANNELS)}
    for channel in CHANNELS:
        name = f"/spotline/alarms/{channel}-webhook-url"
        ssm.put_parameter(
            Name=name, Value=f"{sink_url}/{channel}", Type="SecureString", Overwrite=True
        )
        env[f"{channel.upper()}_WEBHOOK_SECRET"] = f"ssm:{name}"
    return env


class AlarmDrill(Drill):
    name = "alarms"

    def __init__(self) -> None:
        self.sink = WebhookSink()
        self._checks: list[Check] = []
        self._handler: ModuleType | None = None

    def setup(self, dev: Devstack) -> None:
        self.sink.start()
        self._handler = load_handler_module(
            "alarm_fanout.app",
            dev.require_stack,
            "AlarmFanoutFunction",
            {**dev.handler_env, **fanout_env(self.sink.url, dev)},
        )

    def _invoke(self, event: dict[str, Any]) -> dict[str, Any]:
        assert self._handler is not None
        result: dict[str, Any] = self._handler.handler(
            event, LambdaContext(function_name="AlarmFanoutFunction")
        )
        return result

    def submit(self, dev: Devstack) -> list[Expectation]:
        stack = dev.require_stack
        cloudwatch = dev.client("cloudwatch")
        name = stack.ref(DRILL_ALARM)
        topic = stack.ref("AlarmTopic")

        def transition(state: str, reason: str) -> dict[str, Any]:
            before = cloudwatch.describe_alarms(AlarmNames=[name])["MetricAlarms"][0]
            cloudwatch.set_alarm_state(AlarmName=name, StateValue=state, StateReason=reason)
            after = cloudwatch.describe_alarms(AlarmNames=[name])["MetricAlarms"][0]
            return {"alarm": after, "old": before["StateValue"]}

        fired = transition("ALARM", "drill: the oldest job waited 1203 s (threshold 900 s)")
        self._invoke(sns_alarm_event(fired["alarm"], fired["old"], topic))
        # The same transition again, as EventBridge delivers it too: nothing is re-posted.
        repeat = self._invoke(eventbridge_alarm_event(fired["alarm"], fired["old"]))
        resolved = transition("OK", "drill: the queue drained")
        self._invoke(eventbridge_alarm_event(resolved["alarm"], resolved["old"]))

        posts = {channel: self.sink.on(f"/{channel}") for channel in CHANNELS}
        slack = [p.json()["attachments"][0]["blocks"][0]["text"]["text"] for p in posts["slack"]]
        self._checks += [
            Check(
                "alarm posted to every channel",
                all(len(p) >= 1 for p in posts.values()),
                ", ".join(f"{c}: {len(p)}" for c, p in posts.items()),
            ),
            Check(
                "EventBridge copy of a posted transition skipped",
                repeat.get("skipped") == len(CHANNELS) and repeat.get("delivered") == 0,
                f"skipped {repeat.get('skipped')}",
            ),
            Check(
                "alarm then resolved, once each",
                slack == [f"ALARM: {name}", f"Resolved: {name}"]
                and all(len(p) == 2 for p in posts.values()),
                " → ".join(slack),
            ),
        ]
        self._child_fell_over(stack.name)
        return []

    def _child_fell_over(self, stack_name: str) -> None:
        """The worker log's subscription delivers one "job finished" line of a child that fell
        over, and Lambda delivers it again (a retry): chat gets it once, with its job."""
        sample = worker_log_payload(load_event("alarm_worker_child_fell_over"))
        line = sample["logEvents"][0]["message"]
        event = worker_log_event(
            [line],
            log_group=f"/spotline/{stack_name}/worker",
            log_stream=sample["logStream"],
            start_ms=int(datetime.now(UTC).timestamp() * 1000),
        )
        first, retry = self._invoke(event), self._invoke(event)
        titles = [
            p.json()["attachments"][0]["blocks"][0]["text"]["text"] for p in self.sink.on("/slack")
        ]
        fell = [t for t in titles if t.startswith("Analysis child fell over")]
        self._checks.append(
            Check(
                "child fell over: posted once per channel with its job",
                first.get("delivered") == len(CHANNELS)
                and retry.get("skipped") == len(CHANNELS)
                and len(fell) == 1,
                fell[0] if fell else f"first {first}, retry {retry}",
            )
        )

    def checks(self, dev: Devstack, records: dict[str, Any]) -> list[Check]:
        return self._checks

    def teardown(self, dev: Devstack) -> None:
        self.sink.stop()
