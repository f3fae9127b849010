"""A notice key or JWT setting missing at deploy fails `sam deploy` with a message naming the
parameter: the template's Rules, evaluated as CloudFormation evaluates them, and linted."""

from __future__ import annotations

import json
import re

import pytest
from cfnlint.api import ManualArgs, lint

from devstack.cfn import TEMPLATE_PATH, load_template
from spotline.standard_webhooks import generate_key_pair
from spotline_ops import template_rules
from spotline_ops.template_rules import RuleError, failed_assertions

TEMPLATE = load_template()
PUBLIC_KEY = generate_key_pair()[1]
KEYED = {"NoticePublicKey": PUBLIC_KEY}
JWT = {
    **KEYED,
    "ApiAuth": "JWT",
    "JwtIssuer": "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_EXAMPLE",
    "JwtAudience": "client-1,client-2",
}


def named(failed: list[str]) -> list[str]:
    """The parameter each failed assertion names first."""
    return [description.split()[0] for description in failed]


def test_a_deploy_with_every_setting_passes_the_rules() -> None:
    assert failed_assertions(TEMPLATE, KEYED) == []
    assert failed_assertions(TEMPLATE, JWT) == []
    legacy = {**KEYED, "LegacyNoticeSignature": "true"}
    assert failed_assertions(TEMPLATE, legacy) == []  # CallbackSigningSecret has its default


@pytest.mark.parametrize(
    ("overrides", "parameters"),
    [
        ({}, ["NoticePublicKey"]),
        ({**KEYED, "NoticeSigningKeySecret": ""}, ["NoticeSigningKeySecret"]),
        ({**JWT, "JwtIssuer": ""}, ["JwtIssuer"]),
        ({**JWT, "JwtAudience": ""}, ["JwtAudience"]),
        ({**KEYED, "ApiAuth": "JWT"}, ["JwtIssuer", "JwtAudience"]),
        (
            {**KEYED, "LegacyNoticeSignature": "true", "CallbackSigningSecret": ""},
            ["CallbackSigningSecret"],
        ),
    ],
)
def test_a_missing_setting_fails_the_deploy_naming_the_parameter(
    overrides: dict[str, str], parameters: list[str]
) -> None:
    failed = failed_assertions(TEMPLATE, overrides)

    assert named(failed) == parameters
    assert all("is required" in description for description in failed)


def test_iam_auth_needs_no_jwt_settings() -> None:
    assert failed_assertions(TEMPLATE, {**KEYED, "ApiAuth": "IAM", "JwtIssuer": ""}) == []


@pytest.mark.parametrize(
    ("parameter", "value", "allowed"),
    [
        # Fresh keys get fixed ids: every pytest-xdist worker must collect the same test names.
        pytest.param("NoticePublicKey", PUBLIC_KEY, True, id="NoticePublicKey-public-key"),
        ("NoticePublicKey", "", True),  # the pattern lets the Rule say what is missing
        pytest.param(  # the secret key, by mistake
            "NoticePublicKey", generate_key_pair()[0], False, id="NoticePublicKey-secret-key"
        ),
        ("NoticePublicKey", "whpk_c2hvcnQ=", False),
        ("JwtIssuer", "https://issuer.example.com", True),
        ("JwtIssuer", "http://issuer.example.com", False),
        ("NoticeSigningKeySecret", "secretsmanager:spotline/dead-letters/k", True),
        ("NoticeSigningKeySecret", "secretsmanager:prod/k", False),
    ],
)
def test_a_malformed_value_is_refused_by_its_allowed_pattern(
    parameter: str, value: str, allowed: bool
) -> None:
    pattern = TEMPLATE["Parameters"][parameter]["AllowedPattern"]
    assert bool(re.fullmatch(pattern, value)) is allowed


def test_cfn_lint_reads_the_rules_without_a_finding() -> None:
    """cfn-lint checks the Rules' shape (allowed functions, parameter references); a template of
    the Parameters and Rules alone keeps the check to them."""
    just_rules = {
        "Parameters": TEMPLATE["Parameters"],
        "Rules": TEMPLATE["Rules"],
        "Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
    }
    # WorkerAmiId's SSM type needs no lookup here; other warnings would be about unused ones.
    findings = lint(json.dumps(just_rules), config=ManualArgs(regions=["us-east-1"]))
    errors = [f for f in findings if f.rule.id.startswith("E")]
    assert errors == []


def test_the_command_says_what_a_deploy_would_refuse(capsys: pytest.CaptureFixture[str]) -> None:
    refused = template_rules.main([str(TEMPLATE_PATH), "--parameter", "ApiAuth=JWT"])
    out = capsys.readouterr().out
    passed = template_rules.main(
        [str(TEMPLATE_PATH), *[f"--parameter={k}={v}" for k, v in JWT.items()]]
    )

    assert refused == 1
    assert named([line.removeprefix("deploy refused: ") for line in out.splitlines()]) == [
        "NoticePublicKey",
        "JwtIssuer",
        "JwtAudience",
    ]
    assert passed == 0


def test_a_bad_command_line_or_template_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert template_rules.main([str(TEMPLATE_PATH), "--parameter", "no-equals-sign"]) == 2
    assert template_rules.main(["/nonexistent/template.yaml"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("template_rules: ") for line in err)


@pytest.mark.parametrize(
    "rule",
    [
        {"Assertions": [{"Assert": {"Fn::Join": ["", ["a"]]}}]},
        {"Assertions": [{"Assert": {"Fn::Equals": [{"Ref": "NoSuchParameter"}, ""]}}]},
    ],
)
def test_a_rule_outside_what_cloudformation_allows_is_an_error(rule: dict[str, object]) -> None:
    with pytest.raises(RuleError):
        failed_assertions({"Parameters": {}, "Rules": {"R": rule}, "Resources": {}}, {})
