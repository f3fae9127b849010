"""HTTP API: POST /jobs queues a job, GET /jobs/{job_id} reports it."""

from __future__ import annotations

import base64
import binascii
import functools
import json
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import BotoCoreError

from enqueue import submission
from enqueue.callers import AccessPolicy, Caller, Unidentified
from spotline.contract import InvalidJob, SchemaViolation, is_job_id, parse_request
from spotline.jobstore import JobStore, JobStoreError
from spotline.metrics_names import FunctionMetric
from spotline.queue import JobQueue, QueueError
from spotline.settings import Settings
from spotline.tracing import function_tracer

settings = Settings.from_env()
# The stack's rules beyond the schema (bucket, drill analyzers, runtime cap), built once.
policy = settings.request_policy()
# Who may see which job (callers.py): the submitter only under JWT, the account under IAM.
access = AccessPolicy.from_env()
logger = Logger()
tracer = function_tracer()
metrics = Metrics()
app = APIGatewayHttpResolver()


@functools.cache
def job_store() -> JobStore:
    return JobStore(boto3.client("dynamodb"), settings.jobs_table)


@functools.cache
def job_queue() -> JobQueue:
    return JobQueue(boto3.client("sqs"), settings.jobs_queue_url)


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(
        status_code=status,
        content_type="application/json",
        body=json.dumps(body, separators=(",", ":")),
        headers=headers,
    )


def _request_body() -> str:
    event = app.current_event
    raw = event.body or ""
    if len(raw) > 2 * settings.max_message_bytes:  # reject before decoding anything huge
        raise submission.PayloadTooLarge(f"request body exceeds {settings.max_message_bytes} bytes")
    if event.is_base64_encoded:
        try:
            decoded = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidJob(
                "request body is not valid base64",
                [SchemaViolation("$", "invalid base64 body")],
            ) from exc
        try:
            raw = decoded.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidJob(
                "request body is not UTF-8 text", [SchemaViolation("$", "invalid UTF-8")]
            ) from exc
    if len(raw.encode("utf-8")) > settings.max_message_bytes:
        raise submission.PayloadTooLarge(f"request body exceeds {settings.max_message_bytes} bytes")
    return raw


def _status_url(job_id: str) -> str:
    domain = app.current_event.request_context.get("domainName")  # absent: a relative URL
    return f"https://{domain}/jobs/{job_id}" if domain else f"/jobs/{job_id}"


def _caller() -> Caller:
    return access.caller(app.current_event.raw_event.get("requestContext"))


@app.post("/jobs")
def submit_job() -> Response:
    caller = _caller()
    request = parse_request(_request_body(), policy)
    key = app.current_event.headers.get("idempotency-key")
    job = submission.submit(
        request,
        store=job_store(),
        queue=job_queue(),
        max_message_bytes=settings.max_message_bytes,
        idempotency_key=key,
        input_bucket=settings.data_bucket,
        submitter=caller.principal,
    )
    logger.info("job queued", extra={"job_id": job.job_id, "analyzer": request["analyzer"]})
    metrics.add_metric(name=FunctionMetric.JOBS_SUBMITTED, unit=MetricUnit.Count, value=1)
    return _json(
        202,
        {"job_id": job.job_id, "status": str(job.status), "status_url": _status_url(job.job_id)},
    )


@app.get("/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    caller = _caller()
    record = job_store().get(job_id) if is_job_id(job_id) else None
    # Another caller's job is answered exactly as a missing one: ids reveal nothing.
    if record is None or not access.may_read(caller, record):
        return _json(404, {"message": f"no job {job_id[:64]!r}"})
    return _json(200, record.to_public())


@app.exception_handler(InvalidJob)
def invalid_job(error: InvalidJob) -> Response:
    return _json(400, {"message": str(error), "errors": [v.to_dict() for v in error.violations]})


@app.exception_handler(Unidentified)
def unidentified(error: Unidentified) -> Response:
    return _json(401, {"message": str(error)})


@app.exception_handler(submission.InvalidIdempotencyKey)
def invalid_key(error: submission.InvalidIdempotencyKey) -> Response:
    return _json(400, {"message": str(error), "errors": []})


@app.exception_handler(submission.PayloadTooLarge)
def too_large(error: submission.PayloadTooLarge) -> Response:
    return _json(413, {"message": str(error)})


@app.exception_handler(submission.IdempotencyConflict)
def conflict(error: submission.IdempotencyConflict) -> Response:
    return _json(409, {"message": str(error)})


# JobStore and JobQueue translate ClientError (throttling, 5xx); a network failure (no
# connection, a timeout) reaches here as botocore's own BotoCoreError. Either way AWS failed,
# not the request: 503, never a 500 that counts as the function's error.
@app.exception_handler(JobStoreError)
@app.exception_handler(QueueError)
@app.exception_handler(BotoCoreError)
def unavailable(error: Exception) -> Response:
    # The client may retry (with the same Idempotency-Key); a job stored but not sent is
    # sent by the sweep (functions/sweep) if it never does.
    logger.exception("dependency failed", extra={"error_type": type(error).__name__})
    return _json(503, {"message": "temporarily unavailable, retry"}, {"Retry-After": "2"})


@app.not_found
def not_found(_: Exception) -> Response:
    return _json(404, {"message": "no such route"})


def _malformed(event: Any) -> str | None:
    """What makes an event unusable as an HTTP API (payload 2.0) request, if anything: the
    resolver reads these fields unguarded, and a KeyError there would be a 502 with no log."""
    if not isinstance(event, dict):
        return "event is not an object"
    context = event.get("requestContext")
    http = context.get("http") if isinstance(context, dict) else None
    if not isinstance(http, dict) or not isinstance(http.get("method"), str):
        return "no requestContext.http.method"
    checks = {
        "rawPath": (str,),
        "headers": (dict, type(None)),
        "body": (str, type(None)),
        "isBase64Encoded": (bool, type(None)),
        "pathParameters": (dict, type(None)),
        "queryStringParameters": (dict, type(None)),
        "cookies": (list, type(None)),
        "rawQueryString": (str, type(None)),
    }
    for key, types in checks.items():
        if not isinstance(event.get(key), types):
            return f"{key} has the wrong type"
    if not isinstance(context.get("stage"), str):
        return "no requestContext.stage"
    if not isinstance(context.get("domainName"), str | None):
        return "requestContext.domainName has the wrong type"
    headers = event.get("headers") or {}
    if not all(isinstance(v, str) for v in headers.values()):
        return "a header value is not text"
    if not all(isinstance(v, str) for v in (event.get("pathParameters") or {}).values()):
        return "a path parameter is not text"
    return None


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    problem = _malformed(event)
    if problem is not None:
        logger.warning("malformed HTTP event rejected", extra={"problem": problem})
        response = _json(400, {"message": f"malformed request: {problem}"})
        return {
            "statusCode": response.status_code,
            "headers": {"Content-Type": "application/json"},
            "body": response.body,
            "isBase64Encoded": False,
        }
    return app.resolve(event, context)
