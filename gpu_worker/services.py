"""The worker's side services: the job memory guard, the health endpoint, the metrics flusher.

They run as threads of the supervisor process and read the worker only through one value,
``WorkerState`` (gpu_worker/worker_state.py), which the worker hands them as a callable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger

from gpu_worker.config import WorkerConfig
from gpu_worker.health import HealthServer, start_health_server, worker_snapshot
from gpu_worker.memory import MemoryGuard, container_memory, job_limit_bytes
from gpu_worker.metrics import WorkerMetrics, metric_dimensions, sink_for
from gpu_worker.supervisor import Supervisor
from gpu_worker.worker_state import WorkerState
from spotline.catalog import Catalog

logger = Logger(service="spotline-worker", child=True)


class WorkerServices:
    def __init__(
        self,
        config: WorkerConfig,
        supervisor: Supervisor,
        state: Callable[[], WorkerState],
        cloudwatch: Any = None,
    ) -> None:
        self.config = config
        self._state = state
        # -- poison jobs: the child's memory guard watches every job --
        self.container = container_memory()
        self.memory_guard = MemoryGuard(
            job_limit_bytes(config.job_memory_limit, self.container.limit_bytes),
            sample_s=config.memory_sample_s,
        )
        supervisor.watchers.append(self.memory_guard)
        self.stale_poll_s = max(90.0, 3.0 * (config.wait_s + 10))
        self.metrics = WorkerMetrics(
            sink_for(config.metrics_sink, lambda: cloudwatch),
            namespace=config.metrics_namespace,
            dimensions=metric_dimensions(config.metrics_dimensions, config.metrics_service),
            interval_s=config.metrics_interval_s,
            alive=lambda: self.snapshot()["ok"],
            container_memory_pct=lambda: container_memory().used_pct,
            child_restarts=lambda: supervisor.restarts,
        )
        self.health: HealthServer | None = None

    def warn_declared_memory(self, catalog: Catalog) -> None:
        """An analyzer that declares more memory than the job limit would end every job OOM
        here: say so at start, not job by job."""
        for name in catalog.names():
            needs_mib = catalog.entries[name].limit("memory_mib")
            if needs_mib and needs_mib * 1024 * 1024 > self.memory_guard.limit_bytes:
                logger.warning(
                    "analyzer declares more memory than this worker's job limit",
                    extra={
                        "analyzer": name,
                        "memory_mib": needs_mib,
                        "job_limit_bytes": self.memory_guard.limit_bytes,
                    },
                )

    def snapshot(self) -> dict[str, Any]:
        """What /healthz answers now."""
        return worker_snapshot(self._state(), stale_poll_s=self.stale_poll_s)

    def start(self) -> None:
        logger.info(
            "memory limits",
            extra={
                "container_limit_bytes": self.container.limit_bytes,
                "container_limit_source": self.container.source,
                "job_limit_bytes": self.memory_guard.limit_bytes,
            },
        )
        if self.memory_guard.limit_bytes >= self.container.limit_bytes:
            # The child would meet the container's OOM killer first: F1 all over again.
            logger.warning("job memory limit is not below the container limit")
        self.health = start_health_server(
            self.config.health_host, self.config.health_port, self.snapshot
        )
        self.metrics.start()

    def stop(self) -> None:
        if self.health is not None:
            self.health.stop()
            self.health = None
        self.memory_guard.close()
        self.metrics.close()
