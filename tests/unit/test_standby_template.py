"""The fleet half of template.yaml: conditions, event patterns, IMDSv2, the spot group."""

from __future__ import annotations

import re
from typing import Any

import boto3
import pytest
import yaml

from devstack.cfn import REPO_ROOT, load_template, provision
from spot_events.events import DETAIL_TYPES
from spotline.instance_tags import INTERRUPTED_TAG, TERMINATES_AT_TAG
from spotline.jobstore import RUNNING_ON, RUNNING_ON_INDEX

FLEET_RESOURCES = {
    "SpotEventsFunction",
    "StandbyScheduleGroup",
    "StandbySchedulerRole",
    "StandbySchedulerInvokePolicy",
    "WorkerSecurityGroup",
    "WorkerRole",
    "WorkerInstanceProfile",
    "WorkerLaunchTemplate",
    "WorkerGroup",
    "WorkerBacklogScaling",
    "StandbyInstance",
}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


@pytest.fixture(scope="module")
def resources(template: dict[str, Any]) -> dict[str, Any]:
    return dict(template["Resources"])


def _refs(value: Any) -> set[str]:
    """Logical ids a value refers to (Ref, GetAtt, ${X} in Sub)."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, arg in value.items():
            if key == "Ref" and isinstance(arg, str):
                found.add(arg)
            elif key == "Fn::If" and arg[0] == "DeployWorkers":
                found |= _refs(arg[2])  # the true branch only exists with the fleet
            elif key == "Fn::GetAtt":
                found.add(arg[0] if isinstance(arg, list) else arg.split(".")[0])
            elif key == "Fn::Sub":
                text = arg if isinstance(arg, str) else arg[0]
                local = set() if isinstance(arg, str) else set(arg[1])  # Sub's own variables
                names = {m.split(".")[0] for m in re.findall(r"\$\{([^!}][^}]*)\}", text)}
                found |= names - local
                if not isinstance(arg, str):
                    found |= _refs(arg[1])
            else:
                found |= _refs(arg)
    elif isinstance(value, list):
        for item in value:
            found |= _refs(item)
    return found


def test_every_fleet_resource_is_behind_deploy_workers(resources: dict[str, Any]) -> None:
    for logical_id in FLEET_RESOURCES:
        assert resources[logical_id].get("Condition") == "DeployWorkers", logical_id


def test_the_serverless_half_never_refers_to_the_fleet(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    unconditional = {k: v for k, v in resources.items() if "Condition" not in v}
    for logical_id, resource in unconditional.items():
        assert not (_refs(resource) & FLEET_RESOURCES), logical_id
    for name, output in template["Outputs"].items():
        if _refs(output) & FLEET_RESOURCES:
            assert output.get("Condition") == "DeployWorkers", name


def test_serverless_half_provisions_alone_and_fleet_with_workers_enabled(aws: None) -> None:
    session = boto3.Session(region_name="us-east-1")
    alone = provision(session, stack_name="alone")
    assert "StandbyScheduleGroup" not in alone.resources
    fleet = provision(session, stack_name="fleet", parameters={"DeployWorkers": "true"})
    assert "StandbyScheduleGroup" in fleet.resources


def test_event_rules_match_exactly_the_ec2_events_the_function_parses(
    resources: dict[str, Any],
) -> None:
    events = resources["SpotEventsFunction"]["Properties"]["Events"]
    patterns = {
        name: spec["Properties"]["Pattern"]
        for name, spec in events.items()
        if spec["Type"] == "EventBridgeRule"
    }
    routed = [t for p in patterns.values() for t in p["detail-type"]]
    assert sorted(routed) == sorted(DETAIL_TYPES)
    # An interruptible Capacity Reservation's warning rides the spot warning's rule.
    assert sorted(patterns["InterruptionWarning"]["detail-type"]) == [
        "EC2 Capacity Reservation Instance Interruption Warning",
        "EC2 Interruptible Capacity Reservation Instance Interruption Warning",
        "EC2 Spot Instance Interruption Warning",
    ]
    for pattern in patterns.values():
        assert pattern["source"] == ["aws.ec2"]
    assert patterns["InstanceRunning"]["detail"] == {"state": ["running"]}
    assert events["Reconcile"]["Type"] == "Schedule"


def test_launch_template_requires_imdsv2_with_a_hop_for_containers(
    resources: dict[str, Any],
) -> None:
    data = resources["WorkerLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["MetadataOptions"]["HttpPutResponseHopLimit"] == 2
    # The worker reads spotline:terminates-at through IMDS (termination_tag.py).
    assert data["MetadataOptions"]["InstanceMetadataTags"] == "enabled"
    assert data["ImageId"] == {"Ref": "WorkerAmiId"}


def test_ami_comes_from_the_public_ssm_parameter(template: dict[str, Any]) -> None:
    ami = template["Parameters"]["WorkerAmiId"]
    assert ami["Type"] == "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>"
    assert ami["Default"].startswith("/aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/")


def test_user_data_starts_compose_with_the_worker_image_and_instance_id(
    resources: dict[str, Any],
) -> None:
    user_data = resources["WorkerLaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]
    script, variables = user_data["Fn::Base64"]["Fn::Sub"]
    # The image: WorkerImage in full, else the stack's repository (test_image_repository.py).
    assert "WORKER_IMAGE=${WorkerImageUri}" in script
    assert variables["WorkerImageUri"]["Fn::If"][2] == {"Ref": "WorkerImage"}
    assert "WORKER_ID=$INSTANCE_ID" in script  # the standby's in-flight check relies on it
    assert "WORKER_LIFECYCLE_HOOK=drain" in script
    assert "docker compose up -d" in script
    assert "stop_grace_period: 110s" in script and "init: true" in script
    # Compose's own variables are escaped (${!X}) so that Sub leaves them to compose.
    assert "image: ${!WORKER_IMAGE}" in script


def test_spot_group_mixes_instance_types_with_capacity_rebalance_and_a_drain_hook(
    resources: dict[str, Any], template: dict[str, Any]
) -> None:
    group = resources["WorkerGroup"]["Properties"]
    distribution = group["MixedInstancesPolicy"]["InstancesDistribution"]
    assert distribution["SpotAllocationStrategy"] == "price-capacity-optimized"
    assert distribution["OnDemandPercentageAboveBaseCapacity"] == 0
    assert group["CapacityRebalance"] is True
    overrides = group["MixedInstancesPolicy"]["LaunchTemplate"]["Overrides"]
    assert len(overrides) == 6
    assert template["Parameters"]["WorkerInstanceTypes"]["Type"] == "CommaDelimitedList"
    (hook,) = group["LifecycleHookSpecificationList"]
    assert hook["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_TERMINATING"
    assert hook["LifecycleHookName"] == "drain"
    tags = {t["Key"]: t for t in group["Tags"]}
    assert tags["spotline:role"]["Value"] == "worker" and tags["spotline:role"]["PropagateAtLaunch"]
    assert tags["spotline:stack"]["Value"] == {"Ref": "AWS::StackName"}


def test_scaling_tracks_backlog_per_in_service_instance(resources: dict[str, Any]) -> None:
    config = resources["WorkerBacklogScaling"]["Properties"]["TargetTrackingConfiguration"]
    metrics = {m["Id"]: m for m in config["CustomizedMetricSpecification"]["Metrics"]}
    assert metrics["visible"]["MetricStat"]["Metric"]["MetricName"] == (
        "ApproximateNumberOfMessagesVisible"
    )
    assert metrics["inservice"]["MetricStat"]["Metric"]["MetricName"] == "GroupInServiceInstances"
    (returned,) = [m for m in metrics.values() if m["ReturnData"]]
    assert "visible / inservice" in returned["Expression"]
    collected = resources["WorkerGroup"]["Properties"]["MetricsCollection"][0]["Metrics"]
    assert "GroupInServiceInstances" in collected


def test_standby_is_an_on_demand_twin_tagged_standby(resources: dict[str, Any]) -> None:
    standby = resources["StandbyInstance"]["Properties"]
    assert standby["LaunchTemplate"]["LaunchTemplateId"] == {"Ref": "WorkerLaunchTemplate"}
    tags = {t["Key"]: t["Value"] for t in standby["Tags"]}
    assert tags["spotline:role"] == "standby"
    assert tags["spotline:stack"] == {"Ref": "AWS::StackName"}
    data = resources["WorkerLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert "InstanceMarketOptions" not in data  # the group asks for spot, the standby does not


def test_start_stop_is_confined_to_this_stacks_standby(resources: dict[str, Any]) -> None:
    statements = {
        s["Sid"]: s
        for policy in resources["SpotEventsFunction"]["Properties"]["Policies"]
        for s in policy["Statement"]
    }
    condition = statements["StartStopTheStandby"]["Condition"]["StringEquals"]
    assert condition["aws:ResourceTag/spotline:role"] == "standby"
    assert condition["aws:ResourceTag/spotline:stack"] == {"Ref": "AWS::StackName"}
    tagging = statements["RecordInterruptions"]["Condition"]
    assert tagging["ForAllValues:StringEquals"]["aws:TagKeys"] == [
        INTERRUPTED_TAG,
        TERMINATES_AT_TAG,
    ]


def test_jobs_in_flight_are_a_query_of_the_sparse_index_only(resources: dict[str, Any]) -> None:
    table = resources["JobsTable"]["Properties"]
    (index,) = [i for i in table["GlobalSecondaryIndexes"] if i["IndexName"] == RUNNING_ON_INDEX]
    assert index == {
        "IndexName": RUNNING_ON_INDEX,
        "KeySchema": [{"AttributeName": RUNNING_ON, "KeyType": "HASH"}],
        "Projection": {"ProjectionType": "KEYS_ONLY"},
    }
    assert {"AttributeName": RUNNING_ON, "AttributeType": "S"} in table["AttributeDefinitions"]
    assert table["BillingMode"] == "PAY_PER_REQUEST"  # the index is billed like the table
    statements = [
        s
        for policy in resources["SpotEventsFunction"]["Properties"]["Policies"]
        for s in policy["Statement"]
    ]
    reads = [s for s in statements if any(a.startswith("dynamodb:") for a in _actions(s))]
    assert reads == [
        {
            "Sid": "JobsInFlight",
            "Effect": "Allow",
            "Action": "dynamodb:Query",
            "Resource": {"Fn::Sub": f"${{JobsTable.Arn}}/index/{RUNNING_ON_INDEX}"},
        }
    ]


def _actions(statement: dict[str, Any]) -> list[str]:
    listed = statement["Action"]
    return [listed] if isinstance(listed, str) else list(listed)


def test_worker_profile_can_complete_only_its_groups_lifecycle_action(
    resources: dict[str, Any],
) -> None:
    statements = {
        s["Sid"]: s
        for s in resources["WorkerRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    }
    complete = statements["CompleteLifecycleAction"]
    assert complete["Action"] == "autoscaling:CompleteLifecycleAction"
    assert complete["Resource"]["Fn::Sub"].endswith(
        "autoScalingGroupName/${AWS::StackName}-workers"
    )
    assert resources["WorkerGroup"]["Properties"]["AutoScalingGroupName"] == {
        "Fn::Sub": "${AWS::StackName}-workers"
    }
    metrics = statements["Metrics"]
    assert metrics["Condition"]["StringEquals"]["cloudwatch:namespace"] == "spotline"


# What the fleet's compose file (written by the user data) must share with
# gpu_worker/docker-compose.yml, the one users run and test: the settings behind F1, F2 and F5.
SHARED_WORKER_SETTINGS = (
    "init",
    "restart",
    "mem_limit",
    "memswap_limit",
    "stop_signal",
    "stop_grace_period",
    "healthcheck",
    "deploy",
)


def test_fleet_compose_keeps_the_settings_of_the_worker_compose_file(
    resources: dict[str, Any],
) -> None:
    user_data = resources["WorkerLaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]
    script = user_data["Fn::Base64"]["Fn::Sub"][0]
    fleet_text = script.split("cat > docker-compose.yml <<'COMPOSE'\n", 1)[1].split("COMPOSE\n")[0]
    # Sub turns ${!X} into ${X} for compose; the stack's own references do not matter here.
    fleet = yaml.safe_load(fleet_text.replace("${!", "${"))["services"]["worker"]
    local_text = (REPO_ROOT / "gpu_worker" / "docker-compose.yml").read_text(encoding="utf-8")
    local = yaml.safe_load(local_text)["services"]["worker"]
    for key in SHARED_WORKER_SETTINGS:
        if key in ("mem_limit", "memswap_limit"):  # the fleet sizes them to the host's RAM
            assert fleet[key] == "${WORKER_MEM_LIMIT}", key
            continue
        assert fleet[key] == local[key], f"{key}: fleet {fleet[key]!r} != local {local[key]!r}"


# -- a job's boundaries (DESIGN.md): the stack's policy reaches the fleet, IAM confines S3 ------


def test_the_fleet_runs_with_the_stacks_runtime_cap_and_drill_switch(
    resources: dict[str, Any], template: dict[str, Any]
) -> None:
    user_data = resources["WorkerLaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]
    script = user_data["Fn::Base64"]["Fn::Sub"][0]
    assert "WORKER_MAX_RUNTIME_S=${WorkerMaxRuntimeS}" in script
    assert "WORKER_ENABLE_DRILLS=${EnableDrillAnalyzers}" in script
    enqueue = resources["EnqueueFunction"]["Properties"]["Environment"]["Variables"]
    assert enqueue["MAX_RUNTIME_S"] == {"Ref": "WorkerMaxRuntimeS"}
    assert enqueue["ENABLE_DRILL_ANALYZERS"] == {"Ref": "EnableDrillAnalyzers"}
    assert template["Parameters"]["EnableDrillAnalyzers"]["Default"] == "false"
    cap = template["Parameters"]["WorkerMaxRuntimeS"]
    assert (cap["Default"], cap["MinValue"], cap["MaxValue"]) == (21600, 60, 43200)
    local = yaml.safe_load((REPO_ROOT / "gpu_worker" / "docker-compose.yml").read_text())
    environment = local["services"]["worker"]["environment"]
    assert environment["WORKER_MAX_RUNTIME_S"] == "${WORKER_MAX_RUNTIME_S:-21600}"
    assert environment["WORKER_ENABLE_DRILLS"] == "${WORKER_ENABLE_DRILLS:-false}"


def test_the_worker_reads_inputs_and_checkpoints_and_writes_results_and_checkpoints_only(
    resources: dict[str, Any],
) -> None:
    statements = resources["WorkerRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    granted: dict[str, set[str]] = {}
    for statement in statements:
        for action in _actions(statement):
            if action.startswith("s3:"):
                listed = statement["Resource"]
                for resource in listed if isinstance(listed, list) else [listed]:
                    granted.setdefault(action, set()).add(str(resource))
    bucket = "${DataBucket.Arn}"
    assert granted == {
        # HeadObject is GetObject's permission; gpu_worker/checkpoint.py restores checkpoints.
        "s3:GetObject": {
            str({"Fn::Sub": f"{bucket}/inputs/*"}),
            str({"Fn::Sub": f"{bucket}/checkpoints/*"}),
        },
        "s3:PutObject": {
            str({"Fn::Sub": f"{bucket}/results/*"}),
            str({"Fn::Sub": f"{bucket}/checkpoints/*"}),
        },
        "s3:DeleteObject": {str({"Fn::Sub": f"{bucket}/checkpoints/*"})},
        # So that a missing key is 404 (INVALID_INPUT), not 403 (an infrastructure fault).
        "s3:ListBucket": {str({"Fn::GetAtt": ["DataBucket", "Arn"]})},
    }
