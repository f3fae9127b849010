"""`sam local invoke` can run against a deployed stack: events/env.json names, per function, the
output behind every variable the template sets from the stack's resources; local_env fills it;
the README's examples use it, with one stack name throughout."""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

import boto3
import pytest

from devstack.cfn import REPO_ROOT, _references, load_template
from spotline_ops import local_env

TEMPLATE = load_template()
ENV = json.loads((REPO_ROOT / "events" / "env.json").read_text(encoding="utf-8"))
README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
STACK = "spotline"


def _functions() -> dict[str, dict[str, Any]]:
    return {
        logical_id: resource["Properties"].get("Environment", {}).get("Variables", {})
        for logical_id, resource in TEMPLATE["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function"
    }


def _from_the_stack(expression: Any) -> bool:
    """Set from a resource or the stack's name: what `sam local` cannot know."""
    refs = _references(expression)
    return any(r in TEMPLATE["Resources"] or r == "AWS::StackName" for r in refs)


def test_env_json_covers_exactly_the_variables_a_local_run_cannot_resolve() -> None:
    expected = {
        function: sorted(name for name, value in variables.items() if _from_the_stack(value))
        for function, variables in _functions().items()
    }
    assert {function: sorted(variables) for function, variables in ENV.items()} == expected


@pytest.mark.parametrize(
    ("function", "variable"),
    [(f, v) for f, variables in ENV.items() for v in variables],
)
def test_each_placeholder_is_the_output_holding_the_templates_own_value(
    function: str, variable: str
) -> None:
    expression = _functions()[function][variable]
    text = ENV[function][variable]
    (name,) = local_env.PLACEHOLDER.findall(text)
    if name == local_env.STACK_NAME:
        if text == "<StackName>":
            assert expression == {"Ref": "AWS::StackName"}
        else:
            assert expression == {"Fn::Sub": text.replace("<StackName>", "${AWS::StackName}")}
        return
    output = TEMPLATE["Outputs"][name]
    assert text == f"<{name}>"
    if "Fn::If" in expression:  # set only under a condition, else empty: so is the output
        condition, value, otherwise = expression["Fn::If"]
        assert (output["Condition"], output["Value"], otherwise) == (condition, value, "")
    else:
        assert output["Value"] == expression


OUTPUTS = {
    "JobsTableName": "spotline-JobsTable-1A2B",
    "JobsQueueUrl": "https://sqs.us-east-1.amazonaws.com/123456789012/spotline-JobsQueue-1A2B",
    "DataBucketName": "spotline-databucket-1a2b",
    "AlarmDeliveriesTableName": "spotline-AlarmDeliveriesTable-1A2B",
    "StandbyScheduleGroupName": "spotline-standby",
    "StandbySchedulerRoleArn": "arn:aws:iam::123456789012:role/spotline-StandbySchedulerRole",
}


def _deploy(outputs: dict[str, str]) -> Any:
    """A stack in moto whose outputs are ``outputs`` (a queue, so that it has a resource)."""
    cloudformation = boto3.client("cloudformation", region_name="us-east-1")
    cloudformation.create_stack(
        StackName=STACK,
        TemplateBody=json.dumps(
            {
                "Resources": {"Queue": {"Type": "AWS::SQS::Queue"}},
                "Outputs": {key: {"Value": value} for key, value in outputs.items()},
            }
        ),
    )
    return cloudformation


def test_local_env_fills_every_variable_from_the_stacks_outputs(
    aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    cloudformation = _deploy(OUTPUTS)

    code = local_env.main(["--stack-name", STACK], cloudformation=cloudformation)

    filled = json.loads(capsys.readouterr().out)
    assert code == 0
    assert filled["EnqueueFunction"]["JOBS_TABLE"] == OUTPUTS["JobsTableName"]
    assert filled["DeadLetterFunction"]["STACK_NAME"] == STACK
    assert filled["AlarmFanoutFunction"]["CHILD_NOTICE_NAME"] == "spotline-worker-child-restarted"
    assert filled["AlarmFanoutFunction"]["ALARM_EMAIL_TOPIC_ARN"] == ""  # HasAlarmEmail false
    assert not local_env.placeholders(filled)


def test_a_missing_output_is_one_line_naming_it(
    aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    cloudformation = _deploy({k: v for k, v in OUTPUTS.items() if k != "AlarmDeliveriesTableName"})

    code = local_env.main(["--stack-name", STACK], cloudformation=cloudformation)

    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert "has no output AlarmDeliveriesTableName" in captured.err


def test_an_unknown_stack_is_one_line(aws: None, capsys: pytest.CaptureFixture[str]) -> None:
    cloudformation = boto3.client("cloudformation", region_name="us-east-1")

    code = local_env.main(["--stack-name", "nowhere"], cloudformation=cloudformation)

    assert code == 2
    assert "stack 'nowhere' not found" in capsys.readouterr().err


def test_readme_local_invokes_use_the_filled_env_file() -> None:
    invokes = re.findall(r"^.*sam local invoke.*$", README, flags=re.MULTILINE)
    runnable = [line for line in invokes if "-e events/" in line]
    assert runnable
    for line in runnable:
        assert "--env-vars events/env.local.json" in line, line
    assert f"spotline_ops.local_env --stack-name {STACK} > events/env.local.json" in README


@pytest.mark.parametrize(
    "command",
    [
        f"sam sync --stack-name {STACK} --watch",
        f"sam logs --stack-name {STACK} --tail",
        f"sam remote invoke --stack-name {STACK}",
    ],
)
def test_readme_shows_the_deployed_stack_commands(command: str) -> None:
    assert command in README


def test_one_stack_name_in_samconfig_and_readme() -> None:
    config = tomllib.loads((REPO_ROOT / "samconfig.toml").read_text(encoding="utf-8"))
    names = {
        section["global"]["parameters"]["stack_name"]
        for section in config.values()
        if isinstance(section, dict) and "global" in section
    }
    assert names == {STACK}
    deployed = re.findall(r"--stack-name[ =]([\w-]+)", README)
    assert deployed
    assert set(deployed) == {STACK}
