"""The worker image's repository in template.yaml: scanned, immutable, encrypted, pruned; the image
the fleet pulls by default; the output ``make push`` reads; a pull-only worker role; and the
user data's registry login, run in bash against fake aws and docker."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from devstack.cfn import ACCOUNT_ID, Physical, Stack, load_template, parameter_defaults
from tests.unit.cli_fakes import FakeTools

TEMPLATE = load_template()
RESOURCES: dict[str, Any] = TEMPLATE["Resources"]
REPOSITORY = RESOURCES["WorkerRepository"]
REGISTRY = f"{ACCOUNT_ID}.dkr.ecr.us-east-1.amazonaws.com"
PULL_ACTIONS = {
    "ecr:BatchGetImage",
    "ecr:GetDownloadUrlForLayer",
    "ecr:BatchCheckLayerAvailability",
}


def stack(**parameters: Any) -> Stack:
    """The template's intrinsics over a stack whose repository exists (as CloudFormation names
    it: lower case, generated; RepositoryUri is REGISTRY/NAME)."""
    resolved = Stack(
        "spotline-prod", "us-east-1", TEMPLATE, parameter_defaults(TEMPLATE, parameters)
    )
    name = "spotline-prod-workerrepository-x1y2"
    resolved.resources["WorkerRepository"] = Physical(
        "AWS::ECR::Repository",
        name,
        {
            "Arn": f"arn:aws:ecr:us-east-1:{ACCOUNT_ID}:repository/{name}",
            "RepositoryUri": f"{REGISTRY}/{name}",
        },
    )
    return resolved


def user_data() -> tuple[str, dict[str, Any]]:
    data = RESOURCES["WorkerLaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]
    script, variables = data["Fn::Base64"]["Fn::Sub"]
    return script, variables


def worker_statements() -> dict[str, dict[str, Any]]:
    policy = RESOURCES["WorkerRole"]["Properties"]["Policies"][0]["PolicyDocument"]
    return {statement["Sid"]: statement for statement in policy["Statement"]}


def _actions(statement: dict[str, Any]) -> set[str]:
    listed = statement["Action"]
    return {listed} if isinstance(listed, str) else set(listed)


def test_the_repository_scans_on_push_keeps_tags_immutable_and_is_encrypted() -> None:
    props = REPOSITORY["Properties"]
    assert props["ImageScanningConfiguration"] == {"ScanOnPush": True}
    assert props["ImageTagMutability"] == "IMMUTABLE"
    assert props["EncryptionConfiguration"] == {"EncryptionType": "KMS"}  # AWS managed key
    assert "RepositoryPolicyText" not in props  # nobody outside the account pulls
    # The serverless half holds it: the image is pushed before the fleet is deployed.
    assert "Condition" not in REPOSITORY
    assert (REPOSITORY["DeletionPolicy"], REPOSITORY["UpdateReplacePolicy"]) == ("Retain", "Retain")


def _lifecycle(**parameters: Any) -> list[dict[str, Any]]:
    text = stack(**parameters).resolve(REPOSITORY["Properties"]["LifecyclePolicy"])
    rules: list[dict[str, Any]] = json.loads(text["LifecyclePolicyText"])["rules"]
    return rules


def test_the_lifecycle_drops_untagged_images_after_a_day_and_keeps_the_newest_tagged() -> None:
    rules = _lifecycle()
    untagged, newest = sorted(rules, key=lambda rule: rule["rulePriority"])
    assert untagged["selection"] == {
        "tagStatus": "untagged",
        "countType": "sinceImagePushed",
        "countUnit": "days",
        "countNumber": 1,
    }
    kept = TEMPLATE["Parameters"]["WorkerImagesKept"]["Default"]
    assert newest["selection"] == {
        "tagStatus": "any",
        "countType": "imageCountMoreThan",
        "countNumber": kept,
    }
    assert {rule["action"]["type"] for rule in rules} == {"expire"}
    assert _lifecycle(WorkerImagesKept="7")[1]["selection"]["countNumber"] == 7


def test_the_lifecycle_obeys_ecrs_rule_constraints() -> None:
    rules = _lifecycle()
    priorities = [rule["rulePriority"] for rule in rules]
    assert len(set(priorities)) == len(priorities)
    for rule in rules:
        selection = rule["selection"]
        lists = {"tagPrefixList", "tagPatternList"} & set(selection)
        if selection["tagStatus"] == "tagged":
            assert lists, rule  # ECR requires a prefix or pattern list for tagged
        else:
            assert not lists, rule
        if selection["tagStatus"] == "any":  # ECR evaluates an "any" rule last
            assert rule["rulePriority"] == max(priorities)
        assert isinstance(selection["countNumber"], int) and selection["countNumber"] >= 1


def test_an_empty_worker_image_defaults_to_the_repository_at_the_tag() -> None:
    _, variables = user_data()
    default = stack(WorkerImageTag="3f2c1ab").resolve(variables)
    assert default["WorkerImageUri"] == f"{REGISTRY}/spotline-prod-workerrepository-x1y2:3f2c1ab"
    assert default["AccountRegistry"] == REGISTRY
    given = "ghcr.io/acme/worker:v4"
    assert (
        stack(WorkerImage=given, WorkerImageTag="x").resolve(variables)["WorkerImageUri"] == given
    )
    assert TEMPLATE["Conditions"]["UseWorkerRepository"] == {
        "Fn::Equals": [{"Ref": "WorkerImage"}, ""]
    }
    assert TEMPLATE["Parameters"]["WorkerImage"]["Default"] == ""


def test_the_outputs_give_the_repository_and_the_image_the_fleet_runs() -> None:
    outputs = TEMPLATE["Outputs"]
    assert outputs["WorkerRepositoryUri"]["Value"] == {
        "Fn::GetAtt": ["WorkerRepository", "RepositoryUri"]
    }
    assert "Condition" not in outputs["WorkerRepositoryUri"]  # make push needs it before a fleet
    resolved = stack(WorkerImageTag="3f2c1ab")
    uri = resolved.resolve(outputs["WorkerRepositoryUri"]["Value"])
    image = resolved.resolve(outputs["WorkerImageUri"]["Value"])
    assert image == f"{uri}:3f2c1ab"
    assert image == resolved.resolve(user_data()[1])["WorkerImageUri"]  # what the fleet pulls
    assert outputs["WorkerImageUri"]["Condition"] == "DeployWorkers"


@pytest.mark.parametrize(
    ("tag", "accepted"),
    [
        ("3f2c1ab", True),
        ("9e8d7c6-3f2c1ab-dirty-20260105143000", True),
        ("v1.2.3_rc1", True),
        ("", True),  # no fleet yet
        ("-leading-dash", False),
        (".leading-dot", False),
        ("with space", False),
        ("name:tag", False),
        ("x" * 129, False),
    ],
)
def test_the_tag_parameter_takes_docker_tags_only(tag: str, accepted: bool) -> None:
    pattern = TEMPLATE["Parameters"]["WorkerImageTag"]["AllowedPattern"]
    assert bool(re.fullmatch(pattern, tag)) is accepted


def test_the_workers_may_pull_from_the_stacks_repository_and_push_nowhere() -> None:
    statements = worker_statements()
    pull = statements["PullWorkerImage"]
    assert _actions(pull) == PULL_ACTIONS
    when, default, given = pull["Resource"]["Fn::If"]
    assert when == "UseWorkerRepository"
    assert default == {"Fn::GetAtt": ["WorkerRepository", "Arn"]}
    assert given["Fn::Sub"].endswith(":repository/*")  # a full WorkerImage: this account only
    assert given["Fn::Sub"].startswith(
        "arn:${AWS::Partition}:ecr:${AWS::Region}:${AWS::AccountId}:"
    )
    assert _actions(statements["RegistryLogin"]) == {"ecr:GetAuthorizationToken"}
    ecr_statements = {
        sid for sid, s in statements.items() if any(a.startswith("ecr:") for a in _actions(s))
    }
    assert ecr_statements == {"PullWorkerImage", "RegistryLogin"}


def _login_fragment(**parameters: Any) -> str:
    """The user data's registry login, resolved as CloudFormation would for these parameters."""
    script, variables = user_data()
    start = script.index('REGISTRY="$(echo')
    end = script.index("\nfi\n", start) + len("\nfi\n")
    resolved: str = stack(**parameters).resolve({"Fn::Sub": [script[start:end], variables]})
    return "set -euo pipefail\n" + resolved


@pytest.fixture
def host(tmp_path: Path) -> FakeTools:
    fakes = FakeTools(tmp_path, names=("aws", "docker", "sleep"))
    fakes.answer("aws", "ecr", "get-login-password", stdout="token\n")
    return fakes


def test_the_fleet_logs_in_to_the_stacks_registry_before_pulling(
    host: FakeTools, tmp_path: Path
) -> None:
    done = host.run(["bash", "-c", _login_fragment(WorkerImageTag="3f2c1ab")], cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    calls = host.calls()
    assert [call["argv"] for call in calls] == [
        ["aws", "ecr", "get-login-password", "--region", "us-east-1"],
        ["docker", "login", "--username", "AWS", "--password-stdin", REGISTRY],
    ]
    assert calls[1]["stdin"] == "token\n"


@pytest.mark.parametrize(
    "image",
    [
        "ghcr.io/acme/worker:v4",
        # Another account's registry: the role may pull from this account's only.
        "987654321098.dkr.ecr.us-east-1.amazonaws.com/worker:v4",
    ],
)
def test_an_image_outside_the_accounts_registry_gets_no_login(
    host: FakeTools, tmp_path: Path, image: str
) -> None:
    fragment = _login_fragment(WorkerImage=image)
    done = host.run(["bash", "-c", fragment], cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert host.calls() == []


def test_a_failing_login_is_retried_and_ends_the_script_after_five_tries(
    host: FakeTools, tmp_path: Path
) -> None:
    host.answer("docker", "login", exit_code=1, times=2, first=True)
    recovered = host.run(["bash", "-c", _login_fragment(WorkerImageTag="v1")], cwd=tmp_path)
    assert recovered.returncode == 0, recovered.stderr
    argvs = host.argvs()
    assert [a[1] for a in argvs if a[0] == "docker"] == ["login"] * 3
    assert [a for a in argvs if a[0] == "sleep"] == [["sleep", "5"], ["sleep", "10"]]

    host.log.unlink()
    host.answer("docker", "login", exit_code=1, first=True)
    failed = host.run(["bash", "-c", _login_fragment(WorkerImageTag="v1")], cwd=tmp_path)
    assert failed.returncode == 1  # compose never starts with an image it cannot pull
    assert [a[0] for a in host.argvs()].count("docker") == 5


@pytest.mark.parametrize(("start_on_rebalance", "action"), [("true", "keep"), ("false", "drain")])
def test_the_worker_serves_through_a_recommendation_only_when_the_standby_starts_on_it(
    start_on_rebalance: str, action: str
) -> None:
    # StandbyStartOnRebalance: the standby is on its way at the recommendation, so the worker
    # keeps taking jobs until the warning (then works through it); without it, it drains.
    script, variables = user_data()
    assert "WORKER_REBALANCE_ACTION=${RebalanceAction}" in script
    resolved = stack(StandbyStartOnRebalance=start_on_rebalance).resolve(variables)
    assert resolved["RebalanceAction"] == action
