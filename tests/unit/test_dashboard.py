"""The operations dashboard: it renders, and every metric on it exists (a resource of the
template, or a metric the worker / functions emit, named in spotline.metrics_names). With
capacity tiers it gains a row for them; a one-pool stack's body stays as it always was."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from devstack.cfn import Physical, Stack, load_template, parameter_defaults
from spotline.metrics_names import (
    FUNCTION_METRICS,
    FUNCTION_SERVICE,
    FUNCTION_SERVICE_DIMENSION,
    NAMESPACE,
    SERVICE_DIMENSION,
    WORKER_METRICS,
    WorkerMetric,
)
from spotline_ops.doctor import View, check_dashboards, dashboard_body, dashboard_metrics

TEMPLATE = load_template()
FUNCTION_TYPES = ("AWS::Serverless::Function", "AWS::Lambda::Function")
ONE_POOL = {"DeployWorkers": "true"}
LARGE = {**ONE_POOL, "WorkerTiers": "default,large"}
LANE = {**ONE_POOL, "OnDemandLane": "true"}
BOTH = {**LARGE, **LANE}
STACKS = {"serverless": {}, "one pool": ONE_POOL, "large tier": LARGE, "lane": LANE, "both": BOTH}
TIER_TITLE = "Capacity tiers"


def dashboard(template: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    (resource,) = [
        r for r in template["Resources"].values() if r["Type"] == "AWS::CloudWatch::Dashboard"
    ]
    body, variables = resource["Properties"]["DashboardBody"]["Fn::Sub"]
    return body, variables


def deployed(template: dict[str, Any], parameters: dict[str, str]) -> Stack:
    """The stack these parameters deploy: each resource whose condition holds, named
    ``spotline-<logical id>`` (its Ref, and a queue's QueueName); nothing else resolves."""
    stack = Stack("spotline", "us-east-1", template, parameter_defaults(template, parameters))
    for logical_id, resource in template["Resources"].items():
        condition = resource.get("Condition")
        if condition is None or stack.condition(condition):
            name = f"spotline-{logical_id}"
            queue = resource["Type"] == "AWS::SQS::Queue"
            stack.resources[logical_id] = Physical(
                resource["Type"], name, {"QueueName": name} if queue else {}
            )
    return stack


def rendered_body(template: dict[str, Any], parameters: dict[str, str] | None = None) -> str:
    """The body as CloudFormation renders it for a stack with these parameters: a line that
    names a resource these parameters do not deploy fails (devstack.cfn.Unresolved)."""
    body, variables = dashboard(template)
    return deployed(template, parameters or {}).resolve({"Fn::Sub": [body, variables]})


def render(template: dict[str, Any], parameters: dict[str, str] | None = None) -> dict[str, Any]:
    return json.loads(rendered_body(template, parameters))


def tier_widgets(parameters: dict[str, str]) -> list[dict[str, Any]]:
    widgets = render(TEMPLATE, parameters)["widgets"]
    return [w for w in widgets if w["properties"]["title"].startswith(TIER_TITLE)]


def dimension_values(widgets: list[dict[str, Any]]) -> set[str]:
    return {str(part) for w in widgets for row in w["properties"]["metrics"] for part in row[3:-1]}


def test_dashboard_body_renders_to_valid_widgets() -> None:
    rendered = render(TEMPLATE)
    titles = [w["properties"]["title"] for w in rendered["widgets"]]
    for topic in (
        "Queue depth",
        "Oldest waiting job",
        "Dead letters",
        "Jobs by outcome",
        "Job duration",
        "Worker memory and GPU memory",
        "Spot interruptions and standby",
        "Function errors",
    ):
        assert any(t.startswith(topic) for t in titles), topic
    for widget in rendered["widgets"]:
        assert widget["x"] + widget["width"] <= 24 and widget["properties"]["metrics"]


@pytest.mark.parametrize("parameters", STACKS.values(), ids=STACKS.keys())
def test_every_dashboard_metric_exists(parameters: dict[str, str]) -> None:
    view = View(TEMPLATE, parameters)
    assert check_dashboards(view) == []
    body, _ = dashboard_body(view, TEMPLATE["Resources"]["OperationsDashboard"]["Properties"])
    ours = [(n, d) for ns, n, d in dashboard_metrics(body) if ns == NAMESPACE]
    for name, dims in ours:
        if name in WORKER_METRICS:
            assert dims == {SERVICE_DIMENSION: "${WorkerMetricsService}"}, name
        else:
            assert name in FUNCTION_METRICS
            assert dims == {FUNCTION_SERVICE_DIMENSION: FUNCTION_SERVICE}, name


def test_job_duration_shows_p50_and_p95() -> None:
    rendered = render(TEMPLATE)
    (widget,) = [w for w in rendered["widgets"] if w["properties"]["title"].startswith("Job dur")]
    stats = [row[-1]["stat"] for row in widget["properties"]["metrics"]]
    assert stats == ["p50", "p95"]
    assert all(
        row[1] == WorkerMetric.JOB_DURATION_SECONDS for row in widget["properties"]["metrics"]
    )


def test_every_function_has_its_errors_on_the_dashboard() -> None:
    body, _ = dashboard_body(
        View(TEMPLATE), TEMPLATE["Resources"]["OperationsDashboard"]["Properties"]
    )
    shown = {d["FunctionName"] for ns, n, d in dashboard_metrics(body) if n == "Errors"}
    functions = [k for k, r in TEMPLATE["Resources"].items() if r["Type"] in FUNCTION_TYPES]
    assert {f"${{{f}}}" for f in functions} <= shown


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ('["spotline", "WorkerHartbeat", "Service", "x"]', "WorkerHartbeat is not a metric"),
        (
            '["AWS/SQS", "NumberOfMessagesSent", "QueueName", "${NoSuchQueue.QueueName}"]',
            "not a queue",
        ),
        ('["AWS/Lambda", "Errors", "FunctionName", "${GoneFunction}"]', "not a function"),
        ('["AWS/ECS", "CPUUtilization", "ClusterName", "c"]', "no check knows"),
    ],
)
def test_a_metric_nothing_emits_is_found(row: str, problem: str) -> None:
    template = copy.deepcopy(TEMPLATE)
    body, variables = dashboard(template)
    body = body.replace('"metrics": [\n', f'"metrics": [\n    {row},\n', 1)
    (resource,) = [
        r for r in template["Resources"].values() if r["Type"] == "AWS::CloudWatch::Dashboard"
    ]
    resource["Properties"]["DashboardBody"]["Fn::Sub"] = [body, variables]
    (finding,) = check_dashboards(View(template))
    assert problem in finding.message


def test_a_function_missing_from_the_dashboard_is_found() -> None:
    template = copy.deepcopy(TEMPLATE)
    template["Resources"]["UnlistedFunction"] = {"Type": "AWS::Serverless::Function"}
    (finding,) = check_dashboards(View(template))
    assert finding.message == "UnlistedFunction's errors are not on the dashboard"


@pytest.mark.parametrize("parameters", [{}, ONE_POOL], ids=["serverless", "one pool"])
def test_a_one_pool_stack_shows_the_dashboard_it_always_had(parameters: dict[str, str]) -> None:
    template = copy.deepcopy(TEMPLATE)
    body, variables = dashboard(template)
    without_tiers = body.replace("${TierWidgets}", "")
    variables = {k: v for k, v in variables.items() if k != "TierWidgets"}
    as_before = deployed(template, parameters).resolve({"Fn::Sub": [without_tiers, variables]})
    assert rendered_body(TEMPLATE, parameters) == as_before  # byte for byte
    widgets = json.loads(as_before)["widgets"]
    assert len(widgets) == 9 and max(w["y"] for w in widgets) == 12
    assert not any(w["properties"]["title"].startswith(TIER_TITLE) for w in widgets)


@pytest.mark.parametrize(
    ("parameters", "shown", "hidden"),
    [
        (LARGE, {"LargeTierQueue", "LargeTierDeadLetterQueue", "LargeTierGroup"}, {"OnDemand"}),
        (LANE, {"OnDemandQueue", "OnDemandDeadLetterQueue"}, {"LargeTier"}),
        (
            BOTH,
            {"LargeTierQueue", "LargeTierGroup", "OnDemandQueue", "OnDemandDeadLetterQueue"},
            set(),
        ),
    ],
    ids=["large tier", "lane", "both"],
)
def test_the_tier_row_shows_the_tiers_deployed_and_only_those(
    parameters: dict[str, str], shown: set[str], hidden: set[str]
) -> None:
    widgets = tier_widgets(parameters)  # a line naming a tier that is off would not resolve
    assert [(w["x"], w["y"]) for w in widgets] == [(0, 18), (8, 18), (16, 18)]
    names = dimension_values(widgets)
    assert {f"spotline-{logical_id}" for logical_id in shown} <= names
    assert not any(part in name for part in hidden for name in names)
    assert "spotline-JobsQueue" in names  # the default tier, for comparison
    deployed_names = {p.ref for p in deployed(TEMPLATE, parameters).resources.values()}
    resource_names = {n for n in names if n.startswith("spotline-")} - {"spotline-worker"}
    assert resource_names <= deployed_names


def test_the_tier_row_graphs_escalations_and_the_standby_for_the_lane() -> None:
    (_, _, workers) = tier_widgets(BOTH)
    metrics = {row[1]: row for row in workers["properties"]["metrics"]}
    assert metrics[WorkerMetric.JOBS_ESCALATED][-1]["stat"] == "Sum"
    assert "StandbyRunning" in metrics
    assert "StandbyRunning" not in {
        row[1] for row in tier_widgets(LARGE)[2]["properties"]["metrics"]
    }


def test_the_tier_age_widget_marks_the_tier_alarms_threshold() -> None:
    (_, age, _) = tier_widgets(BOTH)
    (line,) = age["properties"]["annotations"]["horizontal"]
    default = TEMPLATE["Parameters"]["QueueAgeAlarmSeconds"]["Default"]
    assert line["value"] == int(default)
    for alarm in ("LargeTierQueueAgeAlarm", "OnDemandQueueAgeAlarm"):
        threshold = TEMPLATE["Resources"][alarm]["Properties"]["Threshold"]
        assert threshold == {"Ref": "QueueAgeAlarmSeconds"}


def test_a_tier_line_on_a_tier_that_is_off_is_found() -> None:
    template = copy.deepcopy(TEMPLATE)
    _, variables = dashboard(template)
    inner = variables["TierWidgets"]["Fn::If"][1]["Fn::Sub"][1]
    lane_depth = inner["OnDemandDepth"]["Fn::If"][1]
    lane_depth["Fn::Sub"] = lane_depth["Fn::Sub"].replace("OnDemandQueue", "LargeTierQueue", 1)
    assert check_dashboards(View(template, LARGE)) == []
    (finding,) = check_dashboards(View(template, LANE))
    assert "LargeTierQueue.QueueName}: not a queue" in finding.message
