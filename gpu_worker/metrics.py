"""Worker metrics for CloudWatch, batched off the job's critical path.

Recording a value only appends to a list under a lock; a background thread flushes the batch
once per interval (60 s by default) as CloudWatch Embedded Metric Format lines on stdout (the
container's log driver ships them; CloudWatch extracts the metrics) or as PutMetricData calls
(at most one call per 1,000 data points per interval). A failed flush is logged, never raised.

Names come from ``spotline.metrics_names`` (the alarms and dashboard use the same; namespace
``spotline``); every metric has the dimension set {Service} and, when WORKER_METRICS_DIMENSIONS
adds some, also the full set:

| metric                   | unit    | what                                                  |
|--------------------------|---------|-------------------------------------------------------|
| `WorkerHeartbeat`        | Count   | 1 per interval while the loop is alive; absence alarms |
| `ContainerMemoryPercent` | Percent | container (cgroup) memory in use, % of its limit      |
| `ChildMemoryPeakPercent` | Percent | a job's peak analysis-child RSS, % of the job limit   |
| `GpuMemoryPercent`       | Percent | GPU memory in use (NVML; not emitted without a GPU)   |
| `ChildRestarts`          | Count   | analysis child restarts (OOM, crash, timeout)         |
| `JobsSucceeded`, `JobsRetried`, `JobsInterrupted`, `JobsDeadLettered` | Count | outcomes |
| `JobFailures`            | Count   | failed attempts, extra dimension `ErrorKind`          |
| `JobDurationSeconds`     | Seconds | one value per attempt                                 |
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import IO, Any, Protocol

from aws_lambda_powertools import Logger

from spotline.metrics_names import SERVICE_DIMENSION, WORKER_SERVICE, WorkerMetric

logger = Logger(service="spotline-worker", child=True)

# CloudWatch limits: 1,000 data points per PutMetricData call (150 values per datum), 100
# metrics per EMF document and 100 values per metric.
_PUT_BATCH = 1000
_MAX_VALUES = 100


def metric_dimensions(text: str, service: str = WORKER_SERVICE) -> dict[str, str]:
    """``Service`` = ``service``, plus ``"Fleet=gpu,Az=use1a"`` -> a dict; at most 28 dimensions
    (CloudWatch's 30 less the one a metric may add, with room)."""
    dimensions: dict[str, str] = {SERVICE_DIMENSION: service}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ValueError(f"dimension {part!r} is not Name=Value")
        dimensions[name.strip()] = value.strip()
    if len(dimensions) > 28:
        raise ValueError("at most 28 dimensions")
    return dimensions


HEARTBEAT = WorkerMetric.WORKER_HEARTBEAT
CONTAINER_MEMORY_PERCENT = WorkerMetric.CONTAINER_MEMORY_PERCENT
CHILD_MEMORY_PEAK_PERCENT = WorkerMetric.CHILD_MEMORY_PEAK_PERCENT
GPU_MEMORY_PERCENT = WorkerMetric.GPU_MEMORY_PERCENT
CHILD_RESTARTS = WorkerMetric.CHILD_RESTARTS
JOB_DURATION_SECONDS = WorkerMetric.JOB_DURATION_SECONDS
# Failed attempts by ErrorKind (its own dimension): not on the dashboard, for Logs/Insights
# and ad-hoc alarms; the outcome counts below are what the alarms and dashboard use.
JOB_FAILURES = "JobFailures"
# Decision outcome (consumer's label) -> its count metric.
OUTCOME_METRICS = {
    "SUCCEEDED": WorkerMetric.JOBS_SUCCEEDED,
    "RETRIED": WorkerMetric.JOBS_RETRIED,
    "REQUEUED": WorkerMetric.JOBS_INTERRUPTED,
    "DEAD_LETTERED": WorkerMetric.JOBS_DEAD_LETTERED,
    "ESCALATED": WorkerMetric.JOBS_ESCALATED,
}

# One data point set: (metric name, unit, the metric's own dimensions as sorted tuples).
Key = tuple[str, str, tuple[tuple[str, str], ...]]


def dimension_sets(base: dict[str, str], own: dict[str, str]) -> list[dict[str, str]]:
    """{Service} (what the alarms query) plus the metric's own dimensions; and the full set
    too when the configuration adds dimensions beyond Service."""
    service = {k: v for k, v in base.items() if k == SERVICE_DIMENSION}
    sets = [{**service, **own}]
    if set(base) - {SERVICE_DIMENSION}:
        sets.append({**base, **own})
    return sets


class Sink(Protocol):
    def publish(
        self, namespace: str, dimensions: dict[str, str], batch: dict[Key, list[float]]
    ) -> None: ...


class EmfSink:
    """One EMF JSON line per dimension set, to stdout."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream

    def publish(
        self, namespace: str, dimensions: dict[str, str], batch: dict[Key, list[float]]
    ) -> None:
        by_dims: dict[tuple[tuple[str, str], ...], list[tuple[str, str, list[float]]]] = (
            defaultdict(list)
        )
        for (name, unit, extra), values in batch.items():
            by_dims[extra].append((name, unit, values))
        stream = self._stream or sys.stdout
        timestamp = int(time.time() * 1000)
        for extra, metrics in by_dims.items():
            sets = dimension_sets(dimensions, dict(extra))
            dims = {k: v for one in sets for k, v in one.items()}
            for start in range(0, len(metrics), 100):
                chunk = metrics[start : start + 100]
                document: dict[str, Any] = {
                    "_aws": {
                        "Timestamp": timestamp,
                        "CloudWatchMetrics": [
                            {
                                "Namespace": namespace,
                                "Dimensions": [sorted(one) for one in sets],
                                "Metrics": [{"Name": n, "Unit": u} for n, u, _ in chunk],
                            }
                        ],
                    },
                    **dims,
                }
                for name, _, values in chunk:
                    document[name] = values[0] if len(values) == 1 else values[:_MAX_VALUES]
                stream.write(json.dumps(document, separators=(",", ":")) + "\n")
        stream.flush()


class CloudWatchSink:
    """PutMetricData with the client it is given (created once by the caller)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.calls = 0

    def publish(
        self, namespace: str, dimensions: dict[str, str], batch: dict[Key, list[float]]
    ) -> None:
        data: list[dict[str, Any]] = []
        for (name, unit, extra), values in batch.items():
            for one in dimension_sets(dimensions, dict(extra)):
                dims = [{"Name": k, "Value": v} for k, v in one.items()]
                for start in range(0, len(values), 150):
                    data.append(
                        {
                            "MetricName": name,
                            "Unit": unit,
                            "Dimensions": dims,
                            "Values": values[start : start + 150],
                        }
                    )
        for start in range(0, len(data), _PUT_BATCH):
            self._client.put_metric_data(
                Namespace=namespace, MetricData=data[start : start + _PUT_BATCH]
            )
            self.calls += 1


class GpuMemory:
    """GPU memory in use as % of total, the fullest device; None without NVML or a GPU."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._checked = False

    def percent(self) -> float | None:
        if not self._checked:
            self._checked = True
            try:
                import pynvml  # nvidia-ml-py: optional, present in the GPU image only

                pynvml.nvmlInit()
                self._nvml = pynvml
            except Exception:  # noqa: BLE001 - no library, no driver or no GPU: no metric
                logger.info("no NVML: GPU memory metric disabled")
                self._nvml = None
        if self._nvml is None:
            return None
        try:
            worst = 0.0
            for index in range(self._nvml.nvmlDeviceGetCount()):
                info = self._nvml.nvmlDeviceGetMemoryInfo(
                    self._nvml.nvmlDeviceGetHandleByIndex(index)
                )
                worst = max(worst, 100.0 * info.used / info.total)
            return round(worst, 2)
        except Exception:  # a flaky driver must not stop the other metrics
            logger.warning("NVML query failed", exc_info=True)
            return None


class WorkerMetrics:
    """Collects job and worker metrics; ``start()`` flushes them every ``interval_s``."""

    def __init__(
        self,
        sink: Sink | None,
        *,
        namespace: str,
        dimensions: dict[str, str],
        interval_s: float = 60.0,
        alive: Callable[[], bool] = lambda: True,
        container_memory_pct: Callable[[], float | None] = lambda: None,
        child_restarts: Callable[[], int] = lambda: 0,
        gpu: GpuMemory | None = None,
    ) -> None:
        self._sink = sink
        self.namespace = namespace
        self.dimensions = dimensions
        self.interval_s = interval_s
        self._alive = alive
        self._container_memory_pct = container_memory_pct
        self._child_restarts = child_restarts
        self._gpu = gpu or GpuMemory()
        self._batch: dict[Key, list[float]] = defaultdict(list)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._restarts_seen = 0
        self.flushes = 0
        self.failures = 0

    # -- recording (cheap: the job path only appends) -----------------------------------------

    def put(self, name: str, value: float, unit: str = "Count", **extra: str) -> None:
        if self._sink is None:
            return
        key: Key = (str(name), unit, tuple(sorted(extra.items())))
        with self._lock:
            self._batch[key].append(float(value))

    def record_job(
        self,
        outcome: str,
        *,
        error_kind: str | None,
        duration_s: float,
        peak_memory_pct: float | None,
    ) -> None:
        self.put(OUTCOME_METRICS.get(outcome, f"Jobs{outcome.title()}"), 1)
        if error_kind is not None:
            self.put(JOB_FAILURES, 1, ErrorKind=error_kind)
        self.put(JOB_DURATION_SECONDS, round(duration_s, 3), "Seconds")
        if peak_memory_pct is not None:
            self.put(CHILD_MEMORY_PEAK_PERCENT, round(peak_memory_pct, 2), "Percent")

    def record_infra_fault(self) -> None:
        """An AWS call failed while a job was handled; the job was released, not charged."""
        self.put(WorkerMetric.INFRA_FAULTS, 1)

    # -- flushing ------------------------------------------------------------------------------

    def sample(self) -> None:
        """The per-interval gauges: heartbeat, container and GPU memory, child restarts."""
        if self._alive():
            self.put(HEARTBEAT, 1)
        container_pct = self._container_memory_pct()
        if container_pct is not None:
            self.put(CONTAINER_MEMORY_PERCENT, container_pct, "Percent")
        gpu_pct = self._gpu.percent()
        if gpu_pct is not None:
            self.put(GPU_MEMORY_PERCENT, gpu_pct, "Percent")
        restarts = self._child_restarts()
        self.put(CHILD_RESTARTS, max(0, restarts - self._restarts_seen))
        self._restarts_seen = restarts

    def flush(self) -> bool:
        """Publish what was collected; False (and the batch dropped, logged) if it failed."""
        if self._sink is None:
            return True
        with self._lock:
            batch, self._batch = self._batch, defaultdict(list)
        if not batch:
            return True
        try:
            self._sink.publish(self.namespace, self.dimensions, dict(batch))
        except Exception:  # metrics must never take the worker down
            self.failures += 1
            logger.warning("metrics flush failed", exc_info=True)
            return False
        self.flushes += 1
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._tick()

    def _tick(self) -> None:
        try:
            self.sample()
        except Exception:
            logger.warning("metrics sampling failed", exc_info=True)
        self.flush()

    def start(self) -> None:
        if self._sink is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Last flush on the way out (jobs of the final minute still count)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._sink is not None:
            self._tick()


def sink_for(kind: str, cloudwatch_client: Callable[[], Any]) -> Sink | None:
    if kind == "off":
        return None
    if kind == "cloudwatch":
        return CloudWatchSink(cloudwatch_client())
    return EmfSink()
