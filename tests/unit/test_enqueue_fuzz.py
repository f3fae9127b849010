"""Hostile input for the enqueue handler: generated from the job schema itself, and random."""

from __future__ import annotations

import copy
import json
from types import ModuleType
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from devstack.lambdas import LambdaContext, load_event
from pipeline.contract import job_schema
from pipeline.queue import JobQueue

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def post(enqueue: ModuleType, body: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    event = copy.deepcopy(load_event("enqueue_submit"))
    event["headers"] = {"content-type": "application/json", **(headers or {})}
    event["body"] = body
    return enqueue.handler(event, LambdaContext())


def drain(queue: JobQueue) -> list[dict[str, Any]]:
    """Every message now on the queue, removed, so each example counts only its own."""
    out = []
    while batch := queue.receive(max_messages=10, wait_s=0):
        for message in batch:
            out.append(json.loads(message.body))
            queue.delete(message.receipt_handle)
    return out


def in_stack_bucket(request: dict[str, Any], bucket: str) -> dict[str, Any]:
    if "input_uri" in request:
        request = {**request, "input_uri": f"s3://{bucket}/inputs/generated.json"}
    return request


@FUZZ
@given(request=from_schema(job_schema()))
def test_every_valid_request_gets_202_and_exactly_one_message(
    enqueue: ModuleType, queue: JobQueue, request: dict[str, Any]
) -> None:
    request = in_stack_bucket(request, enqueue.settings.data_bucket)
    response = post(enqueue, json.dumps(request))
    sent = drain(queue)
    if response["statusCode"] == 413:  # a generated input can exceed the queue's limit
        assert sent == []
        return
    assert response["statusCode"] == 202, response["body"]
    job_id = json.loads(response["body"])["job_id"]
    assert [m["job_id"] for m in sent] == [job_id]
    assert sent[0]["request"] == request


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=12,
)


@FUZZ
@given(
    body=st.one_of(
        st.text(max_size=300),
        st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
        json_values.map(json.dumps),
    ),
    key=st.one_of(st.none(), st.text(max_size=300)),
)
def test_random_bodies_never_get_5xx_and_never_send_unless_accepted(
    enqueue: ModuleType, queue: JobQueue, body: str, key: str | None
) -> None:
    headers = {"idempotency-key": key} if key is not None else None
    response = post(enqueue, body, headers)
    sent = drain(queue)
    assert response["statusCode"] < 500, response["body"]
    if response["statusCode"] == 202:
        assert len(sent) == 1
    else:
        assert response["statusCode"] in (400, 409, 413)
        assert sent == []


@FUZZ
@given(
    request=from_schema(job_schema()),
    field=st.sampled_from(["analyzer", "input", "input_uri", "params", "notify", "max_runtime_s"]),
    value=json_values,
)
def test_mutated_valid_requests_never_get_5xx(
    enqueue: ModuleType, queue: JobQueue, request: dict[str, Any], field: str, value: Any
) -> None:
    mutated = {**in_stack_bucket(request, enqueue.settings.data_bucket), field: value}
    response = post(enqueue, json.dumps(mutated))
    sent = drain(queue)
    assert response["statusCode"] in (202, 400, 413), response["body"]
    assert len(sent) == (1 if response["statusCode"] == 202 else 0)
