"""The alarms in template.yaml: each named, described with its first check, thresholds as
parameters, missing data treated deliberately, notifying the alarm topic on ALARM and on OK."""

from __future__ import annotations

from typing import Any

import boto3
import pytest

from devstack.cfn import Stack, load_template
from spotline.metrics_names import NAMESPACE, SERVICE_DIMENSION, WORKER_SERVICE, WorkerMetric

TEMPLATE = load_template()
RESOURCES: dict[str, Any] = TEMPLATE["Resources"]


def _scaling_only(alarm: dict[str, Any]) -> bool:
    """An alarm that only drives a scaling policy (the larger tier's start from zero)."""
    actions = alarm["Properties"].get("AlarmActions", [])
    return bool(actions) and all(
        RESOURCES[a["Ref"]]["Type"] == "AWS::AutoScaling::ScalingPolicy" for a in actions
    )


# Alarms that page (scaling signals are not pages: they have no topic and no runbook).
ALARMS = {
    k: r
    for k, r in RESOURCES.items()
    if r["Type"] == "AWS::CloudWatch::Alarm" and not _scaling_only(r)
}
FUNCTION_TYPES = ("AWS::Serverless::Function", "AWS::Lambda::Function")
TOPIC = {"Ref": "AlarmTopic"}


def metrics_of(alarm: dict[str, Any]) -> list[dict[str, Any]]:
    props = alarm["Properties"]
    if "Metrics" in props:
        return [m["MetricStat"]["Metric"] for m in props["Metrics"] if "MetricStat" in m]
    return [props]


def alarms_on(namespace: str, metric: str) -> dict[str, dict[str, Any]]:
    return {
        k: a
        for k, a in ALARMS.items()
        if any(m["Namespace"] == namespace and m["MetricName"] == metric for m in metrics_of(a))
    }


def dimension(alarm_metric: dict[str, Any], name: str) -> Any:
    (value,) = [d["Value"] for d in alarm_metric["Dimensions"] if d["Name"] == name]
    return value


@pytest.mark.parametrize("logical_id", sorted(ALARMS))
def test_every_alarm_is_named_described_and_notifies_on_alarm_and_ok(logical_id: str) -> None:
    props = ALARMS[logical_id]["Properties"]
    assert props["AlarmName"]["Fn::Sub"].startswith("${AWS::StackName}-")
    assert "First check" in props["AlarmDescription"]
    assert props["TreatMissingData"] in ("breaching", "notBreaching", "ignore", "missing")
    assert props["AlarmActions"] == [TOPIC] and props["OKActions"] == [TOPIC]
    assert {t["Key"] for t in props["Tags"]} == {"severity"}


def test_the_runbooks_alarms_are_all_there() -> None:
    for namespace, metric in [
        ("AWS/SQS", "ApproximateAgeOfOldestMessage"),
        (NAMESPACE, WorkerMetric.WORKER_HEARTBEAT),
        (NAMESPACE, WorkerMetric.CONTAINER_MEMORY_PERCENT),
        (NAMESPACE, WorkerMetric.CHILD_RESTARTS),
        ("AWS/EC2", "StatusCheckFailed_Instance"),
        ("AWS/AutoScaling", "GroupInServiceInstances"),
    ]:
        assert alarms_on(namespace, metric), f"no alarm on {namespace} {metric}"
    backlog = alarms_on("AWS/SQS", "ApproximateNumberOfMessagesVisible")
    watched = {dimension(metrics_of(a)[0], "QueueName")["Fn::GetAtt"][0] for a in backlog.values()}
    assert {"JobsQueue", "JobsDeadLetterQueue", "AlarmFanoutFailuresQueue"} <= watched


def test_thresholds_are_parameters() -> None:
    for logical_id, parameter in [
        ("JobsQueueAgeAlarm", "QueueAgeAlarmSeconds"),
        ("JobsQueueBacklogAlarm", "QueueBacklogAlarmMessages"),
        ("WorkerMemoryHighAlarm", "WorkerMemoryAlarmPercent"),
    ]:
        assert ALARMS[logical_id]["Properties"]["Threshold"] == {"Ref": parameter}
    heartbeat = ALARMS["WorkerHeartbeatMissingAlarm"]["Properties"]
    assert heartbeat["EvaluationPeriods"] == {"Ref": "WorkerHeartbeatMissingMinutes"}
    assert TEMPLATE["Parameters"]["WorkerMemoryAlarmPercent"]["Default"] == 90


def test_a_missing_heartbeat_is_breaching() -> None:
    (alarm,) = alarms_on(NAMESPACE, WorkerMetric.WORKER_HEARTBEAT).values()
    assert alarm["Properties"]["TreatMissingData"] == "breaching"


def test_worker_alarms_use_the_workers_metric_names_and_dimension() -> None:
    assert TEMPLATE["Parameters"]["WorkerMetricsService"]["Default"] == WORKER_SERVICE
    for alarm in ALARMS.values():
        for metric in metrics_of(alarm):
            if metric["Namespace"] == NAMESPACE:
                assert metric["MetricName"] in set(WorkerMetric)
                assert dimension(metric, SERVICE_DIMENSION) == {"Ref": "WorkerMetricsService"}
                assert alarm["Condition"] == "DeployWorkers"


def test_fleet_alarms_watch_the_worker_group_and_exist_only_with_workers() -> None:
    # The default tier's group (the larger tier's has its own alarms on its own queue).
    groups = [
        k
        for k, r in RESOURCES.items()
        if r["Type"] == "AWS::AutoScaling::AutoScalingGroup"
        and r.get("Condition") == "DeployWorkers"
    ]
    for metric in ("StatusCheckFailed_Instance", "GroupInServiceInstances"):
        namespace = "AWS/EC2" if metric.startswith("Status") else "AWS/AutoScaling"
        for alarm in alarms_on(namespace, metric).values():
            assert alarm["Condition"] == "DeployWorkers"
            value = next(
                dimension(m, "AutoScalingGroupName")
                for m in metrics_of(alarm)
                if m["MetricName"] == metric
            )
            if groups:  # the fleet is in the template: its group must carry the watched name
                (group,) = groups
                name = RESOURCES[group]["Properties"].get("AutoScalingGroupName")
                assert name in (value["Fn::If"][2], {"Ref": "WorkerAutoScalingGroupName"}), (
                    f"{group} must be named STACK-workers for its alarms and dashboard"
                )


def test_no_in_service_workers_while_backlog_alarm_fills_missing_data() -> None:
    props = ALARMS["WorkerFleetEmptyAlarm"]["Properties"]
    (expression,) = [m["Expression"] for m in props["Metrics"] if "Expression" in m]
    assert "FILL(backlog, 0) > 0" in expression and "FILL(inservice, 0) < 1" in expression


def test_every_function_has_errors_and_throttles_alarms() -> None:
    functions = {k for k, r in RESOURCES.items() if r["Type"] in FUNCTION_TYPES}
    for metric in ("Errors", "Throttles"):
        watched = {
            dimension(metrics_of(a)[0], "FunctionName")["Ref"]
            for a in alarms_on("AWS/Lambda", metric).values()
        }
        assert functions - watched == set(), f"functions without a {metric} alarm"


def test_every_dead_letter_queue_has_a_not_empty_alarm() -> None:
    """A queue where failures land (a redrive target or an on-failure destination) is watched,
    e.g. a notification-failures queue added later must come with its alarm."""
    targets = set()
    for resource in RESOURCES.values():
        props = resource.get("Properties", {})
        redrive = props.get("RedrivePolicy", {}).get("deadLetterTargetArn")
        if redrive:
            targets.add(redrive["Fn::GetAtt"][0])
        destination = (
            props.get("EventInvokeConfig", {}).get("DestinationConfig", {}).get("OnFailure", {})
        )
        if destination.get("Type") == "SQS":
            targets.add(destination["Destination"]["Fn::GetAtt"][0])
    backlog = alarms_on("AWS/SQS", "ApproximateNumberOfMessagesVisible")
    watched = {dimension(metrics_of(a)[0], "QueueName")["Fn::GetAtt"][0] for a in backlog.values()}
    assert targets and targets <= watched


def test_alarm_topic_is_encrypted_with_a_key_cloudwatch_may_use() -> None:
    topic = RESOURCES["AlarmTopic"]["Properties"]
    assert topic["KmsMasterKeyId"] == {"Ref": "AlarmTopicKey"}
    statements = RESOURCES["AlarmTopicKey"]["Properties"]["KeyPolicy"]["Statement"]
    assert any(
        s.get("Principal", {}).get("Service") == "cloudwatch.amazonaws.com"
        and "kms:GenerateDataKey*" in s["Action"]
        for s in statements
    )
    assert RESOURCES["AlarmFanoutFailuresQueue"]["Properties"]["SqsManagedSseEnabled"] is True


def test_fanout_subscribes_to_the_topic_and_the_eventbridge_state_changes() -> None:
    props = RESOURCES["AlarmFanoutFunction"]["Properties"]
    events = {e["Type"]: e["Properties"] for e in props["Events"].values()}
    assert events["SNS"]["Topic"] == TOPIC
    pattern = events["EventBridgeRule"]["Pattern"]
    assert pattern["detail-type"] == ["CloudWatch Alarm State Change"]
    on_failure = props["EventInvokeConfig"]["DestinationConfig"]["OnFailure"]
    assert on_failure["Destination"] == {"Fn::GetAtt": ["AlarmFanoutFailuresQueue", "Arn"]}


def test_alarms_are_created_from_the_template_with_their_actions(stack: Stack) -> None:
    cloudwatch = boto3.client("cloudwatch", region_name="us-east-1")
    alarm = cloudwatch.describe_alarms(AlarmNames=[stack.ref("JobsDeadLetterQueueAlarm")])
    (described,) = alarm["MetricAlarms"]
    assert described["AlarmActions"] == [stack.ref("AlarmTopic")]
    assert described["OKActions"] == [stack.ref("AlarmTopic")]
    assert described["Dimensions"] == [
        {"Name": "QueueName", "Value": stack.attr("JobsDeadLetterQueue", "QueueName")}
    ]
