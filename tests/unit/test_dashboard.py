"""The operations dashboard: it renders, and every metric on it exists (a resource of the
template, or a metric the worker / functions emit, named in spotline.metrics_names)."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from devstack.cfn import load_template
from spotline.metrics_names import (
    FUNCTION_METRICS,
    FUNCTION_SERVICE,
    FUNCTION_SERVICE_DIMENSION,
    NAMESPACE,
    SERVICE_DIMENSION,
    WORKER_METRICS,
    WorkerMetric,
)
from spotline_ops.doctor import View, check_dashboards, dashboard_metrics

TEMPLATE = load_template()
FUNCTION_TYPES = ("AWS::Serverless::Function", "AWS::Lambda::Function")


def dashboard(template: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    (resource,) = [
        r for r in template["Resources"].values() if r["Type"] == "AWS::CloudWatch::Dashboard"
    ]
    body, variables = resource["Properties"]["DashboardBody"]["Fn::Sub"]
    return body, variables


def render(template: dict[str, Any]) -> dict[str, Any]:
    """The body as CloudFormation renders it, with a sample value for each ${...}."""
    body, variables = dashboard(template)
    resources = template["Resources"]
    parameters = template["Parameters"]

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "AWS::Region":
            return "us-east-1"
        if name in variables:
            return "spotline-workers"
        logical = name.split(".")[0]
        if logical in parameters:
            return str(parameters[logical]["Default"])
        assert logical in resources, f"${{{name}}} names nothing in the template"
        return f"spotline-{logical}"

    return json.loads(re.sub(r"\$\{([^}]+)\}", value, body))


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


def test_every_dashboard_metric_exists() -> None:
    assert check_dashboards(View(TEMPLATE)) == []
    body, _ = dashboard(TEMPLATE)
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
    body, _ = dashboard(TEMPLATE)
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
