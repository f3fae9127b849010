"""Read template.yaml and create its stateful resources in moto with the template's own settings.

devstack and the tests never restate a queue's retention or a table's key: they provision from
the template, so a test breaks when the template drifts.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spotline_ops.doctor import load_template as parse_template

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_PATH = REPO_ROOT / "template.yaml"
ACCOUNT_ID = "123456789012"


def load_template(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    """The template as plain data, short-form tags turned into their long form (a fresh copy:
    callers may change it; the parse itself is cached, since every test stack starts here)."""
    return copy.deepcopy(_parsed_template(path, path.stat().st_mtime_ns))


@functools.lru_cache(maxsize=8)
def _parsed_template(path: Path, mtime_ns: int) -> dict[str, Any]:
    # The same reader the doctor uses: one parser of short-form tags for the whole project.
    return parse_template(path.read_text(encoding="utf-8"))


class Unresolved(LookupError):
    """A reference to a resource that is not created yet (or never is, in devstack)."""


@dataclass
class Physical:
    type: str
    ref: str
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass
class Stack:
    """What devstack created: logical id -> physical resource, plus resolved parameters."""

    name: str
    region: str
    template: dict[str, Any]
    parameters: dict[str, Any]
    resources: dict[str, Physical] = field(default_factory=dict)

    def ref(self, logical_id: str) -> str:
        return self.resources[logical_id].ref

    def attr(self, logical_id: str, attribute: str) -> str:
        return self.resources[logical_id].attributes[attribute]

    # -- intrinsic functions -------------------------------------------------------------------

    def condition(self, name: str) -> bool:
        return bool(self.resolve(self.template.get("Conditions", {})[name]))

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.resolve(v) for v in value if not _is_no_value(v)]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, arg),) = value.items()
            if key == "Ref":
                return self._ref(arg)
            if key == "Fn::GetAtt":
                logical, attribute = arg
                if logical not in self.resources:
                    raise Unresolved(logical)
                return self.resources[logical].attributes[attribute]
            if key == "Fn::Sub":
                return self._sub(arg)
            if key == "Fn::Join":
                sep, items = arg
                return sep.join(str(x) for x in self.resolve(items))
            if key == "Fn::Select":
                index, items = arg
                return self.resolve(items)[int(self.resolve(index))]
            if key == "Fn::Split":
                sep, text = arg
                return str(self.resolve(text)).split(sep)
            if key == "Fn::If":
                name, when_true, when_false = arg
                return self.resolve(when_true if self.condition(name) else when_false)
            if key == "Fn::Equals":
                left, right = self.resolve(arg)
                return str(left) == str(right)
            if key == "Fn::Not":
                return not self.resolve(arg[0])
            if key == "Fn::And":
                return all(self.resolve(x) for x in arg)
            if key == "Fn::Or":
                return any(self.resolve(x) for x in arg)
            if key == "Condition":
                return self.condition(arg)
        return {k: self.resolve(v) for k, v in value.items() if not _is_no_value(v)}

    def _ref(self, name: str) -> Any:
        pseudo = {
            "AWS::Region": self.region,
            "AWS::AccountId": ACCOUNT_ID,
            "AWS::StackName": self.name,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
        }
        if name in pseudo:
            return pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        if name in self.resources:
            return self.resources[name].ref
        raise Unresolved(name)

    def _sub(self, arg: Any) -> str:
        text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
        resolved_vars = {k: self.resolve(v) for k, v in variables.items()}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in resolved_vars:
                return str(resolved_vars[name])
            if "." in name:
                logical, attribute = name.split(".", 1)
                return str(self.resolve({"Fn::GetAtt": [logical, attribute]}))
            return str(self._ref(name))

        return re.sub(r"\$\{([^}]+)\}", replace, text)


def _is_no_value(value: Any) -> bool:
    return isinstance(value, dict) and value == {"Ref": "AWS::NoValue"}


def parameter_defaults(
    template: dict[str, Any], overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, spec in template.get("Parameters", {}).items():
        value = (overrides or {}).get(name, spec.get("Default"))
        if spec.get("Type") == "Number" and value is not None:
            value = int(value) if float(value) == int(float(value)) else float(value)
        elif spec.get("Type") == "CommaDelimitedList" and isinstance(value, str):
            value = [v.strip() for v in value.split(",")] if value else []
        values[name] = value
    return values


# -- provisioners, by resource type -----------------------------------------------------------

Provisioner = Callable[[Any, Stack, str, dict[str, Any]], Physical]

_SQS_ATTRIBUTES = [
    "VisibilityTimeout",
    "MessageRetentionPeriod",
    "MaximumMessageSize",
    "ReceiveMessageWaitTimeSeconds",
    "DelaySeconds",
    "KmsMasterKeyId",
    "KmsDataKeyReusePeriodSeconds",
    "SqsManagedSseEnabled",
]


def _client(session: Any, service: str) -> Any:
    """One client per session and service: creating a boto3 client costs tens of ms, and a
    stack has dozens of resources."""
    cache = session.__dict__.setdefault("_devstack_clients", {})
    if service not in cache:
        cache[service] = session.client(service)
    return cache[service]


def _physical_name(stack: Stack, logical_id: str) -> str:
    return f"{stack.name}-{logical_id}"


def provision_queue(session: Any, stack: Stack, logical_id: str, props: dict[str, Any]) -> Physical:
    sqs = _client(session, "sqs")
    attributes = {k: _attr(props[k]) for k in _SQS_ATTRIBUTES if k in props}
    if "RedrivePolicy" in props:
        attributes["RedrivePolicy"] = json.dumps(props["RedrivePolicy"])
    name = props.get("QueueName") or _physical_name(stack, logical_id)
    url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    return Physical("AWS::SQS::Queue", url, {"Arn": arn, "QueueName": name, "QueueUrl": url})


def _attr(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def provision_table(session: Any, stack: Stack, logical_id: str, props: dict[str, Any]) -> Physical:
    dynamodb = _client(session, "dynamodb")
    name = props.get("TableName") or _physical_name(stack, logical_id)
    kwargs: dict[str, Any] = {
        "TableName": name,
        "KeySchema": props["KeySchema"],
        "AttributeDefinitions": props["AttributeDefinitions"],
        "BillingMode": props.get("BillingMode", "PROVISIONED"),
    }
    if "ProvisionedThroughput" in props:
        kwargs["ProvisionedThroughput"] = props["ProvisionedThroughput"]
    if props.get("SSESpecification", {}).get("SSEEnabled"):
        kwargs["SSESpecification"] = {"Enabled": True}
    for key in ("GlobalSecondaryIndexes", "StreamSpecification"):
        if key in props:
            kwargs[key] = props[key]
    arn = dynamodb.create_table(**kwargs)["TableDescription"]["TableArn"]
    pitr = props.get("PointInTimeRecoverySpecification", {})
    if pitr.get("PointInTimeRecoveryEnabled"):
        dynamodb.update_continuous_backups(
            TableName=name,
            PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True},
        )
    ttl = props.get("TimeToLiveSpecification")
    if ttl and ttl.get("Enabled"):
        dynamodb.update_time_to_live(
            TableName=name,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl["AttributeName"]},
        )
    return Physical("AWS::DynamoDB::Table", name, {"Arn": arn})


def _lifecycle_rule(rule: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"ID": rule.get("Id", "rule"), "Status": rule["Status"]}
    out["Filter"] = {"Prefix": rule.get("Prefix", "")}
    if "ExpirationInDays" in rule:
        out["Expiration"] = {"Days": int(rule["ExpirationInDays"])}
    if "NoncurrentVersionExpiration" in rule:
        out["NoncurrentVersionExpiration"] = {
            "NoncurrentDays": int(rule["NoncurrentVersionExpiration"]["NoncurrentDays"])
        }
    if "AbortIncompleteMultipartUpload" in rule:
        out["AbortIncompleteMultipartUpload"] = {
            "DaysAfterInitiation": int(
                rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"]
            )
        }
    return out


def provision_bucket(
    session: Any, stack: Stack, logical_id: str, props: dict[str, Any]
) -> Physical:
    s3 = _client(session, "s3")
    name = props.get("BucketName") or _physical_name(stack, logical_id).lower()
    if stack.region == "us-east-1":
        s3.create_bucket(Bucket=name)
    else:
        s3.create_bucket(
            Bucket=name, CreateBucketConfiguration={"LocationConstraint": stack.region}
        )
    if "PublicAccessBlockConfiguration" in props:
        s3.put_public_access_block(
            Bucket=name, PublicAccessBlockConfiguration=props["PublicAccessBlockConfiguration"]
        )
    if "BucketEncryption" in props:
        s3.put_bucket_encryption(
            Bucket=name,
            ServerSideEncryptionConfiguration={
                "Rules": [
                    {
                        # CloudFormation and the S3 API name this key differently.
                        "ApplyServerSideEncryptionByDefault": rule["ServerSideEncryptionByDefault"],
                        **(
                            {"BucketKeyEnabled": rule["BucketKeyEnabled"]}
                            if "BucketKeyEnabled" in rule
                            else {}
                        ),
                    }
                    for rule in props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
                ]
            },
        )
    if "VersioningConfiguration" in props:
        s3.put_bucket_versioning(
            Bucket=name, VersioningConfiguration=props["VersioningConfiguration"]
        )
    if "LifecycleConfiguration" in props:
        s3.put_bucket_lifecycle_configuration(
            Bucket=name,
            LifecycleConfiguration={
                "Rules": [_lifecycle_rule(r) for r in props["LifecycleConfiguration"]["Rules"]]
            },
        )
    return Physical("AWS::S3::Bucket", name, {"Arn": f"arn:aws:s3:::{name}"})


def provision_topic(session: Any, stack: Stack, logical_id: str, props: dict[str, Any]) -> Physical:
    sns = _client(session, "sns")
    name = props.get("TopicName") or _physical_name(stack, logical_id)
    attributes = {"KmsMasterKeyId": props["KmsMasterKeyId"]} if "KmsMasterKeyId" in props else {}
    arn = sns.create_topic(Name=name, Attributes=attributes)["TopicArn"]
    return Physical("AWS::SNS::Topic", arn, {"TopicArn": arn, "TopicName": name})


def provision_key(session: Any, stack: Stack, logical_id: str, props: dict[str, Any]) -> Physical:
    kms = _client(session, "kms")
    kwargs: dict[str, Any] = {"Description": props.get("Description", logical_id)}
    if "KeyPolicy" in props:
        kwargs["Policy"] = json.dumps(props["KeyPolicy"])
    meta = kms.create_key(**kwargs)["KeyMetadata"]
    return Physical("AWS::KMS::Key", meta["KeyId"], {"Arn": meta["Arn"], "KeyId": meta["KeyId"]})


_ALARM_KEYS = [
    "AlarmDescription",
    "ActionsEnabled",
    "OKActions",
    "AlarmActions",
    "InsufficientDataActions",
    "MetricName",
    "Namespace",
    "Statistic",
    "ExtendedStatistic",
    "Dimensions",
    "Unit",
    "ComparisonOperator",
    "TreatMissingData",
    "EvaluateLowSampleCountPercentile",
    "ThresholdMetricId",
    "Tags",
]


def _metric_query(query: dict[str, Any]) -> dict[str, Any]:
    out = dict(query)
    if "MetricStat" in out:
        out["MetricStat"] = {**out["MetricStat"], "Period": int(out["MetricStat"]["Period"])}
    return out


def provision_alarm(session: Any, stack: Stack, logical_id: str, props: dict[str, Any]) -> Physical:
    """A metric alarm with the template's own name, metric, threshold and actions (moto stores
    it and lets devstack set its state; it never evaluates it or fires its actions)."""
    cloudwatch = _client(session, "cloudwatch")
    name = props.get("AlarmName") or _physical_name(stack, logical_id)
    kwargs: dict[str, Any] = {k: props[k] for k in _ALARM_KEYS if k in props}
    for key in ("Period", "EvaluationPeriods", "DatapointsToAlarm"):
        if key in props:
            kwargs[key] = int(props[key])
    if "Threshold" in props:
        kwargs["Threshold"] = float(props["Threshold"])
    if "Metrics" in props:
        kwargs["Metrics"] = [_metric_query(q) for q in props["Metrics"]]
    cloudwatch.put_metric_alarm(AlarmName=name, **kwargs)
    arn = cloudwatch.describe_alarms(AlarmNames=[name])["MetricAlarms"][0]["AlarmArn"]
    return Physical("AWS::CloudWatch::Alarm", name, {"Arn": arn})


def provision_schedule_group(
    session: Any, stack: Stack, logical_id: str, props: dict[str, Any]
) -> Physical:
    name = props.get("Name") or _physical_name(stack, logical_id)
    arn = _client(session, "scheduler").create_schedule_group(Name=name)["ScheduleGroupArn"]
    return Physical("AWS::Scheduler::ScheduleGroup", name, {"Arn": arn})


def provision_role(session: Any, stack: Stack, logical_id: str, props: dict[str, Any]) -> Physical:
    name = props.get("RoleName") or _physical_name(stack, logical_id)
    role = _client(session, "iam").create_role(
        RoleName=name, AssumeRolePolicyDocument=json.dumps(props["AssumeRolePolicyDocument"])
    )["Role"]
    return Physical("AWS::IAM::Role", name, {"Arn": role["Arn"], "RoleId": role["RoleId"]})


def provision_log_group(
    session: Any, stack: Stack, logical_id: str, props: dict[str, Any]
) -> Physical:
    logs = _client(session, "logs")
    name = props.get("LogGroupName") or _physical_name(stack, logical_id)
    logs.create_log_group(logGroupName=name)
    if "RetentionInDays" in props:
        logs.put_retention_policy(logGroupName=name, retentionInDays=int(props["RetentionInDays"]))
    (group,) = logs.describe_log_groups(logGroupNamePrefix=name)["logGroups"]
    return Physical("AWS::Logs::LogGroup", name, {"Arn": group["arn"]})


PROVISIONERS: dict[str, Provisioner] = {
    "AWS::SQS::Queue": provision_queue,
    "AWS::DynamoDB::Table": provision_table,
    "AWS::S3::Bucket": provision_bucket,
    "AWS::SNS::Topic": provision_topic,
    "AWS::KMS::Key": provision_key,
    "AWS::CloudWatch::Alarm": provision_alarm,
    "AWS::Scheduler::ScheduleGroup": provision_schedule_group,
    "AWS::IAM::Role": provision_role,
    "AWS::Logs::LogGroup": provision_log_group,
}


def _references(value: Any) -> set[str]:
    """Logical ids a resource's properties refer to (Ref, GetAtt, ${X} / ${X.Attr} in Sub)."""
    found: set[str] = set()
    if isinstance(value, list):
        for item in value:
            found |= _references(item)
    elif isinstance(value, dict):
        for key, arg in value.items():
            if key == "Ref" and isinstance(arg, str):
                found.add(arg)
            elif key == "Fn::GetAtt":
                found.add(arg[0] if isinstance(arg, list) else str(arg).split(".")[0])
            elif key == "Fn::Sub":
                text = arg if isinstance(arg, str) else arg[0]
                names = re.findall(r"\$\{([^!}][^}.]*)", text)
                local = set(arg[1]) if isinstance(arg, list) else set()
                found |= {n for n in names if n not in local}
                if isinstance(arg, list):
                    found |= _references(arg[1])
            else:
                found |= _references(arg)
    return found


def provision(
    session: Any,
    *,
    stack_name: str = "spotline-dev",
    region: str = "us-east-1",
    parameters: dict[str, Any] | None = None,
    template: dict[str, Any] | None = None,
    types: set[str] | None = None,
) -> Stack:
    """Create every resource of a supported type, in dependency order, from the template."""
    template = template or load_template()
    stack = Stack(stack_name, region, template, parameter_defaults(template, parameters))
    pending = {
        logical_id: resource
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] in PROVISIONERS
        and (types is None or resource["Type"] in types)
        and ("Condition" not in resource or stack.condition(resource["Condition"]))
    }
    # A resource that refers to one devstack never creates (a function, an Auto Scaling group:
    # e.g. a function's errors alarm) is left out rather than failing the whole stack.
    while True:
        missing = {
            logical_id
            for logical_id, resource in pending.items()
            if any(
                ref not in pending and ref not in stack.parameters and not ref.startswith("AWS::")
                for ref in _references(resource.get("Properties", {}))
            )
        }
        if not missing:
            break
        for logical_id in missing:
            del pending[logical_id]
    while pending:
        progressed = False
        for logical_id, resource in list(pending.items()):
            try:
                props = stack.resolve(resource.get("Properties", {}))
            except Unresolved:
                continue
            stack.resources[logical_id] = PROVISIONERS[resource["Type"]](
                session, stack, logical_id, props
            )
            del pending[logical_id]
            progressed = True
        if not progressed:
            raise Unresolved(f"cannot resolve references of {sorted(pending)}")
    return stack


def function_environment(stack: Stack, logical_id: str) -> dict[str, str]:
    """A function's environment as the template defines it (Globals + its own), resolved."""
    template = stack.template
    globals_env = template.get("Globals", {}).get("Function", {}).get("Environment", {})
    own_env = template["Resources"][logical_id].get("Properties", {}).get("Environment", {})
    variables = {**globals_env.get("Variables", {}), **own_env.get("Variables", {})}
    out = {}
    for key, value in variables.items():
        try:
            out[key] = str(stack.resolve(value))
        except Unresolved:
            continue  # a resource devstack does not create (e.g. an API); not needed locally
    return out
