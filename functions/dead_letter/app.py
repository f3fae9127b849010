"""DLQ -> job DEAD_LETTERED, operator alert (Slack/Discord), signed user notice.

Lambda's SQS event source delivers batches; a record whose alert or notice failed raises, is
reported in ``batchItemFailures`` and comes back (ReportBatchItemFailures).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from dead_letter.callbacks import CallbackSender
from dead_letter.dead_letters import DeadLetter, DeadLetterConfig, DeadLetterService
from dead_letter.ledger import MessageLedger
from spotline.alerts import AlertSender
from spotline.deadlines import Deadline, TimeBudget
from spotline.jobstore import JobStore
from spotline.settings import JobResources
from spotline.tracing import function_tracer

settings = JobResources.from_env()
config = DeadLetterConfig.from_env()
logger = Logger()
tracer = function_tracer()
metrics = Metrics()
# An all-failed batch is reported record by record, like any other partial failure.
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
# Kept out of the records' shares of the invocation's time: the last record's writes and the
# batch response must still happen before the function's timeout, or the whole batch is retried.
RESPONSE_RESERVE_S = 3.0


@functools.cache
def service() -> DeadLetterService:
    dynamodb = boto3.client("dynamodb")
    return DeadLetterService(
        store=JobStore(dynamodb, settings.jobs_table),
        ledger=MessageLedger(dynamodb, settings.jobs_table),
        alerts=AlertSender(config.channels),
        callbacks=CallbackSender(
            signing_key_ref=config.notice_key_ref,
            public_key=config.notice_public_key,
            legacy_secret_ref=config.legacy_secret_ref,
            test_mode=config.callback_test_mode,
        ),
        stack_name=config.stack_name,
        logger=logger,
    )


def record_handler(record: SQSRecord, deadlines: Iterator[Deadline]) -> None:
    letter = DeadLetter.from_event_record(record.raw_event)
    outcome = service().handle(letter, deadline=next(deadlines))
    metrics.add_metric(name=f"DeadLetters_{outcome.kind}", unit=MetricUnit.Count, value=1)


def _reportable(records: Any) -> list[dict[str, Any]]:
    """The records that can be reported back: objects with a messageId. Lambda never sends
    anything else; the batch processor would crash on it instead of reporting a failure."""
    if not isinstance(records, list):
        return []
    return [r for r in records if isinstance(r, dict) and isinstance(r.get("messageId"), str)]


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    records = event.get("Records") if isinstance(event, dict) else None
    reportable = _reportable(records)
    ignored = len(records) - len(reportable) if isinstance(records, list) else 1
    if ignored:
        # Nothing to retry and nothing to report: a retry would bring the same shape back.
        logger.warning("malformed records ignored", extra={"ignored": ignored})
    if not reportable:
        return {"batchItemFailures": []}
    # Each record may spend its share of the time left (a slow callback endpoint never starves
    # the records after it); one cut off by its deadline is reported failed and comes back.
    budget = TimeBudget(context.get_remaining_time_in_millis, reserve_s=RESPONSE_RESERVE_S)
    return process_partial_response(
        event={**event, "Records": reportable},
        record_handler=functools.partial(record_handler, deadlines=budget.shares(len(reportable))),
        processor=processor,
        context=context,
    )
