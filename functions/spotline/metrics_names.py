"""The custom CloudWatch metrics spotline emits, named once.

The worker publishes these (namespace ``spotline``, dimension ``Service`` = the worker's service
name); the template's alarms and dashboard refer to them by these names, and a test checks that
every metric on the dashboard is either a resource metric of the template or one of these.
Renaming one here without renaming it in ``template.yaml`` fails that test.
"""

from __future__ import annotations

import enum

NAMESPACE = "spotline"
# The worker's metrics carry this dimension; its value is the worker's service name
# (template parameter ``WorkerMetricsService``, worker env ``WORKER_METRICS_SERVICE``).
SERVICE_DIMENSION = "Service"
WORKER_SERVICE = "spotline-worker"
# Metrics the Lambda functions emit through Powertools carry Powertools' own dimension.
FUNCTION_SERVICE_DIMENSION = "service"
FUNCTION_SERVICE = "spotline"


class WorkerMetric(enum.StrEnum):
    """Emitted by the GPU worker (supervisor), with their units and meaning."""

    # Count, 1 per minute per live worker: its absence is the "worker heartbeat missing" alarm.
    WORKER_HEARTBEAT = "WorkerHeartbeat"
    # Percent of the container's memory limit (cgroup memory.current / memory.max), not bytes.
    CONTAINER_MEMORY_PERCENT = "ContainerMemoryPercent"
    # Percent of the analysis child's own memory limit, peak over the reporting period.
    CHILD_MEMORY_PEAK_PERCENT = "ChildMemoryPeakPercent"
    # Percent of GPU memory in use (NVML); not emitted where there is no GPU.
    GPU_MEMORY_PERCENT = "GpuMemoryPercent"
    # Count: the analysis child died (OOM, crash) and was restarted.
    CHILD_RESTARTS = "ChildRestarts"
    # Counts of job outcomes.
    JOBS_SUCCEEDED = "JobsSucceeded"
    JOBS_DEAD_LETTERED = "JobsDeadLettered"
    JOBS_RETRIED = "JobsRetried"
    JOBS_INTERRUPTED = "JobsInterrupted"
    # Count: the outcome was to escalate (an OOM to the next larger tier, a job preempted too
    # often to the on-demand lane; gpu_worker/escalation.py). Counted when decided: a copy that
    # could not be sent falls back to the ordinary path and still counts here.
    JOBS_ESCALATED = "JobsEscalated"
    # Seconds from claim to outcome, one sample per job (dashboards use p50/p95).
    JOB_DURATION_SECONDS = "JobDurationSeconds"
    # Count: an AWS call failed (throttling, network, 5xx) while handling a job; the message
    # was released with backoff and no attempt was counted. Sustained: the "AWS failing" alarm.
    INFRA_FAULTS = "InfraFaults"


class FunctionMetric(enum.StrEnum):
    """Emitted by the Lambda functions (Powertools Metrics, namespace ``spotline``)."""

    JOBS_SUBMITTED = "JobsSubmitted"  # enqueue
    SPOT_INTERRUPTION_WARNINGS = "SpotInterruptionWarnings"  # spot_events
    # Gauge 0/1: the on-demand standby is running (spot_events, on each action and reconcile).
    STANDBY_RUNNING = "StandbyRunning"  # spot_events
    ALARM_NOTIFICATIONS = "AlarmNotifications"  # alarm_fanout: deliveries that succeeded
    ALARM_DELIVERY_FAILURES = "AlarmDeliveryFailures"  # alarm_fanout
    ALARMS_SUPPRESSED_FLAPPING = "AlarmsSuppressedFlapping"  # alarm_fanout
    # Child-fell-over notices held back by the flood control (a Lambda retry counts once).
    CHILD_NOTICES_HELD_BACK = "ChildNoticesHeldBack"  # alarm_fanout
    # Jobs stored QUEUED but never sent (enqueue died between the two), sent by the sweep.
    STRANDED_JOBS_SENT = "StrandedJobsSent"  # sweep


WORKER_METRICS = frozenset(m.value for m in WorkerMetric)
FUNCTION_METRICS = frozenset(m.value for m in FunctionMetric)
