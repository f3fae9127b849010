"""Optional SnapStart: off by default; every function publishes a version and is invoked through
its alias either way, so that turning it on changes nothing but the snapshot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from devstack.cfn import REPO_ROOT, TEMPLATE_PATH, load_template

# Every way something invokes a function outside SAM's own Events (which SAM points at the alias).
INVOKERS = {
    ("JobsApiIntegration", "IntegrationUri"): "EnqueueFunction",
    ("EnqueueFunctionApiPermission", "FunctionName"): "EnqueueFunction",
    ("DeadLetterEventSource", "FunctionName"): "DeadLetterFunction",
    ("WorkerChildFellOverPermission", "FunctionName"): "AlarmFanoutFunction",
    ("WorkerChildFellOverSubscription", "DestinationArn"): "AlarmFanoutFunction",
}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


def test_snapstart_is_a_parameter_off_by_default(template: dict[str, Any]) -> None:
    parameter = template["Parameters"]["EnableSnapStart"]
    assert parameter["Default"] == "false" and parameter["AllowedValues"] == ["true", "false"]
    assert template["Conditions"]["UseSnapStart"] == {
        "Fn::Equals": [{"Ref": "EnableSnapStart"}, "true"]
    }
    function = template["Globals"]["Function"]
    assert function["SnapStart"] == {
        "ApplyOn": {"Fn::If": ["UseSnapStart", "PublishedVersions", "None"]}
    }
    assert function["AutoPublishAlias"] == "live"
    assert function["Runtime"] == "python3.13"  # SnapStart for Python: 3.12 and later


def test_every_invocation_goes_through_the_alias(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    for (resource, prop), function in INVOKERS.items():
        assert resources[resource]["Properties"][prop] == {"Ref": f"{function}.Alias"}, resource
    # Nothing else invokes a function by its unqualified ARN ($LATEST never has a snapshot).
    functions = {k for k, r in resources.items() if r["Type"] == "AWS::Serverless::Function"}
    for name, resource in resources.items():
        if name in functions or resource["Type"] == "AWS::IAM::RolePolicy":
            continue  # the scheduler's invoke policy names FUNCTION and FUNCTION:*
        text = repr(resource.get("Properties", {}))
        for function in functions:
            assert f"['{function}', 'Arn']" not in text, f"{name} invokes {function}'s $LATEST"


@pytest.mark.parametrize("enabled", ["true", "false"])
def test_the_template_lints_clean_both_ways(tmp_path: Path, enabled: str) -> None:
    text = TEMPLATE_PATH.read_text(encoding="utf-8")
    old = '  EnableSnapStart:\n    Type: String\n    Default: "false"\n'
    assert old in text
    copy = tmp_path / "template.yaml"
    copy.write_text(text.replace(old, old.replace('"false"', f'"{enabled}"')), encoding="utf-8")
    done = subprocess.run(
        [str(Path(sys.executable).parent / "cfn-lint"), str(copy)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
