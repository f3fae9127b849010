"""Hostile input for the enqueue handler: generated from the job schema itself, and random."""

from __future__ import annotations

import copy
import json
from types import ModuleType
from typing import Any

import pytest
from botocore.exceptions import (
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from devstack.cfn import Stack
from devstack.lambdas import LambdaContext, load_event, load_handler_module
from spotline.catalog import Catalog, load_catalog
from spotline.contract import bound_violations, drill_analyzers, job_schema
from spotline.queue import JobQueue
from tests.unit.conftest import FailingClient

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def request_schema(catalog: Catalog, names: list[str] | None = None) -> dict[str, Any]:
    """The job schema as this catalog specialises it: the analyzer one of its names, and each
    analyzer's declared ``input`` and ``params`` schemas (what a request must meet in full)."""
    schema = copy.deepcopy(job_schema())
    names = catalog.names() if names is None else names
    schema["properties"]["analyzer"] = {"enum": names}
    schema["allOf"] = [
        {
            "if": {"properties": {"analyzer": {"const": name}}},
            "then": {
                "properties": {
                    "input": catalog.entries[name].input_schema,
                    "params": catalog.entries[name].params_schema,
                }
            },
        }
        for name in names
    ]
    return schema


VALID = request_schema(load_catalog())
DRILLS = request_schema(load_catalog(), drill_analyzers())


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


def within_policy(request: dict[str, Any], enqueue: ModuleType) -> dict[str, Any]:
    """A schema-valid request made valid for the stack too: its bucket, its runtime cap."""
    request = in_stack_bucket(request, enqueue.settings.data_bucket)
    if request.get("max_runtime_s", 0) > enqueue.settings.max_runtime_s:
        request = {**request, "max_runtime_s": enqueue.settings.max_runtime_s}
    return request


@pytest.fixture
def drills_enqueue(stack: Stack) -> ModuleType:
    """The enqueue handler of a stack with EnableDrillAnalyzers=true (devstack's)."""
    return load_handler_module(
        "enqueue.app", stack, "EnqueueFunction", {"ENABLE_DRILL_ANALYZERS": "true"}
    )


@FUZZ
@given(request=from_schema(VALID))
def test_every_valid_request_gets_202_and_exactly_one_message(
    drills_enqueue: ModuleType, queue: JobQueue, request: dict[str, Any]
) -> None:
    enqueue = drills_enqueue
    request = within_policy(request, enqueue)
    response = post(enqueue, json.dumps(request))
    sent = drain(queue)
    if response["statusCode"] == 413:  # a generated input can exceed the queue's limit
        assert sent == []
        return
    if bound_violations(request):  # a generated input can exceed the size bounds
        assert response["statusCode"] == 400 and sent == []
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
    request=from_schema(VALID),
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


# -- issue 16: hostile nesting, the stack's policy and AWS's network failures ------------------

NESTERS = {
    "array": ("[", "]"),
    "object": ('{"k":', "}"),
    "mixed": ('[{"k":', "}]"),
}
PLACES = {
    "body": ("", ""),
    "input": ('{"analyzer": "echo", "input": ', "}"),
    "params": ('{"analyzer": "echo", "input": 1, "params": {"p": ', "}}"),
}


@FUZZ
@given(
    depth=st.one_of(st.integers(1, 60), st.integers(60, 120_000)),
    nester=st.sampled_from(sorted(NESTERS)),
    place=st.sampled_from(sorted(PLACES)),
)
def test_nesting_at_any_depth_never_gets_5xx(
    enqueue: ModuleType, queue: JobQueue, depth: int, nester: str, place: str
) -> None:
    opening, closing = NESTERS[nester]
    before, after = PLACES[place]
    body = before + opening * depth + "1" + closing * depth + after
    response = post(enqueue, body)
    sent = drain(queue)
    assert response["statusCode"] in (202, 400, 413), response["body"]
    levels = depth * (2 if nester == "mixed" else 1) + (0 if place == "body" else 1)
    if levels > 32:  # contract.MAX_NESTING_DEPTH
        assert response["statusCode"] in (400, 413) and sent == []


@FUZZ
@given(request=from_schema(DRILLS))
def test_drill_requests_get_400_on_a_stack_without_drills(
    enqueue: ModuleType, queue: JobQueue, request: dict[str, Any]
) -> None:
    request = within_policy(request, enqueue)
    response = post(enqueue, json.dumps(request))
    assert drain(queue) == []
    if response["statusCode"] == 413:
        return
    assert response["statusCode"] == 400, response["body"]
    if not bound_violations(request):
        errors = json.loads(response["body"])["errors"]
        assert [e["path"] for e in errors] == ["$.analyzer"]
        assert "echo" in errors[0]["message"]


@FUZZ
@given(runtime=st.integers(21601, 43200), analyzer=st.sampled_from(["echo", "sleep"]))
def test_a_runtime_above_the_cap_gets_400(
    enqueue: ModuleType, queue: JobQueue, runtime: int, analyzer: str
) -> None:
    request = {"analyzer": analyzer, "input": None, "max_runtime_s": runtime}
    response = post(enqueue, json.dumps(request))
    assert drain(queue) == []
    assert response["statusCode"] == 400
    assert [e["path"] for e in json.loads(response["body"])["errors"]] == ["$.max_runtime_s"]


network_errors = st.sampled_from(
    [
        EndpointConnectionError(endpoint_url="https://aws.example"),
        ConnectTimeoutError(endpoint_url="https://aws.example"),
        ReadTimeoutError(endpoint_url="https://aws.example"),
        ConnectionClosedError(endpoint_url="https://aws.example"),
        NoCredentialsError(),
    ]
)


@FUZZ
@given(
    method=st.sampled_from(["put_item", "update_item", "send_message"]),
    error=network_errors,
    key=st.one_of(st.none(), st.text(min_size=1, max_size=40).filter(str.strip)),
)
def test_a_network_failure_of_any_aws_call_gets_503_with_retry_after(
    enqueue: ModuleType,
    queue: JobQueue,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    error: Exception,
    key: str | None,
) -> None:
    service = enqueue.job_queue() if method == "send_message" else enqueue.job_store()
    client = service.client if method == "send_message" else service._client
    with monkeypatch.context() as patch:
        if method == "send_message":
            patch.setattr(service, "client", FailingClient(client, method, error))
        else:
            patch.setattr(service, "_client", FailingClient(client, method, error))
        headers = {"idempotency-key": key} if key else None
        response = post(enqueue, json.dumps({"analyzer": "echo", "input": [key]}), headers)
    assert response["statusCode"] == 503, response["body"]
    assert response["headers"]["Retry-After"] == "2"
    # update_item is the mark after the send: the message went out, the retry or sweep dedupes.
    assert len(drain(queue)) == (1 if method == "update_item" else 0)
