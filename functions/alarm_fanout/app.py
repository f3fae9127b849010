"""CloudWatch alarms (SNS notification or EventBridge state change) and the worker log's
"analysis child fell over" lines (CloudWatch Logs subscription) → chat, webhook, email."""

from __future__ import annotations

import functools
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from alarm_fanout.child_notices import CHILD_SUPPRESSED
from alarm_fanout.delivery_memory import DeliveryLedger, FlapTracker
from alarm_fanout.fanout import AlarmFanout, AlarmTags, EmailChannel, FanoutOutcome, FanoutSettings
from alarm_fanout.notice_bursts import ChildNoticeBursts
from alarm_fanout.routing import Routing
from spotline.alerts import AlertSender, channels_from_env
from spotline.deadlines import TimeBudget
from spotline.metrics_names import FunctionMetric
from spotline.tracing import function_tracer

settings = FanoutSettings.from_env()
channels = channels_from_env()  # a listed channel without its secret fails here, at cold start
logger = Logger()
tracer = function_tracer()
metrics = Metrics()
# Kept out of the notices' shares of the invocation's time: the ledger writes after the last
# delivery and the verdict must happen before the function's timeout.
RESPONSE_RESERVE_S = 3.0


class FanoutIncomplete(RuntimeError):
    """Some channel did not take an alarm: Lambda retries the invocation (channels that took it
    are skipped), and after the last retry the event lands in the on-failure queue."""


def _tag_lookup_failed(arn: str, exc: Exception) -> None:
    logger.warning("alarm tags unavailable", extra={"alarm_arn": arn, "error": type(exc).__name__})


@functools.cache
def fanout() -> AlarmFanout:
    dynamodb = boto3.client("dynamodb")
    email = (
        EmailChannel(boto3.client("sns"), settings.email_topic_arn)
        if settings.email_topic_arn
        else None
    )
    names = [c.name for c in channels] + ([email.name] if email else [])
    return AlarmFanout(
        sender=AlertSender(channels),
        routing=Routing.parse(settings.routes, settings.default_channels, names),
        ledger=DeliveryLedger(dynamodb, settings.deliveries_table),
        flaps=FlapTracker(
            dynamodb,
            settings.deliveries_table,
            max_changes=settings.flap_max_changes,
            window_s=settings.flap_window_s,
        ),
        bursts=ChildNoticeBursts(
            dynamodb,
            settings.deliveries_table,
            burst=settings.child_notice_burst,
            window_s=settings.child_notice_window_s,
        ),
        email=email,
        tags=AlarmTags(boto3.client("cloudwatch"), on_error=_tag_lookup_failed),
        child_notice_name=settings.child_notice_name,
        region=settings.region,
    )


def _record(outcome: FanoutOutcome) -> None:
    extra = {"alarm": outcome.name, "transition": outcome.key, "decision": outcome.decision}
    for channel, delivery in outcome.deliveries.items():
        fields = {**extra, "channel": channel, "status": delivery.status}
        if delivery.ok:
            logger.info("alarm delivered", extra={**fields, "attempts": delivery.attempts})
            metrics.add_metric(str(FunctionMetric.ALARM_NOTIFICATIONS), MetricUnit.Count, 1)
        else:
            logger.error("alarm delivery failed", extra={**fields, "error": delivery.error})
            metrics.add_metric(str(FunctionMetric.ALARM_DELIVERY_FAILURES), MetricUnit.Count, 1)
    if outcome.skipped:
        logger.info("already delivered", extra={**extra, "channels": list(outcome.skipped)})
    if outcome.busy:
        logger.warning(
            "still being delivered elsewhere", extra={**extra, "channels": list(outcome.busy)}
        )
    if outcome.warning:
        logger.warning("posted despite a failure", extra={**extra, "problem": outcome.warning})
    if outcome.decision == CHILD_SUPPRESSED:
        logger.info(
            "child notice held back: burst per window reached",
            extra={**extra, "repeat": outcome.repeat},
        )
        if not outcome.repeat:
            metrics.add_metric(str(FunctionMetric.CHILD_NOTICES_HELD_BACK), MetricUnit.Count, 1)
    if outcome.decision == "suppress":
        logger.info("flapping: transition summarised, not posted", extra=extra)
        metrics.add_metric(str(FunctionMetric.ALARMS_SUPPRESSED_FLAPPING), MetricUnit.Count, 1)


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    budget = TimeBudget(context.get_remaining_time_in_millis, reserve_s=RESPONSE_RESERVE_S)
    outcomes = fanout().handle(event, budget=budget)
    for outcome in outcomes:
        if outcome.decision == "forward":
            logger.warning(
                "unreadable alarm notification forwarded",
                extra={"ref": outcome.key, "problem": outcome.problem, "excerpt": outcome.excerpt},
            )
        _record(outcome)
    failed = {o.key: o.failed for o in outcomes if not o.ok}
    if failed:
        raise FanoutIncomplete(f"undelivered: {failed}")
    return {
        "notices": len(outcomes),
        "delivered": sum(len(o.deliveries) for o in outcomes),
        "skipped": sum(len(o.skipped) for o in outcomes),
    }
