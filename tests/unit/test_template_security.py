"""The template, read as data: encryption everywhere, no public bucket, least privilege, IMDSv2,
no secrets in parameter defaults."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from devstack.cfn import load_template

TEMPLATE = load_template()
RESOURCES: dict[str, dict[str, Any]] = TEMPLATE["Resources"]

# Actions AWS does not support resource-level permissions for: "*" is the only possible Resource.
RESOURCE_STAR_ALLOWED = re.compile(
    r"^(cloudwatch:(PutMetricData|GetMetricData|DescribeAlarms|ListMetrics)"
    r"|ec2:Describe\w*|autoscaling:Describe\w*|xray:(PutTraceSegments|PutTelemetryRecords)"
    r"|logs:(CreateLogGroup|DescribeLogGroups)|scheduler:ListSchedules"
    r"|application-autoscaling:Describe\w*|ecr:GetAuthorizationToken)$"
)


def of_type(*types: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for logical_id, resource in RESOURCES.items():
        if resource["Type"] in types:
            yield logical_id, resource.get("Properties", {})


def statements() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every IAM statement in the template: roles, policies and SAM function inline policies."""
    for logical_id, props in of_type("AWS::IAM::Role"):
        for policy in props.get("Policies", []):
            for statement in policy["PolicyDocument"]["Statement"]:
                yield logical_id, statement
    for logical_id, props in of_type("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
        for statement in props["PolicyDocument"]["Statement"]:
            yield logical_id, statement
    for logical_id, props in of_type("AWS::Serverless::Function"):
        policies = props.get("Policies", [])
        for policy in policies if isinstance(policies, list) else [policies]:
            if isinstance(policy, dict) and "Statement" in policy:
                for statement in policy["Statement"]:
                    yield logical_id, statement


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_every_queue_is_encrypted() -> None:
    queues = list(of_type("AWS::SQS::Queue"))
    assert queues
    for logical_id, props in queues:
        assert props.get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in props, logical_id


def test_every_table_is_encrypted_with_point_in_time_recovery() -> None:
    for logical_id, props in of_type("AWS::DynamoDB::Table"):
        assert props["SSESpecification"]["SSEEnabled"] is True, logical_id
        assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"], logical_id


def test_every_bucket_is_encrypted_and_blocks_public_access() -> None:
    for logical_id, props in of_type("AWS::S3::Bucket"):
        assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"], logical_id
        block = props["PublicAccessBlockConfiguration"]
        assert all(
            block[k] is True
            for k in (
                "BlockPublicAcls",
                "BlockPublicPolicy",
                "IgnorePublicAcls",
                "RestrictPublicBuckets",
            )
        ), logical_id


def test_every_topic_is_encrypted() -> None:
    for logical_id, props in of_type("AWS::SNS::Topic"):
        assert "KmsMasterKeyId" in props, logical_id


def test_no_iam_statement_allows_everything() -> None:
    for logical_id, statement in statements():
        if statement.get("Effect") != "Allow":
            continue
        actions = as_list(statement.get("Action", []))
        assert "*" not in actions, f"{logical_id}: Action '*'"
        if "*" in as_list(statement.get("Resource", [])):
            for action in actions:
                assert not action.endswith(":*"), f"{logical_id}: {action} on '*'"
                assert RESOURCE_STAR_ALLOWED.match(action), (
                    f"{logical_id}: {action} supports resource-level permissions; scope it"
                )


def test_launch_templates_require_imdsv2_with_hop_limit_two() -> None:
    for logical_id, props in of_type("AWS::EC2::LaunchTemplate"):
        options = props["LaunchTemplateData"]["MetadataOptions"]
        assert options["HttpTokens"] == "required", logical_id
        assert int(options["HttpPutResponseHopLimit"]) == 2, logical_id


def _entropy_bits_per_char(text: str) -> float:
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


SECRET_LOOKING = re.compile(
    r"hooks\.slack\.com|discord(app)?\.com/api/webhooks|://[^/@\s]+:[^/@\s]+@|xox[abp]-|AKIA[0-9A-Z]{16}"
)


@pytest.mark.parametrize("name", sorted(TEMPLATE.get("Parameters", {})))
def test_no_secret_in_a_parameter_default(name: str) -> None:
    spec = TEMPLATE["Parameters"][name]
    default = str(spec.get("Default", ""))
    assert not SECRET_LOOKING.search(default), f"{name} default looks like a secret"
    long_random = len(default) >= 24 and _entropy_bits_per_char(default) > 4.0
    assert not (long_random and " " not in default and "/" not in default), (
        f"{name} default looks like a key or token"
    )


def test_every_skipped_checkov_check_says_why() -> None:
    skipped = 0
    for logical_id, resource in RESOURCES.items():
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
            skipped += 1
            assert re.fullmatch(r"CKV2?_AWS_\d+", skip["id"]), logical_id
            assert len(skip.get("comment", "")) >= 20, f"{logical_id}: {skip['id']} has no reason"
    assert skipped, "checkov skips are expected to be documented in the template"
