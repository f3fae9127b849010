"""The one factory: the polled sources a worker's settings ask for. Signals are a push source,
installed by the worker; everything else is wired here and nowhere else."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger

from gpu_worker.interruption.event import Monitor
from gpu_worker.interruption.gcp import GcpPreemptedMonitor
from gpu_worker.interruption.imds import ImdsClient
from gpu_worker.interruption.lifecycle import LifecycleAction, LifecycleMonitor
from gpu_worker.interruption.rebalance import RebalanceMonitor
from gpu_worker.interruption.spot import SpotNoticeMonitor
from gpu_worker.interruption.termination_tag import TerminationTagMonitor

if TYPE_CHECKING:
    from gpu_worker.config import WorkerConfig

logger = Logger(service="spotline-worker", child=True)


def monitors_for(config: WorkerConfig, *, autoscaling: Any = None) -> list[Monitor]:
    """Spot notice, rebalance and the termination tag (IMDS on), the ASG hook (IMDS on and
    WORKER_LIFECYCLE_HOOK set; ``autoscaling`` completes its action), GCP preemption (its
    endpoint set)."""
    monitors: list[Monitor] = []
    if config.imds_endpoint:
        # One client, one token, one availability, shared by every IMDS source.
        client = ImdsClient(config.imds_endpoint, token_ttl_s=config.imds_token_ttl_s)
        monitors.append(SpotNoticeMonitor(client, poll_s=config.imds_poll_s))
        monitors.append(RebalanceMonitor(client, poll_s=config.imds_poll_s))
        monitors.append(TerminationTagMonitor(client, poll_s=config.imds_poll_s))
        if config.lifecycle_hook:
            if autoscaling is None:
                raise ValueError("WORKER_LIFECYCLE_HOOK needs an autoscaling client")
            action = LifecycleAction(
                autoscaling,
                hook_name=config.lifecycle_hook,
                group_name=config.asg_name,
                instance_id=config.instance_id,
                imds=client,
            )
            monitors.append(LifecycleMonitor(client, poll_s=config.imds_poll_s, action=action))
    elif config.lifecycle_hook:
        logger.warning(
            "lifecycle hook not watched: IMDS is off (WORKER_IMDS_ENDPOINT)",
            extra={"hook": config.lifecycle_hook},
        )
    if config.gcp_metadata_endpoint:
        monitors.append(
            GcpPreemptedMonitor(config.gcp_metadata_endpoint, poll_s=config.imds_poll_s)
        )
    return monitors
