"""EC2 spot events, the stop schedule and the periodic reconcile -> the on-demand standby.

EventBridge invokes this function asynchronously: an exception means Lambda retries the event
(twice, minutes apart). Only a standby still `stopping` is worth that; an event that cannot be
parsed is logged and dropped, so it never becomes a retry loop.
"""

from __future__ import annotations

import functools
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent
from aws_lambda_powertools.utilities.typing import LambdaContext

from spot_events import events, standby
from spot_events.fleet import Fleet, StopScheduler, Workload
from spotline.alerts import AlertSender, channels_from_env
from spotline.jobstore import JobStore
from spotline.metrics_names import FunctionMetric
from spotline.queue import JobQueue
from spotline.settings import JobResources
from spotline.tracing import function_tracer

settings = JobResources.from_env()
config = standby.StandbyConfig.from_env()
channels = channels_from_env()
logger = Logger()
tracer = function_tracer()
metrics = Metrics()


@functools.cache
def controller() -> standby.StandbyController:
    return standby.StandbyController(
        config,
        fleet=Fleet(boto3.client("ec2"), config.stack_name),
        scheduler=StopScheduler(
            boto3.client("scheduler"), config.schedule_group, config.scheduler_role_arn
        ),
        workload=Workload(
            JobQueue(boto3.client("sqs"), settings.jobs_queue_url),
            JobStore(boto3.client("dynamodb"), settings.jobs_table),
            lane_queue=(
                JobQueue(boto3.client("sqs"), config.on_demand_queue_url)
                if config.on_demand_queue_url
                else None
            ),
        ),
        logger=logger,
        alerts=AlertSender(channels) if channels else None,
    )


def _dispatch(event: dict[str, Any], target_arn: str) -> standby.StandbyOutcome:
    action = event.get("action")
    if action == events.STOP_ACTION:
        scheduled_at = events.parse_time(event.get("scheduled_at"))
        return controller().stop_standby(scheduled_at, target_arn=target_arn)
    if action == events.RECONCILE_ACTION:
        return controller().reconcile()
    if action is not None:
        raise events.MalformedEvent(f"unknown action {str(action)[:40]!r}")
    missing = [k for k in ("source", "detail-type", "detail", "time") if k not in event]
    if missing:
        raise events.MalformedEvent(f"not an EventBridge event: no {', '.join(missing)}")
    bridge = EventBridgeEvent(event)
    if bridge.source == "aws.events" and bridge.detail_type == "Scheduled Event":
        # The reconcile rule's own schedule.
        return controller().reconcile()
    if bridge.source != "aws.ec2":
        raise events.MalformedEvent(f"unexpected source {str(bridge.source)[:40]!r}")
    spot_event = events.parse_spot_event(bridge.detail_type, bridge.detail, bridge.time)
    if spot_event is None:
        return standby.StandbyOutcome("ignored", ("state change other than running",))
    logger.append_keys(instance_id=spot_event.instance_id)
    return controller().on_event(spot_event, target_arn=target_arn)


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        if not isinstance(event, dict):
            raise events.MalformedEvent("event is not an object")
        outcome = _dispatch(event, context.invoked_function_arn)
    except events.MalformedEvent as exc:
        # Retrying cannot fix a malformed event: log what was wrong (not the payload) and drop it.
        logger.warning("malformed event ignored", extra={"error": str(exc)[:200]})
        return standby.StandbyOutcome("ignored", ("malformed event",)).to_dict()
    except standby.StandbyMissing as exc:
        logger.error("no standby instance", extra={"error": str(exc)})
        return standby.StandbyOutcome("no-standby", (str(exc),)).to_dict()
    logger.info("spot event handled", extra=outcome.to_dict())
    if outcome.extra.get("first_notice"):
        metrics.add_metric(
            name=FunctionMetric.SPOT_INTERRUPTION_WARNINGS, unit=MetricUnit.Count, value=1
        )
    if "standby_running" in outcome.extra:
        metrics.add_metric(
            name=FunctionMetric.STANDBY_RUNNING,
            unit=MetricUnit.Count,
            value=int(outcome.extra["standby_running"]),
        )
    return outcome.to_dict()
