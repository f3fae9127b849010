"""spotline_ops.doctor: each misconfiguration provoked, found, and explained with its fix."""

from __future__ import annotations

import copy
import json
from typing import Any

import boto3
import pytest
from moto import mock_aws

from devstack.cfn import TEMPLATE_PATH
from gpu_worker.config import WorkerConfig
from spotline_ops import doctor
from spotline_ops.doctor import Finding, View, diagnose, load_template

TEMPLATE = load_template(TEMPLATE_PATH.read_text(encoding="utf-8"))


def findings(template: dict[str, Any], **parameters: Any) -> list[Finding]:
    return diagnose(View(template, parameters))


def errors(template: dict[str, Any], check: str, **parameters: Any) -> list[Finding]:
    return [f for f in findings(template, **parameters) if f.is_error and f.check == check]


@pytest.fixture
def template() -> dict[str, Any]:
    return copy.deepcopy(TEMPLATE)


def test_the_projects_template_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert doctor.main([str(TEMPLATE_PATH)]) == 0
    assert "0 error(s)" in capsys.readouterr().out


def test_worker_default_max_attempts_is_the_workers() -> None:
    assert WorkerConfig.max_attempts == doctor.DEFAULT_WORKER_MAX_ATTEMPTS


def test_dlq_retention_not_longer_than_the_source_is_an_error(template: dict[str, Any]) -> None:
    (finding,) = errors(template, "dlq-retention", DeadLetterRetentionSeconds=345600)
    assert finding.resource == "JobsDeadLetterQueue"
    assert "1209600" in finding.fix


def test_a_dlq_redriving_before_its_source_count_is_an_error(template: dict[str, Any]) -> None:
    assert errors(template, "chained-redrive") == []
    (finding,) = errors(template, "chained-redrive", NotificationMaxReceiveCount=5)
    assert finding.resource == "JobsDeadLetterQueue"
    assert "keep that count" in finding.message


def test_max_receive_count_not_above_max_attempts_is_an_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert doctor.main([str(TEMPLATE_PATH), "--parameter", "MaxReceiveCount=3"]) == 1
    out = capsys.readouterr().out
    assert "max-receive-count" in out and "fix: raise maxReceiveCount to at least 6" in out


def test_max_attempts_is_read_from_a_worker_parameter(template: dict[str, Any]) -> None:
    template["Parameters"]["WorkerMaxAttempts"] = {"Type": "Number", "Default": 6}
    (finding,) = errors(template, "max-receive-count")
    assert "parameter WorkerMaxAttempts" in finding.message


def test_a_lambda_consumed_queue_is_not_held_to_the_workers_attempts(
    template: dict[str, Any],
) -> None:
    template["Resources"]["Consumer"] = {
        "Type": "AWS::Serverless::Function",
        "Properties": {
            "Events": {
                "Q": {"Type": "SQS", "Properties": {"Queue": {"Fn::GetAtt": ["JobsQueue", "Arn"]}}}
            }
        },
    }
    assert errors(template, "max-receive-count", MaxReceiveCount=1) == []


def test_visibility_window_shorter_than_three_heartbeats_is_an_error(
    template: dict[str, Any],
) -> None:
    template["Parameters"]["HeartbeatSeconds"] = {"Type": "Number", "Default": 60}
    (finding,) = errors(template, "visibility-heartbeat")
    assert "120 s is shorter than 3x the heartbeat period 60 s" in finding.message
    assert errors(template, "visibility-heartbeat", VisibilityTimeoutSeconds=180) == []


def _launch_template(hop_limit: int | None, tokens: str = "required") -> dict[str, Any]:
    options: dict[str, Any] = {"HttpTokens": tokens, "HttpEndpoint": "enabled"}
    if hop_limit is not None:
        options["HttpPutResponseHopLimit"] = hop_limit
    return {
        "Type": "AWS::EC2::LaunchTemplate",
        "Properties": {
            "LaunchTemplateData": {
                "MetadataOptions": options,
                "UserData": {"Fn::Base64": "#!/bin/bash\ndocker compose up -d worker\n"},
            }
        },
    }


@pytest.mark.parametrize(
    ("hop_limit", "tokens", "expected"),
    [
        (None, "required", ["hop limit 1 with containers"]),
        (1, "required", ["hop limit 1 with containers"]),
        (2, "optional", ["IMDSv2 is not required"]),
        (2, "required", []),
    ],
)
def test_imds_v2_required_with_hop_limit_two_for_containers(
    template: dict[str, Any], hop_limit: int | None, tokens: str, expected: list[str]
) -> None:
    template["Resources"]["WorkerLaunchTemplate"] = _launch_template(hop_limit, tokens)
    found = errors(template, "imds")
    assert len(found) == len(expected)
    for finding, text in zip(found, expected, strict=True):
        assert text in finding.message and finding.resource == "WorkerLaunchTemplate"


def test_no_launch_template_is_not_an_error(template: dict[str, Any]) -> None:
    assert [f for f in findings(template) if f.check == "imds"] == []


def test_alarm_without_actions_is_an_error_and_without_ok_actions_a_warning(
    template: dict[str, Any],
) -> None:
    del template["Resources"]["JobsQueueAgeAlarm"]["Properties"]["AlarmActions"]
    del template["Resources"]["JobsQueueBacklogAlarm"]["Properties"]["OKActions"]
    found = [f for f in findings(template) if f.check == "alarm-actions"]
    assert [(f.resource, f.level) for f in found] == [
        ("JobsQueueAgeAlarm", "error"),
        ("JobsQueueBacklogAlarm", "warning"),
    ]


def test_a_dlq_nobody_consumes_or_watches_is_an_error(template: dict[str, Any]) -> None:
    del template["Resources"]["JobsDeadLetterQueueAlarm"]
    template["Resources"].pop("DeadLetterEventSource", None)  # the dead-letter function's
    (finding,) = errors(template, "dlq-consumer")
    assert finding.resource == "JobsDeadLetterQueue" and "redrive of JobsQueue" in finding.message


def test_a_dlq_with_a_consumer_is_fine(template: dict[str, Any]) -> None:
    del template["Resources"]["JobsDeadLetterQueueAlarm"]
    template["Resources"]["DeadLetterFunction"] = {
        "Type": "AWS::Serverless::Function",
        "Properties": {
            "Events": {
                "Dlq": {
                    "Type": "SQS",
                    "Properties": {"Queue": {"Fn::GetAtt": ["JobsDeadLetterQueue", "Arn"]}},
                }
            }
        },
    }
    assert [f for f in findings(template) if f.resource == "JobsDeadLetterQueue"] == []


@pytest.mark.parametrize(
    ("name", "spec"),
    [
        ("SlackWebhookUrl", {"Type": "String", "Default": ""}),
        ("ApiToken", {"Type": "String", "Default": "abc"}),
        ("Anything", {"Type": "String", "Default": "https://hooks.slack.com/services/T0/B0/x"}),
    ],
)
def test_secrets_in_plain_parameters_are_errors(
    template: dict[str, Any], name: str, spec: dict[str, Any]
) -> None:
    template["Parameters"][name] = spec
    (finding,) = errors(template, "plain-secrets")
    assert finding.resource == f"Parameters/{name}"
    assert "ssm" in finding.fix.lower()


@pytest.mark.parametrize(
    "spec",
    [
        {"Type": "String", "NoEcho": True},
        {"Type": "AWS::SSM::Parameter::Value<String>", "Default": "/spotline/token"},
        {"Type": "String", "AllowedPattern": "^(ssm:/.+|secretsmanager:.+)$"},
    ],
)
def test_secret_references_are_fine(template: dict[str, Any], spec: dict[str, Any]) -> None:
    template["Parameters"]["SigningKeySecret"] = spec
    assert errors(template, "plain-secrets") == []


def test_a_secret_in_a_function_environment_is_an_error(template: dict[str, Any]) -> None:
    variables = template["Resources"]["EnqueueFunction"]["Properties"]["Environment"]["Variables"]
    variables["HOOK"] = "https://discord.com/api/webhooks/1/abc"
    (finding,) = errors(template, "plain-secrets")
    assert finding.resource == "EnqueueFunction/HOOK"


def test_a_function_without_its_alarms_is_an_error(template: dict[str, Any]) -> None:
    template["Resources"]["UnwatchedFunction"] = {"Type": "AWS::Serverless::Function"}
    found = errors(template, "function-alarms")
    assert sorted(f.message for f in found) == [
        "no alarm on its Errors",
        "no alarm on its Throttles",
    ]


def test_the_command_exits_non_zero_on_errors_and_can_print_json(
    tmp_path: Any, template: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    del template["Resources"]["JobsQueueAgeAlarm"]["Properties"]["AlarmActions"]
    path = tmp_path / "template.json"
    path.write_text(json.dumps(template), encoding="utf-8")
    assert doctor.main([str(path), "--json"]) == 1
    printed = json.loads(capsys.readouterr().out)
    assert {"check": "alarm-actions", "level": "error"}.items() <= printed[0].items()


def test_a_deployed_stack_is_checked_with_its_live_values() -> None:
    template = {
        "Resources": {
            "Jobs": {
                "Type": "AWS::SQS::Queue",
                "Properties": {
                    "MessageRetentionPeriod": 345600,
                    "VisibilityTimeout": 120,
                    "RedrivePolicy": {
                        "deadLetterTargetArn": {"Fn::GetAtt": ["Dlq", "Arn"]},
                        "maxReceiveCount": 2,
                    },
                },
            },
            "Dlq": {"Type": "AWS::SQS::Queue", "Properties": {"MessageRetentionPeriod": 3600}},
        }
    }
    with mock_aws():
        session = boto3.Session(region_name="us-east-1")
        session.client("cloudformation").create_stack(
            StackName="prod", TemplateBody=json.dumps(template)
        )
        view = doctor.stack_view("prod", session)
        assert view.live.queue_attributes["Dlq"]["MessageRetentionPeriod"] == "3600"
        checks = sorted((f.check, f.resource) for f in diagnose(view) if f.is_error)
        assert doctor.main(["--stack-name", "prod"], session=session) == 1
    assert checks == [
        ("dlq-consumer", "Dlq"),
        ("dlq-retention", "Dlq"),
        ("max-receive-count", "Jobs"),
    ]


def test_a_sweep_not_waiting_out_the_enqueue_timeout_is_a_warning(
    template: dict[str, Any],
) -> None:
    assert not [f for f in findings(template) if f.check == "stranded-sweep"]
    template["Resources"]["EnqueueFunction"]["Properties"]["Timeout"] = 90
    (warning,) = [
        f for f in findings(template, StrandedJobAfterSeconds=90) if f.check == "stranded-sweep"
    ]
    assert (warning.level, warning.resource) == ("warning", "SweepFunction")
    assert "Timeout 90" in warning.message and "StrandedJobAfterSeconds" in warning.fix


def image_findings(template: dict[str, Any], **parameters: Any) -> list[tuple[str, str]]:
    return [
        (f.level, f.resource) for f in findings(template, **parameters) if f.check == "worker-image"
    ]


def test_the_worker_image_defaults_pass_and_a_fleet_needs_a_tag(template: dict[str, Any]) -> None:
    assert image_findings(template) == []  # no fleet, no tag: nothing to pull yet
    assert image_findings(template, DeployWorkers="true", WorkerImageTag="3f2c1ab") == []
    (found,) = errors(template, "worker-image", DeployWorkers="true")
    assert found.resource == "Parameters/WorkerImageTag"
    assert "WorkerRepository with an empty tag" in found.message


def test_latest_on_the_immutable_repository_is_an_error_and_on_a_mutable_one_a_warning(
    template: dict[str, Any],
) -> None:
    (found,) = errors(template, "worker-image", WorkerImageTag="latest")
    assert "immutable" in found.message and "pushed once" in found.message
    template["Resources"]["WorkerRepository"]["Properties"]["ImageTagMutability"] = "MUTABLE"
    assert image_findings(template, WorkerImageTag="latest") == [
        ("warning", "Parameters/WorkerImageTag")
    ]


@pytest.mark.parametrize(
    ("image", "floats"),
    [
        ("123456789012.dkr.ecr.us-east-1.amazonaws.com/team/worker:3f2c1ab", False),
        ("registry.example.com:5000/worker@sha256:" + "0" * 64, False),
        ("123456789012.dkr.ecr.us-east-1.amazonaws.com/worker:latest", True),
        ("registry.example.com:5000/worker", True),  # the port's colon is no tag
        ("worker", True),
    ],
)
def test_a_worker_image_given_in_full_must_pin_its_image(
    template: dict[str, Any], image: str, floats: bool
) -> None:
    found = image_findings(template, DeployWorkers="true", WorkerImage=image)
    assert found == ([("warning", "Parameters/WorkerImage")] if floats else [])


def test_a_tag_beside_a_full_worker_image_is_ignored_and_said_so(
    template: dict[str, Any],
) -> None:
    image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/worker:v2"
    found = findings(template, WorkerImage=image, WorkerImageTag="v1")
    (ignored,) = [f for f in found if f.check == "worker-image"]
    assert ignored.level == "warning" and "'v1' is ignored" in ignored.message


def test_a_deployed_fleet_whose_tag_was_never_pushed_is_an_error() -> None:
    template = {
        "Parameters": {
            "DeployWorkers": {"Type": "String", "Default": "false"},
            "WorkerImage": {"Type": "String", "Default": ""},
            "WorkerImageTag": {"Type": "String", "Default": ""},
        },
        "Resources": {
            "WorkerRepository": {
                "Type": "AWS::ECR::Repository",
                "Properties": {"RepositoryName": "worker", "ImageTagMutability": "IMMUTABLE"},
            }
        },
    }
    with mock_aws():
        session = boto3.Session(region_name="us-east-1")
        session.client("cloudformation").create_stack(
            StackName="prod",
            TemplateBody=json.dumps(template),
            Parameters=[
                {"ParameterKey": "DeployWorkers", "ParameterValue": "true"},
                {"ParameterKey": "WorkerImageTag", "ParameterValue": "v2"},
            ],
        )
        ecr = session.client("ecr")
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {},
                "layers": [],
            }
        )
        ecr.put_image(repositoryName="worker", imageManifest=manifest, imageTag="v1")
        missing = [f for f in diagnose(doctor.stack_view("prod", session)) if f.is_error]
        ecr.put_image(repositoryName="worker", imageManifest=manifest, imageTag="v2")
        pushed = [f for f in diagnose(doctor.stack_view("prod", session)) if f.is_error]
    assert [(f.check, f.resource) for f in missing] == [("worker-image", "WorkerRepository")]
    assert "no image tagged 'v2'" in missing[0].message
    assert pushed == []
