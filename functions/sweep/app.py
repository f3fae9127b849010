"""Scheduled: send the message of every job stored but never sent (see stranded.py)."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from spotline.jobstore import JobStore
from spotline.metrics_names import FunctionMetric
from spotline.queue import JobQueue
from spotline.tracing import function_tracer
from sweep import stranded

settings = stranded.SweepSettings.from_env()
logger = Logger()
tracer = function_tracer()
metrics = Metrics()


@functools.cache
def job_store() -> JobStore:
    return JobStore(boto3.client("dynamodb"), settings.jobs.jobs_table)


@functools.cache
def job_queue() -> JobQueue:
    return JobQueue(boto3.client("sqs"), settings.jobs.jobs_queue_url)


@functools.cache
def tier_queues() -> dict[str, JobQueue]:
    """Each tier's queue (JOB_TIERS); the default tier's is the jobs queue's own client."""
    sqs = boto3.client("sqs")
    return {
        tier.name: job_queue()
        if tier.queue_url == settings.jobs.jobs_queue_url
        else JobQueue(sqs, tier.queue_url)
        for tier in settings.tiers
    }


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: Any, context: LambdaContext) -> dict[str, Any]:
    # The schedule's event carries nothing the sweep needs: any event means "sweep now".
    result = stranded.sweep(
        job_store(),
        job_queue(),
        now=datetime.now(UTC),
        stranded_after_s=settings.stranded_after_s,
        logger=logger,
        tier_queues=tier_queues(),
    )
    metrics.add_metric(
        name=FunctionMetric.STRANDED_JOBS_SENT, unit=MetricUnit.Count, value=len(result.sent)
    )
    logger.info(
        "sweep finished",
        extra={
            "sent": len(result.sent),
            "cleared": len(result.cleared),
            "failed": len(result.failed),
        },
    )
    if result.failed:
        # An invocation error is the SweepFunction-errors alarm; the next run tries again.
        raise stranded.StrandedJobsNotSent(
            f"{len(result.failed)} stranded job(s) not sent: {sorted(result.failed)[:10]}"
        )
    return result.to_dict()
