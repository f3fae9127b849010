"""The worker's environment variables: one list, read by ``WorkerConfig.from_env`` and printed by
``python -m gpu_worker --help``. A variable added here is read and documented at once; each
one's default is the ``WorkerConfig`` field's (gpu_worker/config.py)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from spotline.settings import MissingSetting, require_env

IMDS_ENDPOINT = "http://169.254.169.254"
OFF_WORDS = {"off", "none", "false"}


def read_required(name: str, default: Any) -> str:
    return require_env(name)


def read_string(name: str, default: Any) -> str:
    """Stripped; unset or empty is the default."""
    return os.environ.get(name, "").strip() or str(default)


def read_lower(name: str, default: Any) -> str:
    return read_string(name, default).lower()


def read_float(name: str, default: Any) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return float(default)
    try:
        return float(raw)
    except ValueError as exc:
        raise MissingSetting(f"{name} must be a number, got {raw!r}") from exc


def read_int(name: str, default: Any) -> int:
    value = read_float(name, float(default))
    if value != int(value):
        raise MissingSetting(f"{name} must be an integer, got {value!r}")
    return int(value)


def read_flag(name: str, default: Any) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return bool(default)
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise MissingSetting(f"{name} must be true or false, got {raw!r}")


def read_switch(name: str, default: Any) -> str:
    """An endpoint or path: unset is the default, ``off``, ``none`` or ``false`` turn it off."""
    raw = os.environ.get(name)
    if raw is None:
        return str(default)
    raw = raw.strip()
    return "" if raw.lower() in OFF_WORDS else raw


def read_imds_endpoint(name: str, default: Any) -> str:
    """WORKER_IMDS_ENDPOINT, else botocore's AWS_EC2_METADATA_SERVICE_ENDPOINT, else EC2's."""
    fallback = os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT", "").strip() or IMDS_ENDPOINT
    return read_switch(name, fallback)


def read_worker_id(name: str, default: Any) -> str:
    return os.environ.get(name) or f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class Variable:
    name: str  # the environment variable
    field: str  # the WorkerConfig field it sets
    read: Callable[[str, Any], Any]  # (name, the field's default) -> value
    help: str
    default_text: str | None = None  # what --help shows when the field's default does not say


VARIABLES: tuple[Variable, ...] = (
    Variable("WORKER_QUEUE_URL", "queue_url", read_required, "the job queue's URL (required)"),
    Variable("WORKER_DLQ_URL", "dlq_url", read_required, "the dead-letter queue's URL (required)"),
    Variable("WORKER_TABLE_NAME", "table_name", read_required, "the job table (required)"),
    Variable("WORKER_BUCKET", "bucket", read_required, "inputs, results, checkpoints (required)"),
    Variable(
        "WORKER_ID", "worker_id", read_worker_id, "this worker's name in job records", "HOST-PID"
    ),
    Variable(
        "WORKER_VISIBILITY_WINDOW_S",
        "visibility_window_s",
        read_int,
        "SQS visibility window; extended every third of it (3 to 43200)",
    ),
    Variable("WORKER_WAIT_S", "wait_s", read_int, "long-poll wait (0 to 20)"),
    Variable(
        "WORKER_MAX_ATTEMPTS", "max_attempts", read_int, "attempts before a job is dead-lettered"
    ),
    Variable("WORKER_BACKOFF_BASE_S", "backoff_base_s", read_float, "first retry's delay"),
    Variable("WORKER_BACKOFF_MAX_S", "backoff_max_s", read_float, "longest retry delay"),
    Variable(
        "WORKER_MAX_INTERRUPTIONS",
        "max_interruptions",
        read_int,
        "preemptions a job may take before it is dead-lettered",
    ),
    Variable(
        "WORKER_CHECKPOINT_GRACE_S",
        "checkpoint_grace_s",
        read_float,
        "time a stopping job gets to checkpoint",
    ),
    Variable("WORKER_TICK_S", "tick_s", read_float, "the supervisor's watch interval"),
    Variable("WORKER_MAX_INPUT_BYTES", "max_input_bytes", read_int, "largest input object read"),
    Variable(
        "WORKER_IMDS_ENDPOINT",
        "imds_endpoint",
        read_imds_endpoint,
        "IMDS for spot notices, rebalance, the ASG hook (off: none)",
        "AWS_EC2_METADATA_SERVICE_ENDPOINT or EC2's",
    ),
    Variable("WORKER_IMDS_POLL_S", "imds_poll_s", read_float, "IMDS poll interval"),
    Variable(
        "WORKER_IMDS_TOKEN_TTL_S",
        "imds_token_ttl_s",
        read_int,
        "IMDSv2 token lifetime (1 to 21600)",
    ),
    Variable(
        "WORKER_GCP_METADATA_ENDPOINT",
        "gcp_metadata_endpoint",
        read_switch,
        "GCP metadata server for the preempted flag (empty: off)",
    ),
    Variable(
        "WORKER_LIFECYCLE_HOOK",
        "lifecycle_hook",
        read_string,
        "ASG termination hook to drain on and complete (empty: none)",
    ),
    Variable("WORKER_ASG_NAME", "asg_name", read_string, "the hook's group (empty: from IMDS)"),
    Variable(
        "WORKER_INSTANCE_ID", "instance_id", read_string, "the hook's instance (empty: from IMDS)"
    ),
    Variable(
        "WORKER_REBALANCE_ACTION",
        "rebalance_action",
        lambda n, d: read_switch(n, d).lower(),
        "on a rebalance recommendation: drain, checkpoint or keep",
    ),
    Variable(
        "WORKER_WORK_THROUGH_NOTICE",
        "work_through_notice",
        read_flag,
        "under a notice with a deadline, keep taking jobs that end before it",
    ),
    Variable(
        "WORKER_CHECKPOINT_DIR",
        "checkpoint_dir",
        read_switch,
        "checkpoints in this folder (e.g. EFS) instead of S3",
    ),
    Variable(
        "WORKER_JOB_MEMORY_LIMIT",
        "job_memory_limit",
        read_string,
        "the analysis child's limit: bytes, 256Mi, 2G or 70%",
        "85% of the container",
    ),
    Variable(
        "WORKER_MEMORY_SAMPLE_S",
        "memory_sample_s",
        read_float,
        "memory guard's sample interval (0.001 to 1)",
    ),
    Variable("WORKER_HEALTH_HOST", "health_host", read_string, "/healthz address"),
    Variable("WORKER_HEALTH_PORT", "health_port", read_int, "/healthz port (0: any free)"),
    Variable("WORKER_METRICS", "metrics_sink", read_lower, "emf (stdout), cloudwatch or off"),
    Variable("WORKER_METRICS_NAMESPACE", "metrics_namespace", read_string, "metric namespace"),
    Variable(
        "WORKER_METRICS_SERVICE",
        "metrics_service",
        read_string,
        "the Service dimension the alarms query",
    ),
    Variable(
        "WORKER_METRICS_DIMENSIONS",
        "metrics_dimensions",
        read_string,
        "more dimensions: Fleet=gpu,Region=eu",
    ),
    Variable("WORKER_METRICS_INTERVAL_S", "metrics_interval_s", read_float, "metrics flush"),
    Variable("WORKER_PREFETCH", "prefetch", read_int, "messages held ahead (0: off, up to 9)"),
    Variable(
        "WORKER_PREFETCH_MAX_JOB_S",
        "prefetch_max_job_s",
        read_float,
        "prefetch only while jobs take less",
    ),
    Variable("WORKER_ACK_DELAY_S", "ack_delay_s", read_float, "batched deletes' wait"),
    Variable(
        "WORKER_PRELOAD",
        "preload",
        read_string,
        "analyzers loaded when the child starts (comma list)",
    ),
    Variable("WORKER_PRELOAD_TIMEOUT_S", "preload_timeout_s", read_float, "preload's limit"),
    Variable(
        "WORKER_ANALYZERS",
        "analyzers",
        read_string,
        "analyzers this worker runs (comma list; empty: all installed)",
    ),
    Variable("WORKER_IMAGE", "image", read_string, "the image, named in the catalog"),
    Variable(
        "WORKER_MAX_RUNTIME_S",
        "max_runtime_s",
        read_int,
        "every attempt's runtime cap (1 to 43200)",
    ),
    Variable(
        "WORKER_ENABLE_DRILLS",
        "enable_drills",
        read_flag,
        "run the drill analyzers (never in production)",
    ),
    Variable(
        "WORKER_MAX_RECEIVE_COUNT", "max_receive_count", read_int, "the queue's maxReceiveCount"
    ),
    Variable(
        "WORKER_DEGRADED_AFTER_FAULTS",
        "degraded_after_faults",
        read_int,
        "AWS faults in a row before /healthz says degraded",
    ),
    Variable(
        "WORKER_AWS_MAX_ATTEMPTS",
        "aws_max_attempts",
        read_int,
        "botocore's tries per AWS call, standard mode (1 to 20)",
    ),
    Variable("WORKER_TIER", "tier", read_string, "this worker's capacity tier (empty: one pool)"),
    Variable(
        "WORKER_ESCALATION_TIER",
        "escalation_tier",
        read_string,
        "the next larger tier an OOM job moves to (empty: none)",
    ),
    Variable(
        "WORKER_ESCALATION_QUEUE_URL",
        "escalation_queue_url",
        read_string,
        "that tier's queue (empty: an OOM job is retried here)",
    ),
    Variable(
        "WORKER_ON_DEMAND_QUEUE_URL",
        "on_demand_queue_url",
        read_string,
        "the on-demand lane's queue (empty: no lane)",
    ),
    Variable(
        "WORKER_COVER_QUEUE_URL",
        "cover_queue_url",
        read_string,
        "a queue also taken from, after this worker's own (the standby with the lane: the jobs"
        " queue, so spot gaps stay covered; empty: none)",
    ),
    Variable(
        "WORKER_COVER_DLQ_URL",
        "cover_dlq_url",
        read_string,
        "that queue's dead-letter queue (required with WORKER_COVER_QUEUE_URL)",
    ),
    Variable(
        "WORKER_PREEMPTIONS_BEFORE_ON_DEMAND",
        "preemptions_before_on_demand",
        read_int,
        "spot preemptions before a job moves to the on-demand lane",
    ),
)


# Read by the text_embed analyzer itself when it loads (gpu_worker/analyzers/text_embed.py), not by
# WorkerConfig: listed here so that --help shows them too.
ANALYZER_VARIABLES: tuple[tuple[str, str], ...] = (
    ("WORKER_MODEL_DEVICE", "text_embed's device: cpu, cuda, cuda:1 [CUDA when present]"),
    ("WORKER_MODEL_THREADS", "text_embed's CPU threads [torch's default]"),
    ("WORKER_MODEL_BATCH_SIZE", "text_embed's texts per model call [32]"),
)


def read_all(defaults: dict[str, Any]) -> dict[str, Any]:
    """Every variable's value by field name, ``defaults`` (the fields' own) where unset."""
    return {v.field: v.read(v.name, defaults.get(v.field, "")) for v in VARIABLES}


def describe(defaults: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(variable, default, help) for each variable, for ``--help``."""
    rows = []
    for variable in VARIABLES:
        if variable.read is read_required:
            shown = "required"
        elif variable.default_text is not None:
            shown = variable.default_text
        else:
            value = defaults.get(variable.field, "")
            shown = str(value).lower() if isinstance(value, bool) else (str(value) or "(empty)")
        rows.append((variable.name, shown, variable.help))
    return rows
