"""Worker configuration from environment variables (documented in the README)."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, fields

from gpu_worker.memory import job_limit_bytes
from gpu_worker.metrics import metric_dimensions
from spotline.contract import DEFAULT_MAX_RUNTIME_S, RequestPolicy
from spotline.settings import MissingSetting, require_env

_ANALYZER_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
IMDS_ENDPOINT = "http://169.254.169.254"


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise MissingSetting(f"{name} must be a number, got {raw!r}") from exc


def _text(name: str, default: str) -> str:
    """A string setting; ``off`` or ``none`` turn an endpoint off."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    raw = raw.strip()
    return "" if raw.lower() in {"off", "none", "false"} else raw


def _imds_endpoint() -> str:
    """WORKER_IMDS_ENDPOINT, else botocore's AWS_EC2_METADATA_SERVICE_ENDPOINT, else EC2's."""
    fallback = os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT", "").strip() or IMDS_ENDPOINT
    return _text("WORKER_IMDS_ENDPOINT", fallback)


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise MissingSetting(f"{name} must be true or false, got {raw!r}")


def _int(name: str, default: int) -> int:
    value = _float(name, float(default))
    if value != int(value):
        raise MissingSetting(f"{name} must be an integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class WorkerConfig:
    queue_url: str
    dlq_url: str
    table_name: str
    bucket: str
    worker_id: str
    visibility_window_s: int = 120
    wait_s: int = 20
    max_attempts: int = 3
    backoff_base_s: float = 10.0
    backoff_max_s: float = 900.0
    max_interruptions: int = 10
    checkpoint_grace_s: float = 20.0
    tick_s: float = 0.1
    max_input_bytes: int = 64 * 1024 * 1024
    # Preemption (see gpu_worker/interruption/): where notices come from, how to react.
    imds_endpoint: str = IMDS_ENDPOINT  # every IMDS source; "" (off) turns them all off
    imds_poll_s: float = 2.0
    imds_token_ttl_s: int = 21600
    gcp_metadata_endpoint: str = ""
    # The ASG termination hook (the fleet's user data sets them): watched through IMDS and
    # completed after the job is released; the instance id and group are read from IMDS if unset.
    lifecycle_hook: str = ""
    asg_name: str = ""
    instance_id: str = ""
    rebalance_action: str = "drain"
    # Under a notice with a deadline, keep taking the jobs that end before it (stop_policy.py).
    work_through_notice: bool = True
    checkpoint_dir: str = ""
    # -- poison jobs: memory guard, health, metrics (README "worker configuration") --
    job_memory_limit: str = ""  # bytes, "256Mi", "2G" or "70%"; empty: 85 % of the container
    memory_sample_s: float = 0.01
    health_host: str = "127.0.0.1"
    health_port: int = 8080  # 0: any free port (logged)
    metrics_sink: str = "emf"  # emf (stdout) | cloudwatch (PutMetricData) | off
    metrics_namespace: str = "spotline"
    metrics_service: str = "spotline-worker"  # the Service dimension the alarms query
    metrics_dimensions: str = ""  # more dimensions: "Fleet=gpu,Region=eu"
    metrics_interval_s: float = 60.0
    # -- throughput (gpu_worker/prefetch.py): messages held ahead while a backlog lasts --
    prefetch: int = 4
    prefetch_max_job_s: float = 2.0
    ack_delay_s: float = 0.2
    # -- analyzers loaded when the analysis child starts, before it takes a job (comma list) --
    preload: str = ""
    preload_timeout_s: float = 300.0
    # -- which installed analyzers this worker runs (comma list; empty: every one installed) --
    analyzers: str = ""
    # The image this worker runs from (named in the catalog and in a refused job's error).
    image: str = ""
    # -- a job's boundaries (DESIGN.md): every attempt's runtime cap, drills off by default --
    max_runtime_s: int = DEFAULT_MAX_RUNTIME_S
    enable_drills: bool = False
    # The queue's maxReceiveCount: a message released for AWS faults this often is re-sent
    # fresh instead, so SQS's redrive never dead-letters a job for AWS's failures.
    max_receive_count: int = 6
    # This many AWS faults in a row and health says "degraded".
    degraded_after_faults: int = 3
    # botocore's tries per AWS call before a fault reaches the worker (its own retries).
    aws_max_attempts: int = 5

    @property
    def policy(self) -> RequestPolicy:
        """The rules every job request meets here, the same the enqueue function applies."""
        return RequestPolicy(
            bucket=self.bucket, drills_enabled=self.enable_drills, max_runtime_s=self.max_runtime_s
        )

    @property
    def preload_names(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.preload.split(",") if name.strip())

    @property
    def analyzer_names(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.analyzers.split(",") if name.strip())

    @classmethod
    def from_env(cls) -> WorkerConfig:
        config = cls(
            queue_url=require_env("WORKER_QUEUE_URL"),
            dlq_url=require_env("WORKER_DLQ_URL"),
            table_name=require_env("WORKER_TABLE_NAME"),
            bucket=require_env("WORKER_BUCKET"),
            worker_id=os.environ.get("WORKER_ID") or f"{socket.gethostname()}-{os.getpid()}",
            visibility_window_s=_int("WORKER_VISIBILITY_WINDOW_S", 120),
            wait_s=_int("WORKER_WAIT_S", 20),
            max_attempts=_int("WORKER_MAX_ATTEMPTS", 3),
            backoff_base_s=_float("WORKER_BACKOFF_BASE_S", 10.0),
            backoff_max_s=_float("WORKER_BACKOFF_MAX_S", 900.0),
            max_interruptions=_int("WORKER_MAX_INTERRUPTIONS", 10),
            checkpoint_grace_s=_float("WORKER_CHECKPOINT_GRACE_S", 20.0),
            tick_s=_float("WORKER_TICK_S", 0.1),
            max_input_bytes=_int("WORKER_MAX_INPUT_BYTES", 64 * 1024 * 1024),
            imds_endpoint=_imds_endpoint(),
            imds_poll_s=_float("WORKER_IMDS_POLL_S", 2.0),
            imds_token_ttl_s=_int("WORKER_IMDS_TOKEN_TTL_S", 21600),
            gcp_metadata_endpoint=_text("WORKER_GCP_METADATA_ENDPOINT", ""),
            lifecycle_hook=os.environ.get("WORKER_LIFECYCLE_HOOK", "").strip(),
            asg_name=os.environ.get("WORKER_ASG_NAME", "").strip(),
            instance_id=os.environ.get("WORKER_INSTANCE_ID", "").strip(),
            rebalance_action=_text("WORKER_REBALANCE_ACTION", "drain").lower(),
            work_through_notice=_flag("WORKER_WORK_THROUGH_NOTICE", True),
            checkpoint_dir=_text("WORKER_CHECKPOINT_DIR", ""),
            job_memory_limit=os.environ.get("WORKER_JOB_MEMORY_LIMIT", "").strip(),
            memory_sample_s=_float("WORKER_MEMORY_SAMPLE_S", 0.01),
            health_host=os.environ.get("WORKER_HEALTH_HOST", "").strip() or "127.0.0.1",
            health_port=_int("WORKER_HEALTH_PORT", 8080),
            metrics_sink=os.environ.get("WORKER_METRICS", "").strip().lower() or "emf",
            metrics_namespace=os.environ.get("WORKER_METRICS_NAMESPACE", "").strip() or "spotline",
            metrics_service=os.environ.get("WORKER_METRICS_SERVICE", "").strip()
            or "spotline-worker",
            metrics_dimensions=os.environ.get("WORKER_METRICS_DIMENSIONS", ""),
            metrics_interval_s=_float("WORKER_METRICS_INTERVAL_S", 60.0),
            prefetch=_int("WORKER_PREFETCH", 4),
            prefetch_max_job_s=_float("WORKER_PREFETCH_MAX_JOB_S", 2.0),
            ack_delay_s=_float("WORKER_ACK_DELAY_S", 0.2),
            preload=os.environ.get("WORKER_PRELOAD", ""),
            preload_timeout_s=_float("WORKER_PRELOAD_TIMEOUT_S", 300.0),
            analyzers=os.environ.get("WORKER_ANALYZERS", ""),
            image=os.environ.get("WORKER_IMAGE", "").strip(),
            max_runtime_s=_int("WORKER_MAX_RUNTIME_S", DEFAULT_MAX_RUNTIME_S),
            enable_drills=_flag("WORKER_ENABLE_DRILLS", False),
            max_receive_count=_int("WORKER_MAX_RECEIVE_COUNT", 6),
            degraded_after_faults=_int("WORKER_DEGRADED_AFTER_FAULTS", 3),
            aws_max_attempts=_int("WORKER_AWS_MAX_ATTEMPTS", 5),
        )
        config.check()
        return config

    def check(self) -> None:
        if not 3 <= self.visibility_window_s <= 43200:
            raise MissingSetting("WORKER_VISIBILITY_WINDOW_S must be between 3 and 43200")
        if not 0 <= self.wait_s <= 20:
            raise MissingSetting("WORKER_WAIT_S must be between 0 and 20 (SQS long-poll limit)")
        if self.max_attempts < 1:
            raise MissingSetting("WORKER_MAX_ATTEMPTS must be at least 1")
        if self.imds_poll_s <= 0:
            raise MissingSetting("WORKER_IMDS_POLL_S must be above 0")
        if not 1 <= self.imds_token_ttl_s <= 21600:
            raise MissingSetting("WORKER_IMDS_TOKEN_TTL_S must be between 1 and 21600")
        if self.rebalance_action not in {"drain", "checkpoint", "keep"}:
            raise MissingSetting("WORKER_REBALANCE_ACTION must be drain, checkpoint or keep")
        if self.checkpoint_grace_s < 0:
            raise MissingSetting("WORKER_CHECKPOINT_GRACE_S must not be negative")
        try:
            job_limit_bytes(self.job_memory_limit, 1 << 30)
            metric_dimensions(self.metrics_dimensions)
        except ValueError as exc:
            raise MissingSetting(
                f"WORKER_JOB_MEMORY_LIMIT / WORKER_METRICS_DIMENSIONS: {exc}"
            ) from exc
        if not 0 <= self.health_port <= 65535:
            raise MissingSetting("WORKER_HEALTH_PORT must be between 0 and 65535")
        if self.metrics_sink not in ("emf", "cloudwatch", "off"):
            raise MissingSetting("WORKER_METRICS must be emf, cloudwatch or off")
        if not 0.001 <= self.memory_sample_s <= 1:
            raise MissingSetting("WORKER_MEMORY_SAMPLE_S must be between 0.001 and 1")
        if not 0 <= self.prefetch <= 9:
            raise MissingSetting("WORKER_PREFETCH must be between 0 (off) and 9")
        if self.prefetch_max_job_s < 0:
            raise MissingSetting("WORKER_PREFETCH_MAX_JOB_S must not be negative")
        if not 0 <= self.ack_delay_s <= self.visibility_window_s / 3:
            raise MissingSetting("WORKER_ACK_DELAY_S must be between 0 and a third of the window")
        if any(not _ANALYZER_NAME.match(name) for name in self.preload_names):
            raise MissingSetting("WORKER_PRELOAD must be analyzer names separated by commas")
        if any(not _ANALYZER_NAME.match(name) for name in self.analyzer_names):
            raise MissingSetting("WORKER_ANALYZERS must be analyzer names separated by commas")
        narrowed = set(self.analyzer_names)
        outside = [name for name in self.preload_names if narrowed and name not in narrowed]
        if outside:
            raise MissingSetting(
                f"WORKER_PRELOAD names analyzers outside WORKER_ANALYZERS: {', '.join(outside)}"
            )
        if self.preload_timeout_s <= 0:
            raise MissingSetting("WORKER_PRELOAD_TIMEOUT_S must be above 0")
        if not 1 <= self.max_runtime_s <= 43200:
            # SQS caps a receipt's visibility at 12 h in total: no attempt may outlive it.
            raise MissingSetting("WORKER_MAX_RUNTIME_S must be between 1 and 43200")
        if self.max_receive_count < 1:
            raise MissingSetting("WORKER_MAX_RECEIVE_COUNT must be at least 1")
        if not 1 <= self.aws_max_attempts <= 20:
            raise MissingSetting("WORKER_AWS_MAX_ATTEMPTS must be between 1 and 20")
        if self.degraded_after_faults < 1:
            raise MissingSetting("WORKER_DEGRADED_AFTER_FAULTS must be at least 1")

    def describe(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
