"""Worker configuration from environment variables (the list: gpu_worker/variables.py)."""

from __future__ import annotations

import re
from dataclasses import MISSING, dataclass, fields

from gpu_worker.memory import job_limit_bytes
from gpu_worker.metrics import metric_dimensions
from gpu_worker.variables import IMDS_ENDPOINT, read_all
from spotline.contract import DEFAULT_MAX_RUNTIME_S, RequestPolicy
from spotline.settings import MissingSetting

_ANALYZER_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


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
    # -- capacity tiers (gpu_worker/escalation.py); empty tier: a one-pool stack --
    tier: str = ""
    escalation_tier: str = ""
    escalation_queue_url: str = ""
    on_demand_queue_url: str = ""
    preemptions_before_on_demand: int = 2
    # A queue taken from after this worker's own (gpu_worker/queues.py): the standby with the
    # on-demand lane covers the jobs queue too.
    cover_queue_url: str = ""
    cover_dlq_url: str = ""

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
    def defaults(cls) -> dict[str, object]:
        """Each field's default (the required ones have none)."""
        return {f.name: f.default for f in fields(cls) if f.default is not MISSING}

    @classmethod
    def from_env(cls) -> WorkerConfig:
        """Every variable of gpu_worker/variables.py, checked (MissingSetting names the bad one)."""
        config = cls(**read_all(cls.defaults()))
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
        if self.preemptions_before_on_demand < 1:
            raise MissingSetting("WORKER_PREEMPTIONS_BEFORE_ON_DEMAND must be at least 1")

    def describe(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
