"""Capacity tiers and the on-demand lane in template.yaml: off, a one-pool stack as always; on,
a larger-memory spot tier and an on-demand lane, each with its own queue, DLQ and alarms."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest

from devstack.cfn import Stack, load_template, parameter_defaults

TIER_RESOURCES = {
    "LargeTierQueue": "UseLargeTier",
    "LargeTierDeadLetterQueue": "UseLargeTier",
    "LargeTierDeadLetterEventSource": "UseLargeTier",
    "LargeTierGroup": "UseLargeTier",
    "LargeTierBacklogScaling": "UseLargeTier",
    "LargeTierScaleFromZero": "UseLargeTier",
    "LargeTierWaitingOnZeroAlarm": "UseLargeTier",
    "LargeTierQueueAgeAlarm": "UseLargeTier",
    "LargeTierDeadLetterQueueAlarm": "UseLargeTier",
    "OnDemandQueue": "UseOnDemandLane",
    "OnDemandDeadLetterQueue": "UseOnDemandLane",
    "OnDemandDeadLetterEventSource": "UseOnDemandLane",
    "OnDemandQueueAgeAlarm": "UseOnDemandLane",
    "OnDemandDeadLetterQueueAlarm": "UseOnDemandLane",
}
ON = {"DeployWorkers": "true", "WorkerTiers": "default,large", "OnDemandLane": "true"}


def stack_with(parameters: dict[str, str]) -> Stack:
    template = load_template()
    return Stack("s", "us-east-1", template, parameter_defaults(template, parameters))


def choose(stack: Stack, value: Any) -> Any:
    """The value with every Fn::If decided and AWS::NoValue dropped (other intrinsics kept)."""
    if isinstance(value, list):
        chosen = [choose(stack, item) for item in value]
        return [item for item in chosen if item != {"Ref": "AWS::NoValue"}]
    if isinstance(value, dict):
        if set(value) == {"Fn::If"}:
            name, yes, no = value["Fn::If"]
            return choose(stack, yes if stack.condition(name) else no)
        chosen = {key: choose(stack, item) for key, item in value.items()}
        return {key: item for key, item in chosen.items() if item != {"Ref": "AWS::NoValue"}}
    return value


def user_data(stack: Stack) -> tuple[str, dict[str, Any]]:
    props = stack.template["Resources"]["WorkerLaunchTemplate"]["Properties"]
    script, variables = props["LaunchTemplateData"]["UserData"]["Fn::Base64"]["Fn::Sub"]
    return script, choose(stack, variables)


def test_tier_resources_exist_only_under_their_condition() -> None:
    resources = load_template()["Resources"]
    for logical_id, condition in TIER_RESOURCES.items():
        assert resources[logical_id]["Condition"] == condition, logical_id


def test_tiers_are_off_by_default_and_need_the_fleet() -> None:
    off = stack_with({})
    assert not any(off.condition(c) for c in ("UseLargeTier", "UseOnDemandLane", "UseTiers"))
    serverless = stack_with({"WorkerTiers": "default,large", "OnDemandLane": "true"})
    assert not serverless.condition("UseTiers")  # no fleet: no tiers either
    on = stack_with(ON)
    assert all(on.condition(c) for c in ("UseLargeTier", "UseOnDemandLane", "UseTiers"))


def test_a_one_pool_stack_renders_its_worker_script_as_before() -> None:
    script, variables = user_data(stack_with({"DeployWorkers": "true"}))
    assert variables["TierSelect"] == "" and variables["TierEnv"] == ""
    assert variables["WorkerQueueUrl"] == {"Ref": "JobsQueue"}
    assert variables["WorkerDlqUrl"] == {"Ref": "JobsDeadLetterQueue"}
    assert variables["WorkerAsgName"] == {"Fn::Sub": "${AWS::StackName}-workers"}
    rendered = (
        script.replace("${TierSelect}", "")
        .replace("${TierEnv}", "")
        .replace("${WorkerQueueUrl}", "${JobsQueue}")
        .replace("${WorkerDlqUrl}", "${JobsDeadLetterQueue}")
        .replace("${WorkerAsgName}", "${AWS::StackName}-workers")
    )
    for line in (
        "WORKER_QUEUE_URL=${JobsQueue}\n",
        "WORKER_DLQ_URL=${JobsDeadLetterQueue}\n",
        "WORKER_ASG_NAME=${AWS::StackName}-workers\n",
        "\nMEM_KB=$(awk",
        "WORKER_LOG_GROUP=${WorkerLogGroup}\nAWS_REGION=${AWS::Region}\n",
    ):
        assert line in rendered
    assert "TIER" not in rendered
    props = choose(stack_with({"DeployWorkers": "true"}), load_template()["Resources"])
    assert all(tag["Key"] != "spotline-tier" for tag in props["WorkerGroup"]["Properties"]["Tags"])
    enqueue_env = props["EnqueueFunction"]["Properties"]["Environment"]["Variables"]
    assert "JOB_TIERS" not in enqueue_env


def _select_script(parameters: dict[str, str]) -> str:
    _, variables = user_data(stack_with(parameters))
    template, names = variables["TierSelect"]["Fn::Sub"]
    values = {
        "LargeQueue": "https://q/large",
        "LargeDlq": "https://q/large-dlq",
        "LaneQueue": "https://q/lane",
        "LaneDlq": "https://q/lane-dlq",
        "NextTier": "large",
        "JobsQueue": "https://q/jobs",
        "JobsDeadLetterQueue": "https://q/jobs-dlq",
        "AWS::StackName": "s",
        "DefaultTierJobMemoryMiB": "11264",
        "LargeTierJobMemoryMiB": "47104",
    }
    for name in names:
        assert name in values
    return re.sub(r"\$\{([^!}][^}]*)\}", lambda m: values[m.group(1)], template)


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("large", "large|https://q/large|https://q/large-dlq|47104|s-workers-large||"),
        ("on-demand", "on-demand|https://q/lane|https://q/lane-dlq|11264||large|https://q/large"),
        ("", "default|https://q/jobs|https://q/jobs-dlq|11264|s-workers|large|https://q/large"),
    ],
)
def test_the_instance_tag_picks_the_tiers_queue_memory_and_next_tier(
    tag: str, expected: str
) -> None:
    script = _select_script(ON)
    # curl stands in for IMDS: the tag's value, or a failure (no tag) for the default tier.
    fake_curl = f'curl() {{ [ -n "{tag}" ] && echo "{tag}" || return 22; }}\n'
    show = (
        'echo "$TIER|$TIER_QUEUE_URL|$TIER_DLQ_URL|$TIER_MEMORY_MIB|$TIER_ASG_NAME|'
        '$NEXT_TIER|$NEXT_QUEUE_URL"\n'
    )
    out = subprocess.run(
        ["bash", "-c", "set -euo pipefail\nTOKEN=t\n" + fake_curl + script + show],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    assert out.stdout.strip() == expected


def test_a_tiered_worker_gets_its_tier_and_the_escalation_queues() -> None:
    _, variables = user_data(stack_with(ON))
    assert variables["WorkerQueueUrl"] == "$TIER_QUEUE_URL"
    env, names = variables["TierEnv"]["Fn::Sub"]
    assert names["LaneQueue"] == {"Ref": "OnDemandQueue"}
    for line in (
        "WORKER_TIER=$TIER",
        "WORKER_JOB_MEMORY_LIMIT=${!TIER_MEMORY_MIB}Mi",  # Sub leaves ${X} to the shell
        "WORKER_ESCALATION_TIER=$NEXT_TIER",
        "WORKER_ESCALATION_QUEUE_URL=$NEXT_QUEUE_URL",
        "WORKER_ON_DEMAND_QUEUE_URL=${LaneQueue}",
        "WORKER_PREEMPTIONS_BEFORE_ON_DEMAND=${PreemptionsBeforeOnDemand}",
    ):
        assert line in env
    props = choose(stack_with(ON), load_template()["Resources"])
    metadata = props["WorkerLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert metadata["MetadataOptions"]["InstanceMetadataTags"] == "enabled"


def test_the_large_tier_is_a_spot_pool_from_zero_on_its_own_backlog() -> None:
    resources = choose(stack_with(ON), load_template()["Resources"])
    group = resources["LargeTierGroup"]["Properties"]
    assert group["MinSize"] == 0
    distribution = group["MixedInstancesPolicy"]["InstancesDistribution"]
    assert distribution["OnDemandPercentageAboveBaseCapacity"] == 0
    launch = group["MixedInstancesPolicy"]["LaunchTemplate"]
    assert launch["LaunchTemplateSpecification"]["LaunchTemplateId"] == {
        "Ref": "WorkerLaunchTemplate"
    }
    types = [o["InstanceType"]["Fn::Select"] for o in launch["Overrides"]]
    assert [index for index, _ in types] == [0, 1, 2]
    assert all(ref == {"Ref": "LargeTierInstanceTypes"} for _, ref in types)
    tags = {tag["Key"]: tag["Value"] for tag in group["Tags"]}
    assert tags["spotline-tier"] == "large" and tags["spotline:role"] == "worker"
    assert group["LifecycleHookSpecificationList"][0]["LifecycleHookName"] == "drain"
    scaling = resources["LargeTierBacklogScaling"]["Properties"]["TargetTrackingConfiguration"]
    queue_dims = scaling["CustomizedMetricSpecification"]["Metrics"][0]["MetricStat"]["Metric"]
    assert queue_dims["Dimensions"][0]["Value"] == {"Fn::GetAtt": ["LargeTierQueue", "QueueName"]}
    alarm = resources["LargeTierWaitingOnZeroAlarm"]["Properties"]
    assert alarm["AlarmActions"] == [{"Ref": "LargeTierScaleFromZero"}]
    assert "inservice == 0 AND visible > 0" in alarm["Metrics"][2]["Expression"]


@pytest.mark.parametrize("prefix", ["LargeTier", "OnDemand"])
def test_each_tier_queue_has_its_dlq_consumer_and_alarms(prefix: str) -> None:
    resources = choose(stack_with(ON), load_template()["Resources"])
    queue = resources[f"{prefix}Queue"]["Properties"]
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {
        "Fn::GetAtt": [f"{prefix}DeadLetterQueue", "Arn"]
    }
    assert queue["SqsManagedSseEnabled"] is True
    source = resources[f"{prefix}DeadLetterEventSource"]["Properties"]
    assert source["FunctionName"] == {"Ref": "DeadLetterFunction"}
    for alarm in (f"{prefix}QueueAgeAlarm", f"{prefix}DeadLetterQueueAlarm"):
        props = resources[alarm]["Properties"]
        assert props["AlarmActions"] == [{"Ref": "AlarmTopic"}], alarm
    worker = resources["WorkerRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    by_sid = {statement["Sid"]: statement for statement in worker}
    assert {"Fn::GetAtt": [f"{prefix}Queue", "Arn"]} in by_sid["Jobs"]["Resource"]
    assert {"Fn::GetAtt": [f"{prefix}DeadLetterQueue", "Arn"]} in by_sid["DeadLetters"]["Resource"]


def test_the_lane_is_the_standby_and_spot_events_watch_its_queue() -> None:
    resources = choose(stack_with(ON), load_template()["Resources"])
    tags = {t["Key"]: t["Value"] for t in resources["StandbyInstance"]["Properties"]["Tags"]}
    assert tags["spotline-tier"] == "on-demand" and tags["spotline:role"] == "standby"
    spot = resources["SpotEventsFunction"]["Properties"]
    assert spot["Environment"]["Variables"]["ON_DEMAND_QUEUE_URL"] == {"Ref": "OnDemandQueue"}
    backlog = next(s for p in spot["Policies"] for s in p["Statement"] if s.get("Sid") == "Backlog")
    assert {"Fn::GetAtt": ["OnDemandQueue", "Arn"]} in backlog["Resource"]


def test_enqueue_knows_the_tiers_smallest_first() -> None:
    resources = choose(stack_with(ON), load_template()["Resources"])
    enqueue = resources["EnqueueFunction"]["Properties"]
    tiers = enqueue["Environment"]["Variables"]["JOB_TIERS"]["Fn::Sub"]
    assert tiers == (
        "default=${DefaultTierJobMemoryMiB}=${JobsQueue},"
        "large=${LargeTierJobMemoryMiB}=${LargeTierQueue}"
    )
    sends = [s for p in enqueue["Policies"] if "Statement" in p for s in p["Statement"]]
    assert any(s.get("Resource") == {"Fn::GetAtt": ["LargeTierQueue", "Arn"]} for s in sends)


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("on-demand", "https://q/jobs|https://q/jobs-dlq"),
        ("large", "|"),
        ("", "|"),
    ],
)
def test_only_the_lanes_worker_covers_the_jobs_queue(tag: str, expected: str) -> None:
    """The standby takes the lane's jobs first, then the jobs queue's (gpu_worker/queues.py):
    with the lane on it still covers spot gaps; no spot tier takes another tier's queue."""
    fake_curl = f'curl() {{ [ -n "{tag}" ] && echo "{tag}" || return 22; }}\n'
    out = subprocess.run(
        [
            "bash",
            "-c",
            "set -euo pipefail\nTOKEN=t\n"
            + fake_curl
            + _select_script(ON)
            + 'echo "$COVER_QUEUE_URL|$COVER_DLQ_URL"\n',
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    assert out.stdout.strip() == expected
    env, _ = user_data(stack_with(ON))[1]["TierEnv"]["Fn::Sub"]
    assert "WORKER_COVER_QUEUE_URL=$COVER_QUEUE_URL\n" in env
    assert "WORKER_COVER_DLQ_URL=$COVER_DLQ_URL\n" in env
