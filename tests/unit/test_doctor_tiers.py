"""The doctor's tier checks (tools/spotline_ops/doctor_tiers.py): each misconfiguration provoked."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from devstack.cfn import TEMPLATE_PATH
from spotline_ops.doctor import Finding, View, diagnose, load_template

TEMPLATE = load_template(TEMPLATE_PATH.read_text(encoding="utf-8"))
ON = {"DeployWorkers": "true", "WorkerTiers": "default,large", "OnDemandLane": "true"}


def tier_findings(template: dict[str, Any], **parameters: Any) -> list[Finding]:
    return [f for f in diagnose(View(template, {**ON, **parameters})) if f.check == "tiers"]


@pytest.fixture
def template() -> dict[str, Any]:
    return copy.deepcopy(TEMPLATE)


def test_the_projects_tiers_pass(template: dict[str, Any]) -> None:
    assert tier_findings(template) == []


def test_tier_resources_that_are_off_are_not_checked(template: dict[str, Any]) -> None:
    view = View(template, {"DeployWorkers": "true"})
    assert "LargeTierQueue" not in view.resources and "OnDemandQueue" not in view.resources
    assert "WorkerGroup" in view.resources  # only tier conditions hide resources
    assert "LargeTierQueue" in View(template, ON).resources


def test_a_larger_tier_that_is_not_larger_is_an_error(template: dict[str, Any]) -> None:
    (finding,) = tier_findings(template, LargeTierJobMemoryMiB=11264)
    assert finding.is_error and finding.resource == "LargeTierJobMemoryMiB"
    assert "not larger" in finding.message


def test_a_larger_tier_sharing_the_default_types_is_a_warning(template: dict[str, Any]) -> None:
    (finding,) = tier_findings(template, LargeTierInstanceTypes="g5.xlarge,g5.4xlarge")
    assert finding.level == "warning" and "g5.xlarge" in finding.message


def test_a_lane_with_no_worker_is_an_error(template: dict[str, Any]) -> None:
    tags = template["Resources"]["StandbyInstance"]["Properties"]["Tags"]
    template["Resources"]["StandbyInstance"]["Properties"]["Tags"] = [
        tag for tag in tags if "Fn::If" not in tag
    ]
    (finding,) = tier_findings(template)
    assert finding.is_error and finding.resource == "OnDemandQueue"
    assert "no worker takes this queue" in finding.message


def test_a_large_queue_no_group_takes_is_an_error(template: dict[str, Any]) -> None:
    group = template["Resources"]["LargeTierGroup"]["Properties"]
    group["Tags"] = [tag for tag in group["Tags"] if tag["Key"] != "spotline-tier"]
    (finding,) = tier_findings(template)
    assert finding.resource == "LargeTierQueue" and finding.is_error


def test_a_tier_queue_without_dlq_or_alarms_is_found(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    del resources["LargeTierQueue"]["Properties"]["RedrivePolicy"]
    del resources["OnDemandQueueAgeAlarm"]
    del resources["OnDemandDeadLetterQueueAlarm"]
    found = {(f.resource, f.level, f.message.split(":")[0]) for f in tier_findings(template)}
    assert ("LargeTierQueue", "error", "a tier's queue without a DLQ") in found
    assert ("OnDemandQueue", "warning", "no alarm watches this tier's queue") in found
    assert (
        "OnDemandDeadLetterQueue",
        "warning",
        "no alarm watches this tier's dead-letter queue",
    ) in found


def test_a_scaling_alarm_needs_no_ok_actions(template: dict[str, Any]) -> None:
    view = View(template, ON)
    assert not [f for f in diagnose(view) if f.resource == "LargeTierWaitingOnZeroAlarm"]


def test_a_lane_whose_standby_no_longer_covers_the_jobs_queue_is_a_warning(
    template: dict[str, Any],
) -> None:
    data = template["Resources"]["WorkerLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    text = json.dumps(data["UserData"]).replace("COVER_QUEUE_URL='${JobsQueue}'", "")
    data["UserData"] = json.loads(text)
    (finding,) = tier_findings(template)
    assert finding.level == "warning" and finding.resource == "WorkerLaunchTemplate"
    assert "does not cover JobsQueue" in finding.message
    assert tier_findings(template, OnDemandLane="false") == [], "no lane: nothing to cover"
