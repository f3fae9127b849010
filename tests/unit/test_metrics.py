from __future__ import annotations

import io
import json
import sys
import types
from typing import Any

import boto3
import pytest

from devstack.motoserver import wait_until
from gpu_worker.consumer import OUTCOME_LABELS
from gpu_worker.decisions import Action
from gpu_worker.metrics import (
    CloudWatchSink,
    EmfSink,
    GpuMemory,
    WorkerMetrics,
    metric_dimensions,
)
from spotline.metrics_names import WorkerMetric

BASE = {"Service": "spotline-worker"}


class RecordingClient:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail = fail

    def put_metric_data(self, **kwargs: Any) -> None:
        if self.fail:
            raise RuntimeError("throttled")
        self.calls.append(kwargs)


class NoGpu(GpuMemory):
    def percent(self) -> float | None:
        return None


def metrics(sink: Any, dimensions: dict[str, str] = BASE, **kwargs: Any) -> WorkerMetrics:
    return WorkerMetrics(
        sink,
        namespace="spotline",
        dimensions=dimensions,
        gpu=kwargs.pop("gpu", NoGpu()),
        **kwargs,
    )


def documents(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_dimensions_always_have_the_service_the_alarms_query() -> None:
    assert metric_dimensions("") == BASE
    assert metric_dimensions("Fleet=gpu, Az=a", "svc") == {
        "Service": "svc",
        "Fleet": "gpu",
        "Az": "a",
    }
    with pytest.raises(ValueError):
        metric_dimensions("Fleet")


def test_emf_documents_carry_namespace_dimensions_and_values() -> None:
    stream = io.StringIO()
    collector = metrics(EmfSink(stream))
    collector.record_job("DEAD_LETTERED", error_kind="OOM", duration_s=1.25, peak_memory_pct=101)
    collector.record_job("SUCCEEDED", error_kind=None, duration_s=0.5, peak_memory_pct=10)
    collector.record_job("RETRIED", error_kind="TIMEOUT", duration_s=2, peak_memory_pct=None)
    assert collector.flush()
    docs = documents(stream)
    base = next(d for d in docs if "ErrorKind" not in d)
    (directive,) = base["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "spotline" and directive["Dimensions"] == [["Service"]]
    units = {m["Name"]: m["Unit"] for m in directive["Metrics"]}
    assert units == {
        "JobsDeadLettered": "Count",
        "JobsSucceeded": "Count",
        "JobsRetried": "Count",
        "JobDurationSeconds": "Seconds",
        "ChildMemoryPeakPercent": "Percent",
    }
    assert base["Service"] == "spotline-worker"
    assert base["JobDurationSeconds"] == [1.25, 0.5, 2.0]
    assert base["ChildMemoryPeakPercent"] == [101.0, 10.0]
    assert base["JobsSucceeded"] == 1.0
    failures = {d["ErrorKind"]: d for d in docs if "ErrorKind" in d}
    assert set(failures) == {"OOM", "TIMEOUT"}
    assert failures["OOM"]["JobFailures"] == 1.0
    assert failures["OOM"]["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [
        ["ErrorKind", "Service"]
    ]
    written = stream.getvalue()
    assert collector.flush()  # nothing new: nothing written
    assert stream.getvalue() == written


def test_an_escalation_is_counted_under_the_name_the_dashboard_graphs() -> None:
    stream = io.StringIO()
    collector = metrics(EmfSink(stream))
    collector.record_job(
        OUTCOME_LABELS[Action.ESCALATE], error_kind="OOM", duration_s=1, peak_memory_pct=99
    )
    assert collector.flush()
    base = next(d for d in documents(stream) if "ErrorKind" not in d)
    assert base[WorkerMetric.JOBS_ESCALATED] == 1.0


def test_extra_dimensions_add_a_second_dimension_set() -> None:
    stream = io.StringIO()
    collector = metrics(EmfSink(stream), dimensions={**BASE, "Fleet": "gpu"})
    collector.record_job("SUCCEEDED", error_kind=None, duration_s=1, peak_memory_pct=None)
    collector.flush()
    (doc,) = documents(stream)
    assert doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["Service"], ["Fleet", "Service"]]
    assert doc["Fleet"] == "gpu"


def test_heartbeat_container_memory_and_child_restarts_each_interval() -> None:
    restarts = [0]
    alive = [True]
    stream = io.StringIO()
    collector = metrics(
        EmfSink(stream),
        alive=lambda: alive[0],
        container_memory_pct=lambda: 42.5,
        child_restarts=lambda: restarts[0],
    )
    restarts[0] = 2
    collector.sample()
    alive[0] = False
    restarts[0] = 3
    collector.sample()
    collector.flush()
    (document,) = documents(stream)
    assert document["WorkerHeartbeat"] == 1.0  # only the interval where the loop was alive
    assert document["ContainerMemoryPercent"] == [42.5, 42.5]
    assert document["ChildRestarts"] == [2.0, 1.0]  # per interval, not the running total
    assert "GpuMemoryPercent" not in document


def test_put_metric_data_is_one_call_per_batch() -> None:
    client = RecordingClient()
    collector = metrics(CloudWatchSink(client), dimensions={**BASE, "Fleet": "gpu"})
    for index in range(500):
        collector.record_job("SUCCEEDED", error_kind=None, duration_s=index, peak_memory_pct=5)
    collector.flush()
    assert len(client.calls) == 1
    data = client.calls[0]["MetricData"]
    durations = [d for d in data if d["MetricName"] == "JobDurationSeconds"]
    # Both dimension sets, every value once in each.
    assert sum(len(d["Values"]) for d in durations) == 1000
    assert all(len(d["Values"]) <= 150 for d in data)
    assert {tuple(x["Name"] for x in d["Dimensions"]) for d in durations} == {
        ("Service",),
        ("Service", "Fleet"),
    }


def test_put_metric_data_against_cloudwatch(aws: None) -> None:
    client = boto3.client("cloudwatch", region_name="us-east-1")
    collector = metrics(CloudWatchSink(client))
    collector.record_job("RETRIED", error_kind="TIMEOUT", duration_s=3, peak_memory_pct=20)
    assert collector.flush()
    found = client.list_metrics(Namespace="spotline")["Metrics"]
    names = {m["MetricName"] for m in found}
    assert {"JobsRetried", "JobFailures", "JobDurationSeconds", "ChildMemoryPeakPercent"} <= names
    retried = next(m for m in found if m["MetricName"] == "JobsRetried")
    assert retried["Dimensions"] == [{"Name": "Service", "Value": "spotline-worker"}]


def test_a_failing_flush_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    collector = metrics(CloudWatchSink(RecordingClient(fail=True)))
    collector.record_job("SUCCEEDED", error_kind=None, duration_s=1, peak_memory_pct=None)
    assert collector.flush() is False
    assert collector.failures == 1
    assert "metrics flush failed" in caplog.text


def test_metrics_off_records_nothing() -> None:
    collector = metrics(None)
    collector.record_job("SUCCEEDED", error_kind=None, duration_s=1, peak_memory_pct=None)
    collector.start()
    assert collector.flush() and collector.flushes == 0
    collector.close()


def test_background_thread_flushes_every_interval() -> None:
    stream = io.StringIO()
    collector = metrics(EmfSink(stream), interval_s=0.05)
    collector.start()
    try:
        wait_until(lambda: collector.flushes >= 2, timeout=5, what="two flushes")
    finally:
        collector.close()
    assert stream.getvalue().count('"WorkerHeartbeat"') >= 2


def test_gpu_memory_is_absent_without_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails as if not installed
    assert GpuMemory().percent() is None


def test_gpu_memory_reports_the_fullest_device(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda index: index,
        nvmlDeviceGetMemoryInfo=lambda handle: types.SimpleNamespace(
            used=[4, 12][handle] * 2**30, total=16 * 2**30
        ),
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert GpuMemory().percent() == 75.0
