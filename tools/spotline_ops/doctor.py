"""``python -m spotline_ops.doctor [template.yaml] [--stack-name NAME]``: the misconfigurations that
bite in practice, each with its fix.

Offline it reads a template (parameter defaults, or ``--parameter Name=Value`` overrides); with
``--stack-name`` it reads the deployed stack with read-only calls (the processed template, the
stack's parameter values, and the live attributes of its queues, alarms and launch templates).
Exit status 1 when any finding is an error; 2, with one line on stderr, when an input cannot be used
(a missing file, bad YAML, an unknown ``--parameter``, a stack AWS cannot be asked about).

Checks: DLQ retention not longer than the source's; ``maxReceiveCount`` not above the worker's
``MaxAttempts``; a visibility window shorter than 3x the heartbeat period; IMDSv2 not required or a
hop limit below 2 with containers; a worker image that cannot be pulled or floats (no tag,
``latest``, a tag the repository does not hold); an alarm without actions; a DLQ that nobody
consumes or watches; secrets in plain parameters; a function without its errors/throttles alarms;
dashboard metrics that nothing emits.
"""

# Length (about 850 lines): one independent function per misconfiguration, each with its fix text
# beside it; a reader looks up one check, never reads the module through.

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from spotline.catalog import Catalog
from spotline.metrics_names import FUNCTION_METRICS, NAMESPACE, WORKER_METRICS
from spotline_ops.doctor_catalog import check_catalog
from spotline_ops.doctor_inputs import (
    AWS_ERRORS,
    InputError,
    aws_failure,
    parameter_overrides,
    read_template,
)
from spotline_ops.doctor_tiers import check_tiers, condition, tiers_deployed

CATALOG_IN_TREE = "functions/spotline/catalog.json"

# gpu_worker.config.WorkerConfig.max_attempts (a test keeps the two equal).
DEFAULT_WORKER_MAX_ATTEMPTS = 3
# gpu_worker.prefetch.PREFETCH_RELEASE_ALLOWANCE: receives of one message that a prefetching
# worker may hand back unstarted (it stopped, drained or died holding it), never attempts.
PREFETCH_RELEASE_ALLOWANCE = 2
DEFAULT_RETENTION_S = 345600
DEFAULT_VISIBILITY_S = 30
FUNCTION_TYPES = ("AWS::Serverless::Function", "AWS::Lambda::Function")
ALARM_TYPES = ("AWS::CloudWatch::Alarm", "AWS::CloudWatch::CompositeAlarm")
SECRET_NAME = re.compile(r"secret|password|passwd|token|api_?key|webhook|signing|private", re.I)
SECRET_VALUE = re.compile(
    r"hooks\.slack\.com/|discord(app)?\.com/api/webhooks/|xox[abprs]-|AKIA[0-9A-Z]{16}|"
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----"
)
REFERENCE = re.compile(
    r"^(ssm:/|secretsmanager:|\{\{resolve:|arn:aws[a-z-]*:(ssm|secretsmanager):)"
)
CONTAINERS = re.compile(r"docker|compose|container|podman|nerdctl", re.I)


@dataclass(frozen=True)
class Finding:
    check: str
    level: str  # "error" | "warning"
    resource: str
    message: str
    fix: str

    @property
    def is_error(self) -> bool:
        return self.level == "error"


# -- reading a template ----------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    pass


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    if suffix == "Condition":
        return {"Condition": value}
    return {f"Fn::{suffix}": value}


_Loader.add_multi_constructor("!", _tag)


def load_template(text: str) -> dict[str, Any]:
    """A template (YAML with short-form tags, or JSON) as plain data in long form."""
    data = yaml.load(text, Loader=_Loader)
    if not isinstance(data, dict) or not isinstance(data.get("Resources"), dict):
        raise ValueError("not a CloudFormation template (no Resources)")
    return data


@dataclass
class Live:
    """Deployed values that override the template's (``--stack-name`` mode)."""

    queue_attributes: dict[str, dict[str, str]] = field(default_factory=dict)
    alarm_actions: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    metadata_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    event_sources: dict[str, int] = field(default_factory=dict)  # queue logical id -> mappings
    # repository logical id -> {tag: whether the repository holds an image with it}
    image_tags: dict[str, dict[str, bool]] = field(default_factory=dict)


class View:
    """The template with parameter values: resolves what can be resolved, says None otherwise."""

    def __init__(
        self,
        template: dict[str, Any],
        parameters: Mapping[str, Any] | None = None,
        live: Live | None = None,
    ) -> None:
        self.template = template
        specs = template.get("Parameters", {}) or {}
        self.parameter_specs: dict[str, dict[str, Any]] = specs
        self.parameters = {name: spec.get("Default") for name, spec in specs.items()}
        self.parameters.update(parameters or {})
        self.live = live or Live()
        # Resources behind a tier condition that is off are not deployed: not checked either.
        self.resources: dict[str, dict[str, Any]] = {
            logical_id: resource
            for logical_id, resource in (template.get("Resources", {}) or {}).items()
            if tiers_deployed(template, self.parameters, resource.get("Condition"))
        }

    def of_type(self, *types: str) -> Iterator[tuple[str, dict[str, Any]]]:
        for logical_id, resource in self.resources.items():
            if resource.get("Type") in types:
                yield logical_id, resource.get("Properties", {}) or {}

    def value(self, node: Any) -> Any:
        if isinstance(node, dict) and set(node) == {"Ref"}:
            return self.parameters.get(node["Ref"])
        if isinstance(node, dict):
            return None
        return node

    def number(self, node: Any) -> float | None:
        try:
            return float(self.value(node))
        except (TypeError, ValueError):
            return None

    @staticmethod
    def target(node: Any) -> str | None:
        """The logical id a ``!GetAtt X.Arn`` / ``!Ref X`` / ``${X.Arn}`` points at."""
        if isinstance(node, dict):
            if "Fn::GetAtt" in node:
                value = node["Fn::GetAtt"]
                return value[0] if isinstance(value, list) else str(value).split(".")[0]
            if "Ref" in node:
                return str(node["Ref"])
            if "Fn::Sub" in node and isinstance(node["Fn::Sub"], str):
                match = re.fullmatch(r"\$\{([A-Za-z0-9]+)(\.[A-Za-z]+)?\}", node["Fn::Sub"])
                return match.group(1) if match else None
        return None

    def queue_number(self, logical_id: str, key: str, default: float) -> float | None:
        live = self.live.queue_attributes.get(logical_id, {})
        if key in live:
            return float(live[key])
        props = self.resources.get(logical_id, {}).get("Properties", {}) or {}
        return self.number(props[key]) if key in props else default

    def redrive(self, logical_id: str) -> tuple[str | None, float | None] | None:
        live = self.live.queue_attributes.get(logical_id, {})
        if "RedrivePolicy" in live:
            policy = json.loads(live["RedrivePolicy"])
            arn = str(policy.get("deadLetterTargetArn", ""))
            target = next(
                (
                    lid
                    for lid, attrs in self.live.queue_attributes.items()
                    if attrs.get("QueueArn") == arn
                ),
                None,
            )
            return target, float(policy.get("maxReceiveCount", 0))
        props = self.resources.get(logical_id, {}).get("Properties", {}) or {}
        policy = props.get("RedrivePolicy")
        if not isinstance(policy, dict):
            return None
        return self.target(policy.get("deadLetterTargetArn")), self.number(
            policy.get("maxReceiveCount")
        )


# -- checks ----------------------------------------------------------------------------------


def _lambda_consumed_queues(view: View) -> dict[str, list[str]]:
    """Queue logical id -> functions with an SQS event source on it."""
    consumers: dict[str, list[str]] = {}
    for function_id, props in view.of_type("AWS::Serverless::Function"):
        for event in (props.get("Events") or {}).values():
            if isinstance(event, dict) and event.get("Type") == "SQS":
                queue = View.target((event.get("Properties") or {}).get("Queue"))
                if queue:
                    consumers.setdefault(queue, []).append(function_id)
    for mapping_id, props in view.of_type("AWS::Lambda::EventSourceMapping"):
        queue = View.target(props.get("EventSourceArn"))
        if queue:
            consumers.setdefault(queue, []).append(
                View.target(props.get("FunctionName")) or mapping_id
            )
    for queue, count in view.live.event_sources.items():
        if count:
            consumers.setdefault(queue, []).append("event source mapping")
    return consumers


def _dead_letter_queues(view: View) -> dict[str, str]:
    """DLQ logical id -> what sends to it."""
    dlqs: dict[str, str] = {}
    for queue_id, _ in view.of_type("AWS::SQS::Queue"):
        redrive = view.redrive(queue_id)
        if redrive and redrive[0]:
            dlqs[redrive[0]] = f"redrive of {queue_id}"
    for function_id, props in view.of_type(*FUNCTION_TYPES):
        destination = (
            ((props.get("EventInvokeConfig") or {}).get("DestinationConfig") or {}).get("OnFailure")
            or {}
        ).get("Destination")
        target = View.target(destination)
        if target and view.resources.get(target, {}).get("Type") == "AWS::SQS::Queue":
            dlqs[target] = f"on-failure destination of {function_id}"
        dead_letter = View.target((props.get("DeadLetterQueue") or {}).get("TargetArn"))
        if dead_letter:
            dlqs[dead_letter] = f"dead-letter queue of {function_id}"
    for config_id, props in view.of_type("AWS::Lambda::EventInvokeConfig"):
        target = View.target(
            ((props.get("DestinationConfig") or {}).get("OnFailure") or {}).get("Destination")
        )
        if target and view.resources.get(target, {}).get("Type") == "AWS::SQS::Queue":
            dlqs[target] = f"on-failure destination ({config_id})"
    return dlqs


def check_dlq_retention(view: View) -> list[Finding]:
    findings = []
    for queue_id, _ in view.of_type("AWS::SQS::Queue"):
        redrive = view.redrive(queue_id)
        if not redrive or not redrive[0]:
            continue
        dlq = redrive[0]
        source_s = view.queue_number(queue_id, "MessageRetentionPeriod", DEFAULT_RETENTION_S)
        dlq_s = view.queue_number(dlq, "MessageRetentionPeriod", DEFAULT_RETENTION_S)
        if source_s is None or dlq_s is None:
            continue
        if dlq_s <= source_s:
            findings.append(
                Finding(
                    "dlq-retention",
                    "error",
                    dlq,
                    f"keeps messages {dlq_s:g} s, not longer than its source {queue_id} "
                    f"({source_s:g} s): a message's age counts from its first enqueue, so "
                    "dead letters expire early or at once",
                    f"set {dlq}'s MessageRetentionPeriod above {source_s:g} s (e.g. 1209600, "
                    "the 14-day maximum)",
                )
            )
    return findings


def check_chained_redrive(view: View) -> list[Finding]:
    """A message moved to a DLQ keeps its receive count; if that DLQ redrives again with a
    maxReceiveCount not above its source's, redriven messages skip the DLQ's consumer."""
    findings = []
    for queue_id, _ in view.of_type("AWS::SQS::Queue"):
        redrive = view.redrive(queue_id)
        if not redrive or not redrive[0] or redrive[1] is None:
            continue
        dlq, source_receives = redrive
        onward = view.redrive(dlq)
        if not onward or not onward[0] or onward[1] is None:
            continue
        if onward[1] <= source_receives:
            findings.append(
                Finding(
                    "chained-redrive",
                    "error",
                    dlq,
                    f"redrives to {onward[0]} after {onward[1]:g} receives, but messages arrive "
                    f"from {queue_id} already received {source_receives:g} times: they keep "
                    "that count, so they move on before the DLQ's consumer ever sees them",
                    f"raise {dlq}'s maxReceiveCount above {source_receives:g} plus the tries "
                    "its consumer deserves",
                )
            )
    return findings


def _worker_setting(view: View, parameter_names: tuple[str, ...], env_name: str) -> Any:
    for name in parameter_names:
        if name in view.parameters and view.parameters[name] not in (None, ""):
            return view.parameters[name], f"parameter {name}"
    text = json.dumps(view.template.get("Resources", {}))
    match = re.search(rf"{env_name}[=:]\s*\\?\"?(\d+|\$\{{(\w+)\}})", text)
    if match:
        if match.group(2):
            return view.parameters.get(match.group(2)), f"{env_name} (parameter {match.group(2)})"
        return match.group(1), env_name
    return None, None


def _worker_queues(view: View) -> list[str]:
    """Queues the worker consumes: redriven queues that no Lambda function consumes."""
    consumed = _lambda_consumed_queues(view)
    return [
        queue_id
        for queue_id, _ in view.of_type("AWS::SQS::Queue")
        if (view.redrive(queue_id) or (None, None))[0] and queue_id not in consumed
    ]


def check_max_receive_count(view: View) -> list[Finding]:
    raw, source = _worker_setting(view, ("WorkerMaxAttempts", "MaxAttempts"), "WORKER_MAX_ATTEMPTS")
    max_attempts = float(raw) if raw not in (None, "") else float(DEFAULT_WORKER_MAX_ATTEMPTS)
    source = source or "the worker's default"
    findings = []
    for queue_id in _worker_queues(view):
        _, receives = view.redrive(queue_id) or (None, None)
        if receives is not None and receives <= max_attempts + PREFETCH_RELEASE_ALLOWANCE:
            findings.append(
                Finding(
                    "max-receive-count",
                    "error",
                    queue_id,
                    f"maxReceiveCount {receives:g} is not above the worker's MaxAttempts "
                    f"{max_attempts:g} ({source}) plus the {PREFETCH_RELEASE_ALLOWANCE} "
                    "receives that are not attempts (a crash before the claim, a prefetched "
                    "message released at shutdown): redrive would send the job to the DLQ "
                    "without its reason",
                    "raise maxReceiveCount to at least "
                    f"{max_attempts + PREFETCH_RELEASE_ALLOWANCE + 1:g} (MaxReceiveCount), "
                    "so the worker dead-letters with the reason and redrive stays the net for "
                    "hard crashes",
                )
            )
    return findings


def check_visibility_heartbeat(view: View) -> list[Finding]:
    explicit, source = _worker_setting(
        view,
        ("HeartbeatSeconds", "VisibilityHeartbeatSeconds", "WorkerHeartbeatSeconds"),
        "WORKER_HEARTBEAT_S",
    )
    worker_window, window_source = _worker_setting(
        view, ("WorkerVisibilityWindowSeconds",), "WORKER_VISIBILITY_WINDOW_S"
    )
    findings = []
    for queue_id in _worker_queues(view):
        queue_window = view.queue_number(queue_id, "VisibilityTimeout", DEFAULT_VISIBILITY_S)
        if queue_window is None:
            continue
        window = float(worker_window) if worker_window not in (None, "") else queue_window
        # The worker extends the message every third of its own window unless told otherwise.
        period = float(explicit) if explicit not in (None, "") else window / 3
        where = source or (
            f"a third of the worker's window ({window_source})"
            if window_source
            else "a third of the window"
        )
        for label, value in (("queue VisibilityTimeout", queue_window), ("worker window", window)):
            if value < 3 * period:
                findings.append(
                    Finding(
                        "visibility-heartbeat",
                        "error",
                        queue_id,
                        f"{label} {value:g} s is shorter than 3x the heartbeat period "
                        f"{period:g} s ({where}): one late extension and the message is "
                        "delivered to a second worker while the first still runs it",
                        f"make the visibility window at least {3 * period:g} s, or extend "
                        f"every {value / 3:g} s",
                    )
                )
                break
    return findings


def check_imds(view: View) -> list[Finding]:
    findings = []
    for template_id, props in view.of_type("AWS::EC2::LaunchTemplate"):
        data = props.get("LaunchTemplateData") or {}
        options = {
            **(data.get("MetadataOptions") or {}),
            **view.live.metadata_options.get(template_id, {}),
        }
        tokens = view.value(options.get("HttpTokens")) or "optional"
        hop_limit = view.number(options.get("HttpPutResponseHopLimit", 1))
        if tokens != "required":
            findings.append(
                Finding(
                    "imds",
                    "error",
                    template_id,
                    f"IMDSv2 is not required (HttpTokens {tokens!r}): IMDSv1 answers SSRF",
                    "set MetadataOptions.HttpTokens: required",
                )
            )
        uses_containers = bool(CONTAINERS.search(json.dumps(data.get("UserData", ""))))
        if uses_containers and hop_limit is not None and hop_limit < 2:
            findings.append(
                Finding(
                    "imds",
                    "error",
                    template_id,
                    f"IMDSv2 hop limit {hop_limit:g} with containers: the token response never "
                    "reaches the container (one extra hop), so the worker never sees the spot "
                    "notice",
                    "set MetadataOptions.HttpPutResponseHopLimit: 2",
                )
            )
    for instance_id, props in view.of_type("AWS::EC2::Instance"):
        if "LaunchTemplate" not in props:
            findings.append(
                Finding(
                    "imds",
                    "warning",
                    instance_id,
                    "an instance without a launch template cannot require IMDSv2 in the template",
                    "launch it from the workers' launch template (MetadataOptions)",
                )
            )
    return findings


def check_alarm_actions(view: View) -> list[Finding]:
    findings = []
    for alarm_id, props in view.of_type(*ALARM_TYPES):
        live = view.live.alarm_actions.get(alarm_id, {})
        alarm_actions = live.get("AlarmActions", props.get("AlarmActions") or [])
        ok_actions = live.get("OKActions", props.get("OKActions") or [])
        if props.get("ActionsEnabled") is False or not alarm_actions:
            findings.append(
                Finding(
                    "alarm-actions",
                    "error",
                    alarm_id,
                    "fires into the void: no AlarmActions (or actions disabled)",
                    "add AlarmActions: [!Ref AlarmTopic] (and OKActions)",
                )
            )
        elif not ok_actions and not _scaling_only(view, alarm_actions):
            findings.append(
                Finding(
                    "alarm-actions",
                    "warning",
                    alarm_id,
                    "no OKActions: chat never learns that it resolved",
                    "add OKActions: [!Ref AlarmTopic]",
                )
            )
    return findings


def _scaling_only(view: View, actions: list[Any]) -> bool:
    """An alarm that only drives a scaling policy is a scaling signal, not a page."""
    targets = [view.target(action) for action in actions]
    return bool(targets) and all(
        target is not None
        and view.resources.get(target, {}).get("Type") == "AWS::AutoScaling::ScalingPolicy"
        for target in targets
    )


def _floating(image: str) -> bool:
    """An image reference that does not pin one image: no tag (docker reads ``latest``),
    ``latest`` itself; a digest pins."""
    if "@" in image:
        return False
    name = image.rsplit("/", 1)[-1]
    return ":" not in name or name.rsplit(":", 1)[1] == "latest"


def check_worker_image(view: View) -> list[Finding]:
    """The image the fleet pulls: ``WorkerImage`` in full, else the stack's repository at
    ``WorkerImageTag``. A tag that names no image, or names a different one tomorrow, leaves
    the fleet with no worker or with two kinds of worker."""
    if "WorkerImageTag" not in view.parameter_specs:
        return []
    image = str(view.parameters.get("WorkerImage") or "")
    tag = str(view.parameters.get("WorkerImageTag") or "")
    fleet = str(view.parameters.get("DeployWorkers") or "false").lower() == "true"
    repositories = dict(view.of_type("AWS::ECR::Repository"))
    immutable = sorted(
        lid
        for lid, props in repositories.items()
        if view.value(props.get("ImageTagMutability")) == "IMMUTABLE"
    )
    findings = []
    if image:
        if tag:
            findings.append(
                Finding(
                    "worker-image",
                    "warning",
                    "Parameters/WorkerImageTag",
                    f"WorkerImageTag {tag!r} is ignored: WorkerImage {image!r} names the image "
                    "in full",
                    "clear one of the two (WorkerImage empty pulls the stack's repository at "
                    "WorkerImageTag)",
                )
            )
        if _floating(image):
            findings.append(
                Finding(
                    "worker-image",
                    "warning",
                    "Parameters/WorkerImage",
                    f"{image!r} floats (no tag, or latest): instances started on different days "
                    "run different images, and a new push never rolls the fleet (the launch "
                    "template does not change)",
                    "pin a tag or a digest (NAME:TAG, NAME@sha256:...), a new one per build",
                )
            )
        return findings
    repository = next(iter(immutable or repositories), "the stack's repository")
    if fleet and not tag:
        findings.append(
            Finding(
                "worker-image",
                "error",
                "Parameters/WorkerImageTag",
                "DeployWorkers is true with neither WorkerImage nor WorkerImageTag: the workers "
                f"would pull {repository} with an empty tag and never start",
                "push the image (make push prints its tag) and deploy with WorkerImageTag=TAG",
            )
        )
    if tag == "latest":
        findings.append(
            Finding(
                "worker-image",
                "error" if immutable else "warning",
                "Parameters/WorkerImageTag",
                (
                    f"WorkerImageTag 'latest' on {repository}, whose tags are immutable: "
                    "'latest' can be pushed once, every later push of it fails, and "
                    "redeploying it never rolls the fleet"
                    if immutable
                    else "WorkerImageTag 'latest' floats: instances started on different days "
                    "run different images, and a new push never rolls the fleet"
                ),
                "push each build under its own tag (make push: the git short sha) and deploy "
                "WorkerImageTag=that tag",
            )
        )
    for repository_id, tags in view.live.image_tags.items():
        if tag and tags.get(tag) is False and fleet:
            findings.append(
                Finding(
                    "worker-image",
                    "error",
                    repository_id,
                    f"holds no image tagged {tag!r} (WorkerImageTag): the workers cannot pull "
                    "their image",
                    f"push it (make push TAG={tag}) or deploy the tag make push printed",
                )
            )
    return findings


def _alarms_on(view: View, namespace: str, metric: str, dimension: str) -> dict[str, list[str]]:
    """Resource logical id -> alarms watching ``metric`` on it (plain and metric-math alarms)."""
    watched: dict[str, list[str]] = {}
    for alarm_id, props in view.of_type("AWS::CloudWatch::Alarm"):
        stats = [props] + [
            (m.get("MetricStat") or {}).get("Metric") or {} for m in props.get("Metrics") or []
        ]
        for stat in stats:
            if stat.get("Namespace") != namespace or stat.get("MetricName") != metric:
                continue
            for dim in stat.get("Dimensions") or []:
                if dim.get("Name") == dimension:
                    target = View.target(dim.get("Value"))
                    if target:
                        watched.setdefault(target, []).append(alarm_id)
    return watched


def check_dlq_consumers(view: View) -> list[Finding]:
    consumers = _lambda_consumed_queues(view)
    watched = _alarms_on(view, "AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName")
    findings = []
    for dlq, fed_by in sorted(_dead_letter_queues(view).items()):
        if dlq in consumers:
            continue
        if dlq in watched:
            findings.append(
                Finding(
                    "dlq-consumer",
                    "warning",
                    dlq,
                    f"no function consumes this DLQ ({fed_by}); alarm {watched[dlq][0]} watches it",
                    "fine if people handle it; add a consumer to act on each message",
                )
            )
        else:
            findings.append(
                Finding(
                    "dlq-consumer",
                    "error",
                    dlq,
                    f"nobody consumes or watches this DLQ ({fed_by}): what lands here is silent",
                    "add a function consuming it, or at least an alarm on "
                    "ApproximateNumberOfMessagesVisible >= 1 with actions",
                )
            )
    return findings


def check_plain_secrets(view: View) -> list[Finding]:
    findings = []
    for name, spec in view.parameter_specs.items():
        spec = spec or {}
        value = str(view.parameters.get(name) or "")
        if SECRET_VALUE.search(value):
            findings.append(
                Finding(
                    "plain-secrets",
                    "error",
                    f"Parameters/{name}",
                    "holds what looks like a secret (webhook URL, token or key) in plain text",
                    "store it in SSM Parameter Store (SecureString) or Secrets Manager and pass "
                    "its name (ssm:/path or secretsmanager:name)",
                )
            )
            continue
        if not SECRET_NAME.search(name) or spec.get("NoEcho") in (True, "true", "True"):
            continue
        if str(spec.get("Type", "")).startswith("AWS::SSM::Parameter"):
            continue
        pattern = str(spec.get("AllowedPattern", ""))
        references_only = pattern.startswith("^") and all(
            REFERENCE.match(alt) or not alt
            for alt in re.sub(r"^\^\(?|\)?\$$", "", pattern).split("|")
        )
        if references_only:
            continue
        findings.append(
            Finding(
                "plain-secrets",
                "error",
                f"Parameters/{name}",
                "a secret-looking parameter that accepts a plain value (it would be visible in "
                "the console, the stack's events and describe-stacks)",
                "take a reference instead (AllowedPattern ^(ssm:/...|secretsmanager:...)$ or "
                "type AWS::SSM::Parameter::Value<String>), or mark it NoEcho",
            )
        )
    for function_id, props in view.of_type(*FUNCTION_TYPES):
        variables = ((props.get("Environment") or {}).get("Variables")) or {}
        for key, raw in variables.items():
            if isinstance(raw, str) and SECRET_VALUE.search(raw):
                findings.append(
                    Finding(
                        "plain-secrets",
                        "error",
                        f"{function_id}/{key}",
                        "a secret in a function's environment in plain text",
                        "reference SSM Parameter Store or Secrets Manager instead",
                    )
                )
    return findings


def check_function_alarms(view: View) -> list[Finding]:
    findings = []
    for metric in ("Errors", "Throttles"):
        watched = _alarms_on(view, "AWS/Lambda", metric, "FunctionName")
        for function_id, _ in view.of_type(*FUNCTION_TYPES):
            if function_id not in watched:
                findings.append(
                    Finding(
                        "function-alarms",
                        "error",
                        function_id,
                        f"no alarm on its {metric}",
                        f"add {function_id}{metric}Alarm (AWS/Lambda {metric} > 0, actions to "
                        "the alarm topic) and a line on the dashboard",
                    )
                )
    return findings


def _timeout_s(view: View, props: Mapping[str, Any]) -> float | None:
    globals_timeout = view.template.get("Globals", {}).get("Function", {}).get("Timeout", 3)
    return view.number(props.get("Timeout", globals_timeout))


def check_stranded_sweep(view: View) -> list[Finding]:
    """The sweep must wait longer than enqueue may run: a younger unsent job may be one that
    enqueue is still sending (a duplicate is harmless, but the sweep would be racing it)."""
    handlers = dict(view.of_type(*FUNCTION_TYPES))
    enqueue = [p for p in handlers.values() if p.get("Handler") == "enqueue.app.handler"]
    enqueue_timeout = max((_timeout_s(view, p) or 0 for p in enqueue), default=None)
    findings = []
    for function_id, props in handlers.items():
        variables = (props.get("Environment") or {}).get("Variables") or {}
        if "STRANDED_AFTER_S" not in variables or enqueue_timeout is None:
            continue
        after_s = view.number(variables["STRANDED_AFTER_S"])
        if after_s is not None and after_s <= enqueue_timeout:
            findings.append(
                Finding(
                    "stranded-sweep",
                    "warning",
                    function_id,
                    f"STRANDED_AFTER_S {after_s:g} is not above the enqueue function's Timeout "
                    f"{enqueue_timeout:g} s: the sweep may send a job enqueue is still sending",
                    f"raise StrandedJobAfterSeconds above {enqueue_timeout:g} (e.g. "
                    f"{max(120, 4 * enqueue_timeout):g})",
                )
            )
    return findings


def dashboard_metrics(body: str) -> list[tuple[str, str, dict[str, str]]]:
    """(namespace, metric name, dimensions) of every metric line of a dashboard body, with
    ``${...}`` left as text."""
    data = json.loads(re.sub(r"(?<=[:\[,\s])\$\{[^}]+\}(?=[\s,\]}])", "0", body))
    metrics = []
    for widget in data.get("widgets", []):
        last: list[Any] = []
        for row in (widget.get("properties") or {}).get("metrics", []):
            parts = [p for p in row if not isinstance(p, dict)]
            if any(isinstance(p, dict) and "expression" in p for p in row):
                continue
            # CloudWatch's "." shorthand repeats the previous line's value at that position.
            parts = [last[i] if p == "." and i < len(last) else p for i, p in enumerate(parts)]
            last = parts
            dims = {str(parts[i]): str(parts[i + 1]) for i in range(2, len(parts) - 1, 2)}
            metrics.append((str(parts[0]), str(parts[1]), dims))
    return metrics


def _shown_text(view: View, node: Any) -> str | None:
    """The text a Sub variable renders to under the view's conditions (an undecidable
    condition: as if it held), its own variables written in; None for a reference."""
    if isinstance(node, str):
        return node
    if isinstance(node, dict) and set(node) == {"Fn::If"}:
        name, yes, no = node["Fn::If"]
        return _shown_text(
            view, no if condition(view.template, view.parameters, name) is False else yes
        )
    if isinstance(node, dict) and set(node) == {"Fn::Sub"}:
        sub = node["Fn::Sub"]
        if isinstance(sub, str):
            return sub
        return _with_fragments(view, str(sub[0]), dict(sub[1]))[0]
    return None


def _with_fragments(view: View, text: str, variables: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``text`` with its optional widgets and metric lines written in: a variable whose text
    starts with the comma that joins it on (or is empty: not deployed here) is a fragment of
    the body's JSON, not a value; the other variables stay ``${...}`` and are returned."""
    kept: dict[str, Any] = {}
    for name, node in variables.items():
        shown = _shown_text(view, node)
        if shown is not None and (shown == "" or shown.lstrip().startswith(",")):
            text = text.replace("${" + name + "}", shown)
        else:
            kept[name] = node
    return text, kept


def dashboard_body(view: View, props: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """A dashboard's body as this stack shows it (the capacity tiers' widgets only where the
    tiers are deployed), with ``${...}`` of values left as text, and the Sub variables of those."""
    body = props.get("DashboardBody")
    if isinstance(body, str):
        return body, {}
    if isinstance(body, dict) and "Fn::Sub" in body:
        sub = body["Fn::Sub"]
        if isinstance(sub, str):
            return sub, {}
        return _with_fragments(view, str(sub[0]), dict(sub[1]))
    return None


def check_dashboards(view: View) -> list[Finding]:
    findings = []
    queues = {lid for lid, _ in view.of_type("AWS::SQS::Queue")}
    functions = {lid for lid, _ in view.of_type(*FUNCTION_TYPES)}
    ours = WORKER_METRICS | FUNCTION_METRICS
    for dashboard_id, props in view.of_type("AWS::CloudWatch::Dashboard"):
        found = dashboard_body(view, props)
        if found is None:
            continue
        body, variables = found
        try:
            metrics = dashboard_metrics(body)
        except ValueError as exc:
            findings.append(
                Finding("dashboard", "error", dashboard_id, f"body is not JSON: {exc}", "fix it")
            )
            continue
        shown_functions: set[str] = set()
        for namespace, name, dims in metrics:
            problem = None
            refs = {k: re.fullmatch(r"\$\{([A-Za-z0-9]+)(?:\.\w+)?\}", v) for k, v in dims.items()}
            if namespace == NAMESPACE:
                if name not in ours:
                    problem = f"{name} is not a metric spotline emits (metrics_names.py)"
            elif namespace == "AWS/SQS":
                target = refs.get("QueueName")
                if not target or target.group(1) not in queues:
                    problem = f"{name} on {dims.get('QueueName')}: not a queue of this template"
            elif namespace == "AWS/Lambda":
                target = refs.get("FunctionName")
                if not target or target.group(1) not in functions:
                    problem = (
                        f"{name} on {dims.get('FunctionName')}: not a function of this template"
                    )
                elif name == "Errors":
                    shown_functions.add(target.group(1))
            elif namespace in ("AWS/AutoScaling", "AWS/EC2"):
                target = refs.get("AutoScalingGroupName")
                if not target or (
                    target.group(1) not in variables and target.group(1) not in view.resources
                ):
                    problem = f"{name}: its group {dims} is not defined in the template"
            else:
                problem = f"{namespace} {name}: no check knows this namespace"
            if problem:
                findings.append(
                    Finding(
                        "dashboard",
                        "error",
                        dashboard_id,
                        problem,
                        "use a metric from metrics_names.py or a resource of this template",
                    )
                )
        for function_id in sorted(functions - shown_functions):
            findings.append(
                Finding(
                    "dashboard",
                    "error",
                    dashboard_id,
                    f"{function_id}'s errors are not on the dashboard",
                    f'add ["AWS/Lambda", "Errors", "FunctionName", "${{{function_id}}}"] to the '
                    "function errors widget",
                )
            )
    return findings


CHECKS = (
    check_dlq_retention,
    check_chained_redrive,
    check_max_receive_count,
    check_visibility_heartbeat,
    check_imds,
    check_worker_image,
    check_alarm_actions,
    check_dlq_consumers,
    check_plain_secrets,
    check_function_alarms,
    check_stranded_sweep,
    check_dashboards,
    check_tiers,
)


def diagnose(view: View) -> list[Finding]:
    findings = [finding for check in CHECKS for finding in check(view)]
    return sorted(findings, key=lambda f: (not f.is_error, f.check, f.resource))


# -- a deployed stack (read-only calls) ------------------------------------------------------


def stack_view(stack_name: str, session: Any) -> View:
    """The deployed stack: its processed template, parameter values and live attributes."""
    cloudformation = session.client("cloudformation")
    body = cloudformation.get_template(StackName=stack_name, TemplateStage="Processed")[
        "TemplateBody"
    ]
    template = body if isinstance(body, dict) else load_template(body)
    stack = cloudformation.describe_stacks(StackName=stack_name)["Stacks"][0]
    parameters = {p["ParameterKey"]: p.get("ParameterValue") for p in stack.get("Parameters", [])}
    physical: dict[str, tuple[str, str]] = {}
    paginator = cloudformation.get_paginator("list_stack_resources")
    for page in paginator.paginate(StackName=stack_name):
        for summary in page["StackResourceSummaries"]:
            if summary.get("PhysicalResourceId"):
                physical[summary["LogicalResourceId"]] = (
                    summary["ResourceType"],
                    summary["PhysicalResourceId"],
                )
    live = Live()
    sqs = session.client("sqs")
    lambda_client = session.client("lambda")
    for logical_id, (kind, physical_id) in physical.items():
        if kind == "AWS::SQS::Queue":
            attributes = sqs.get_queue_attributes(QueueUrl=physical_id, AttributeNames=["All"])
            live.queue_attributes[logical_id] = attributes.get("Attributes", {})
            arn = live.queue_attributes[logical_id].get("QueueArn")
            if arn:
                mappings = lambda_client.list_event_source_mappings(EventSourceArn=arn)
                live.event_sources[logical_id] = len(mappings.get("EventSourceMappings", []))
    alarm_ids = {pid: lid for lid, (kind, pid) in physical.items() if kind in ALARM_TYPES}
    if alarm_ids:
        cloudwatch = session.client("cloudwatch")
        names = list(alarm_ids)
        for start in range(0, len(names), 100):
            found = cloudwatch.describe_alarms(
                AlarmNames=names[start : start + 100], AlarmTypes=["MetricAlarm", "CompositeAlarm"]
            )
            for alarm in found.get("MetricAlarms", []) + found.get("CompositeAlarms", []):
                live.alarm_actions[alarm_ids[alarm["AlarmName"]]] = {
                    "AlarmActions": alarm.get("AlarmActions", []),
                    "OKActions": alarm.get("OKActions", []),
                }
    tag = parameters.get("WorkerImageTag")
    if tag and not parameters.get("WorkerImage"):
        ecr = session.client("ecr")
        for logical_id, (kind, physical_id) in physical.items():
            if kind == "AWS::ECR::Repository":
                live.image_tags[logical_id] = {tag: _has_image(ecr, physical_id, tag)}
    ec2 = session.client("ec2")
    for logical_id, (kind, physical_id) in physical.items():
        if kind == "AWS::EC2::LaunchTemplate":
            versions = ec2.describe_launch_template_versions(
                LaunchTemplateId=physical_id, Versions=["$Default"]
            )["LaunchTemplateVersions"]
            if versions:
                options = versions[0].get("LaunchTemplateData", {}).get("MetadataOptions", {})
                live.metadata_options[logical_id] = options
    return View(template, parameters, live)


def _has_image(ecr: Any, repository: str, tag: str) -> bool:
    try:
        ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])
    except ecr.exceptions.ImageNotFoundException:
        return False
    return True


# -- command line ----------------------------------------------------------------------------


def render(findings: list[Finding], source: str) -> str:
    if not findings:
        return f"doctor: {source}: no findings"
    lines = []
    for finding in findings:
        lines.append(f"{finding.level.upper():7} {finding.check:20} {finding.resource}")
        lines.append(f"        {finding.message}")
        lines.append(f"        fix: {finding.fix}")
    errors = sum(f.is_error for f in findings)
    lines.append(f"doctor: {source}: {errors} error(s), {len(findings) - errors} warning(s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None, session: Any = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m spotline_ops.doctor", description=__doc__.split("\n")[0]
    )
    parser.add_argument("template", nargs="?", default="template.yaml")
    parser.add_argument("--stack-name", help="check a deployed stack (read-only calls)")
    parser.add_argument("--region", help="AWS region of the stack")
    parser.add_argument("--endpoint-url", help="another AWS endpoint (e.g. devstack's moto)")
    parser.add_argument(
        "--parameter",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a template parameter (offline mode)",
    )
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    parser.add_argument(
        "--catalog",
        help="the analyzer catalog the API is deployed with (default: "
        "functions/spotline/catalog.json beside the template)",
    )
    args = parser.parse_args(argv)
    try:
        view, source = _read_view(args, session)
    except InputError as exc:
        print(f"doctor: {exc}", file=sys.stderr)
        return 2
    findings = diagnose(view)
    catalog_path = Path(args.catalog or Path(args.template).parent / CATALOG_IN_TREE)
    if catalog_path.exists():
        findings += check_catalog(view, Catalog.loads(catalog_path.read_text(encoding="utf-8")))
    if args.json:
        print(json.dumps([asdict(f) for f in findings], indent=2))
    else:
        print(render(findings, source))
    return 1 if any(f.is_error for f in findings) else 0


def _read_view(args: argparse.Namespace, session: Any) -> tuple[View, str]:
    """The view to check and its name; InputError (one line) when the input cannot be used."""
    if args.stack_name:
        if session is None:
            import boto3

            session = boto3.Session(region_name=args.region)
        if args.endpoint_url:
            session = _EndpointSession(session, args.endpoint_url)
        try:
            return stack_view(args.stack_name, session), f"stack {args.stack_name}"
        except AWS_ERRORS as exc:
            raise aws_failure(args.stack_name, exc) from exc
    template = read_template(Path(args.template), load_template)
    overrides = parameter_overrides(args.parameter, template.get("Parameters") or {})
    return View(template, overrides), args.template


class _EndpointSession:
    def __init__(self, session: Any, endpoint_url: str) -> None:
        self._session = session
        self._endpoint_url = endpoint_url

    def client(self, service: str) -> Any:
        return self._session.client(service, endpoint_url=self._endpoint_url)


if __name__ == "__main__":
    sys.exit(main())
