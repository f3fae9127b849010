"""The doctor's tier checks: capacity tiers and the on-demand lane (README "Capacity tiers").

A tier that is wrong in the template costs jobs quietly: a "larger" tier that is not larger
sends every OOM job to a pool where it runs out of memory again; a lane queue no worker reads
holds the jobs preempted most often forever; a tier queue without a DLQ or alarms loses the
dead letters and the waiting jobs from the operators' view. The worker never loses a job to a
misconfigured tier (gpu_worker/escalation.py falls back to the ordinary retry), but the doctor
says so before the first job pays for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spotline_ops.doctor import Finding, View

# Conditions that switch tiers on: a resource behind one that is off is not deployed.
TIER_CONDITIONS = ("UseLargeTier", "UseOnDemandLane", "UseTiers")
TIER_TAG = "spotline-tier"


def evaluate(template: dict[str, Any], parameters: Mapping[str, Any], node: Any) -> Any:
    """A condition's value from parameter values (None where it cannot be decided)."""
    if isinstance(node, dict) and len(node) == 1:
        ((key, arg),) = node.items()
        if key == "Ref":
            return parameters.get(arg)
        if key == "Condition":
            return evaluate(template, parameters, template.get("Conditions", {}).get(arg))
        values = [evaluate(template, parameters, item) for item in arg]
        if any(value is None for value in values):
            return None
        if key == "Fn::Equals":
            return str(values[0]) == str(values[1])
        if key == "Fn::Not":
            return not values[0]
        if key == "Fn::And":
            return all(values)
        if key == "Fn::Or":
            return any(values)
        return None
    return node if isinstance(node, str | int | float | bool) else None


def condition(template: dict[str, Any], parameters: Mapping[str, Any], name: str) -> bool | None:
    found = evaluate(template, parameters, {"Condition": name})
    return None if found is None else bool(found)


def tiers_deployed(
    template: dict[str, Any], parameters: Mapping[str, Any], name: str | None
) -> bool:
    """False only for a resource behind a tier condition that is decidedly off."""
    if name not in TIER_CONDITIONS:
        return True
    return condition(template, parameters, name) is not False


def _tagged(view: View, tier: str) -> list[str]:
    """Logical ids of groups and instances whose spotline-tier tag names ``tier``."""
    found = []
    for logical_id, props in view.of_type(
        "AWS::AutoScaling::AutoScalingGroup", "AWS::EC2::Instance"
    ):
        for tag in props.get("Tags") or []:
            if isinstance(tag, dict) and "Fn::If" in tag:
                name, yes, _ = tag["Fn::If"]
                tag = yes if condition(view.template, view.parameters, name) else {}
            if isinstance(tag, dict) and tag.get("Key") == TIER_TAG and tag.get("Value") == tier:
                found.append(logical_id)
    return found


def _alarmed(view: View, queue_id: str) -> bool:
    for _, props in view.of_type("AWS::CloudWatch::Alarm"):
        for dimension in props.get("Dimensions") or []:
            if view.target(dimension.get("Value")) == queue_id:
                return True
    return False


def check_tiers(view: View) -> list[Finding]:
    from spotline_ops.doctor import Finding

    findings: list[Finding] = []
    params, template = view.parameters, view.template
    large = condition(template, params, "UseLargeTier")
    lane = condition(template, params, "UseOnDemandLane")
    if large:
        default_mib = view.number({"Ref": "DefaultTierJobMemoryMiB"})
        large_mib = view.number({"Ref": "LargeTierJobMemoryMiB"})
        if default_mib is not None and large_mib is not None and large_mib <= default_mib:
            findings.append(
                Finding(
                    "tiers",
                    "error",
                    "LargeTierJobMemoryMiB",
                    f"the larger tier's job memory ({large_mib:.0f} MiB) is not larger than the "
                    f"default tier's ({default_mib:.0f} MiB): an OOM job would run out again",
                    "raise LargeTierJobMemoryMiB (and its instance types) above the default tier",
                )
            )
        shared = set(_list(params.get("LargeTierInstanceTypes"))) & set(
            _list(params.get("WorkerInstanceTypes"))
        )
        if shared:
            findings.append(
                Finding(
                    "tiers",
                    "warning",
                    "LargeTierInstanceTypes",
                    f"the larger tier launches the default tier's types too: {sorted(shared)}",
                    "give the larger tier only types with more memory",
                )
            )
        if not _tagged(view, "large"):
            findings.append(_no_worker("LargeTierQueue", "large"))
    if lane and not _tagged(view, "on-demand"):
        findings.append(_no_worker("OnDemandQueue", "on-demand"))
    if lane and "WorkerLaunchTemplate" in view.resources and not _lane_covers_jobs(view):
        findings.append(
            Finding(
                "tiers",
                "warning",
                "WorkerLaunchTemplate",
                "the lane's worker (the standby) does not cover JobsQueue: spot gaps on the "
                "default tier go unserved while the lane is on",
                "in the user data's on-demand case set COVER_QUEUE_URL='${JobsQueue}' and "
                "COVER_DLQ_URL='${JobsDeadLetterQueue}' (WORKER_COVER_QUEUE_URL)",
            )
        )
    for queue_id, on in (("LargeTierQueue", large), ("OnDemandQueue", lane)):
        if on and queue_id in view.resources:
            findings += _queue_findings(view, queue_id)
    return findings


def _lane_covers_jobs(view: View) -> bool:
    """The user data's on-demand case gives the standby the jobs queue as its cover, and the
    worker's environment carries it (gpu_worker/queues.py)."""
    props = view.resources["WorkerLaunchTemplate"].get("Properties", {})
    lines = [
        line
        for text in _strings(props.get("LaunchTemplateData", {}).get("UserData"))
        for line in text.splitlines()
    ]
    return any(
        "on-demand)" in line and "COVER_QUEUE_URL='${JobsQueue}'" in line for line in lines
    ) and any("WORKER_COVER_QUEUE_URL=$COVER_QUEUE_URL" in line for line in lines)


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        node = list(node.values())
    if isinstance(node, list):
        return [text for item in node for text in _strings(item)]
    return []


def _list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return [str(item) for item in value or []]


def _no_worker(queue_id: str, tier: str) -> Finding:
    from spotline_ops.doctor import Finding

    return Finding(
        "tiers",
        "error",
        queue_id,
        f"no worker takes this queue: no group or instance is tagged {TIER_TAG}={tier}",
        f"tag the {tier} workers {TIER_TAG}={tier} (the user data picks the queue by it)",
    )


def _queue_findings(view: View, queue_id: str) -> list[Finding]:
    from spotline_ops.doctor import Finding

    findings = []
    redrive = view.redrive(queue_id)
    dlq_id = redrive[0] if redrive else None
    if dlq_id is None:
        findings.append(
            Finding(
                "tiers",
                "error",
                queue_id,
                "a tier's queue without a DLQ: SQS's redrive has nowhere to put a crashing job",
                "add a RedrivePolicy to the tier's own dead-letter queue",
            )
        )
    if not _alarmed(view, queue_id):
        findings.append(
            Finding(
                "tiers",
                "warning",
                queue_id,
                "no alarm watches this tier's queue: jobs waiting on it go unseen",
                "add an ApproximateAgeOfOldestMessage alarm on it",
            )
        )
    if dlq_id is not None and not _alarmed(view, dlq_id):
        findings.append(
            Finding(
                "tiers",
                "warning",
                dlq_id,
                "no alarm watches this tier's dead-letter queue",
                "add an ApproximateNumberOfMessagesVisible >= 1 alarm on it",
            )
        )
    return findings
