from __future__ import annotations

import base64
import copy
import json
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

import boto3
import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from devstack.cfn import Stack
from devstack.lambdas import LambdaContext, load_event, load_handler_module
from enqueue.callers import AccessPolicy, AuthMode
from spotline.catalog import load_catalog
from spotline.contract import (
    DEFAULT_MAX_RUNTIME_S,
    JobStatus,
    RequestPolicy,
    analyzer_names,
    drill_analyzers,
    job_id_for_idempotency_key,
)
from spotline.jobstore import JobStore
from spotline.queue import JobQueue
from spotline.settings import MissingSetting, Settings
from tests.unit.conftest import FailingClient

# The IAM signer of the sample events: what their Idempotency-Keys are scoped to.
SAMPLE_CALLER = (
    AccessPolicy(AuthMode.IAM).caller(load_event("enqueue_submit")["requestContext"]).principal
)


def call(enqueue: ModuleType, event: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = enqueue.handler(event, LambdaContext())
    return response["statusCode"], json.loads(response["body"])


def submit_event(body: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
    event = copy.deepcopy(load_event("enqueue_submit"))
    event["headers"] = {"content-type": "application/json", **(headers or {})}
    event["body"] = body if isinstance(body, str) else json.dumps(body)
    return event


def messages(queue: JobQueue) -> list[dict[str, Any]]:
    return [json.loads(m.body) for m in queue.receive(max_messages=10, wait_s=0)]


def test_sample_event_is_accepted_and_queued(
    enqueue: ModuleType, queue: JobQueue, job_store: JobStore
) -> None:
    status, body = call(enqueue, load_event("enqueue_submit"))
    assert status == 202
    assert body["status"] == "QUEUED" and body["status_url"].endswith(f"/jobs/{body['job_id']}")
    sent = messages(queue)
    assert [m["job_id"] for m in sent] == [body["job_id"]]
    assert sent[0]["request"]["analyzer"] == "echo"
    record = job_store.get(body["job_id"])
    assert record is not None and record.sent


def test_invalid_sample_event_lists_every_failing_path(
    enqueue: ModuleType, queue: JobQueue
) -> None:
    status, body = call(enqueue, load_event("enqueue_submit_invalid"))
    assert status == 400
    paths = {e["path"] for e in body["errors"]}
    assert {"$.analyzer", "$.notify.callback_url", "$.max_runtime_s"} <= paths
    assert messages(queue) == []


@pytest.mark.parametrize(
    ("request_body", "path"),
    [
        ({"input": {}}, "$"),
        ({"analyzer": ["echo"], "input": {}}, "$.analyzer"),
        ({"analyzer": "unknown", "input": {}}, "$.analyzer"),
        ({"analyzer": "echo", "input": 1, "input_uri": "s3://bucket-a/key"}, "$"),
        ({"analyzer": "echo"}, "$"),
        (
            {"analyzer": "echo", "input": 1, "notify": {"callback_url": "http://a.example"}},
            "$.notify.callback_url",
        ),
    ],
)
def test_schema_violations_get_400_naming_the_path(
    enqueue: ModuleType, queue: JobQueue, request_body: dict, path: str
) -> None:
    status, body = call(enqueue, submit_event(request_body))
    assert status == 400
    assert path in {e["path"] for e in body["errors"]}
    assert messages(queue) == []


@pytest.mark.parametrize("raw", ["\x00\x01garbage", "{", "[]", "", "null"])
def test_garbage_bodies_get_400(enqueue: ModuleType, raw: str) -> None:
    status, body = call(enqueue, submit_event(raw))
    assert status == 400 and body["errors"]


def test_undecodable_base64_body_gets_400(enqueue: ModuleType) -> None:
    event = submit_event("")
    event["body"], event["isBase64Encoded"] = "!!!not base64!!!", True
    assert call(enqueue, event)[0] == 400
    event["body"] = base64.b64encode(b"\xff\xfe\xfd").decode()
    assert call(enqueue, event)[0] == 400


def test_base64_body_is_decoded(enqueue: ModuleType) -> None:
    event = submit_event("")
    event["isBase64Encoded"] = True
    event["body"] = base64.b64encode(b'{"analyzer": "echo", "input": 1}').decode()
    assert call(enqueue, event)[0] == 202


def test_body_over_the_queue_limit_gets_413(enqueue: ModuleType, queue: JobQueue) -> None:
    big = {"analyzer": "echo", "input": "x" * enqueue.settings.max_message_bytes}
    status, body = call(enqueue, submit_event(big))
    assert status == 413 and "bytes" in body["message"]
    assert messages(queue) == []


def test_idempotency_key_twice_is_one_job_and_one_message(
    enqueue: ModuleType, queue: JobQueue
) -> None:
    request = {"analyzer": "echo", "input": {"n": 1}}
    first = call(enqueue, submit_event(request, {"idempotency-key": "abc"}))
    second = call(enqueue, submit_event(request, {"idempotency-key": "abc"}))
    assert first[0] == second[0] == 202
    assert first[1]["job_id"] == second[1]["job_id"]
    assert len(messages(queue)) == 1


def test_idempotency_key_reused_with_another_request_is_409(enqueue: ModuleType) -> None:
    call(enqueue, submit_event({"analyzer": "echo", "input": 1}, {"idempotency-key": "k"}))
    status, _ = call(
        enqueue, submit_event({"analyzer": "echo", "input": 2}, {"idempotency-key": "k"})
    )
    assert status == 409


def test_job_is_stored_before_the_send_and_a_retry_sends_it(
    enqueue: ModuleType, queue: JobQueue, job_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = {"analyzer": "echo", "input": 1}
    real_send = queue.client.send_message

    def failing_send(**kwargs: Any) -> Any:
        raise ClientError({"Error": {"Code": "ServiceUnavailable", "Message": "x"}}, "SendMessage")

    monkeypatch.setattr(enqueue.job_queue().client, "send_message", failing_send)
    status, _ = call(enqueue, submit_event(request, {"idempotency-key": "retry-me"}))
    assert status == 503
    monkeypatch.setattr(enqueue.job_queue().client, "send_message", real_send)
    status, body = call(enqueue, submit_event(request, {"idempotency-key": "retry-me"}))
    assert status == 202
    assert [m["job_id"] for m in messages(queue)] == [body["job_id"]]
    assert job_store.get(body["job_id"]).sent


def test_get_job_reports_status_and_unknown_is_404(enqueue: ModuleType) -> None:
    _, submitted = call(enqueue, submit_event({"analyzer": "echo", "input": 1}))
    event = copy.deepcopy(load_event("enqueue_get_job"))
    event["pathParameters"] = {"job_id": submitted["job_id"]}
    event["rawPath"] = event["requestContext"]["http"]["path"] = f"/jobs/{submitted['job_id']}"
    status, body = call(enqueue, event)
    assert status == 200
    assert body["status"] == "QUEUED" and body["attempts"] == 0 and body["last_error"] is None
    assert "result_uri" in body
    assert call(enqueue, load_event("enqueue_get_job"))[0] == 404
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/jobs/not-a-uuid"
    assert call(enqueue, event)[0] == 404


def test_input_uri_outside_the_stack_bucket_gets_400(enqueue: ModuleType, queue: JobQueue) -> None:
    request = {"analyzer": "echo", "input_uri": "s3://someone-elses-bucket/data.json"}
    status, body = call(enqueue, submit_event(request))
    assert status == 400
    assert [e["path"] for e in body["errors"]] == ["$.input_uri"]
    inside = {"analyzer": "echo", "input_uri": f"s3://{enqueue.settings.data_bucket}/inputs/a.json"}
    assert call(enqueue, submit_event(inside))[0] == 202
    assert len(messages(queue)) == 1


# -- issue 16: no input gets a 5xx; the stack's policy (bucket, drills, runtime cap) -----------


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    "body",
    [
        nested(100_000),  # 200 KB of "[[[[...]]]]": deeper than Python's recursion limit
        '{"analyzer": "echo", "input": ' + nested(99_000) + "}",
        '{"analyzer": "echo", "input": {"params": ' + nested(99_000) + "}}",
    ],
    ids=["body", "input", "inside-input"],
)
def test_a_body_nested_beyond_recursion_is_400_not_a_crash(
    enqueue: ModuleType, queue: JobQueue, job_store: JobStore, body: str
) -> None:
    assert len(body) >= 198_000
    status, answer = call(enqueue, submit_event(body))
    assert status == 400
    assert [e["path"] for e in answer["errors"]] == ["$"]
    assert "nested" in answer["message"]
    assert messages(queue) == []


def test_a_body_nested_past_the_bound_is_400_naming_the_deepest_path(
    enqueue: ModuleType, queue: JobQueue
) -> None:
    body = '{"analyzer": "echo", "input": ' + nested(40) + "}"
    status, answer = call(enqueue, submit_event(body))
    assert status == 400
    (error,) = answer["errors"]
    assert error["path"].startswith("$.input[0][0]") and "nested deeper" in error["message"]
    assert messages(queue) == []


@pytest.mark.parametrize(
    "field",
    [
        {"input": 10**40},  # an integer longer than the bound
        {"input": "x" * 300_000},  # a string longer than the bound (a 413 first: too big)
        {"input": [0] * 100_001},
    ],
)
def test_inputs_past_the_size_bounds_are_4xx(enqueue: ModuleType, field: dict[str, Any]) -> None:
    status, _ = call(enqueue, submit_event({"analyzer": "echo", **field}))
    assert status in (400, 413)


def test_non_finite_numbers_are_400(enqueue: ModuleType) -> None:
    status, answer = call(enqueue, submit_event('{"analyzer": "echo", "input": [1, NaN]}'))
    assert status == 400 and answer["errors"][0]["path"] == "$.input[1]"


@pytest.mark.parametrize(
    "key",
    [
        "data.json",  # outside inputs/
        "in/a.json",
        "inputs/",  # no object
        "inputs//a.json",
        "inputs/../results/x.json",
        "inputs/./a.json",
        "inputs/a.json?versionId=1",
        "inputs/a.json#x",
    ],
)
def test_input_uri_must_name_an_object_under_inputs(
    enqueue: ModuleType, queue: JobQueue, key: str
) -> None:
    request = {"analyzer": "echo", "input_uri": f"s3://{enqueue.settings.data_bucket}/{key}"}
    status, answer = call(enqueue, submit_event(request))
    assert status == 400, answer
    assert {e["path"] for e in answer["errors"]} <= {"$", "$.input_uri"}
    assert messages(queue) == []


@pytest.mark.parametrize("analyzer", drill_analyzers())
def test_drill_analyzers_are_400_naming_the_accepted_ones_when_off(
    enqueue: ModuleType, queue: JobQueue, analyzer: str
) -> None:
    assert enqueue.settings.drills_enabled is False  # the template's default
    status, answer = call(enqueue, submit_event({"analyzer": analyzer, "input": None}))
    assert status == 400
    (error,) = answer["errors"]
    assert error["path"] == "$.analyzer"
    accepted = [name for name in analyzer_names() if name not in drill_analyzers()]
    assert all(name in error["message"] for name in accepted)
    assert not any(name in error["message"].split("accepted:")[1] for name in drill_analyzers())
    assert messages(queue) == []


def test_drill_analyzers_are_accepted_when_the_stack_enables_them(
    stack: Stack, queue: JobQueue
) -> None:
    enqueue = load_handler_module(
        "enqueue.app", stack, "EnqueueFunction", {"ENABLE_DRILL_ANALYZERS": "true"}
    )
    status, _ = call(enqueue, submit_event({"analyzer": "memory_hog", "input": None}))
    assert status == 202
    assert len(messages(queue)) == 1


def test_max_runtime_above_the_stacks_cap_is_400_and_at_the_cap_202(
    stack: Stack, queue: JobQueue
) -> None:
    enqueue = load_handler_module("enqueue.app", stack, "EnqueueFunction", {"MAX_RUNTIME_S": "600"})
    status, answer = call(
        enqueue, submit_event({"analyzer": "echo", "input": 1, "max_runtime_s": 601})
    )
    assert status == 400
    assert [e["path"] for e in answer["errors"]] == ["$.max_runtime_s"]
    assert "600" in answer["errors"][0]["message"]
    request = {"analyzer": "echo", "input": 1, "max_runtime_s": 600}
    assert call(enqueue, submit_event(request))[0] == 202
    assert len(messages(queue)) == 1


def test_the_runtime_cap_defaults_to_the_templates_parameter(enqueue: ModuleType) -> None:
    assert enqueue.settings.max_runtime_s == DEFAULT_MAX_RUNTIME_S == 21600
    assert enqueue.policy == RequestPolicy(
        enqueue.settings.data_bucket, False, 21600, catalog=load_catalog()
    )


NETWORK_ERRORS = [
    EndpointConnectionError(endpoint_url="https://dynamodb.us-east-1.amazonaws.com"),
    ConnectTimeoutError(endpoint_url="https://sqs.us-east-1.amazonaws.com"),
    ReadTimeoutError(endpoint_url="https://sqs.us-east-1.amazonaws.com"),
]


@pytest.mark.parametrize("error", NETWORK_ERRORS, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("method", ["put_item", "update_item", "get_item"])
def test_a_dynamodb_network_error_is_503_with_retry_after(
    enqueue: ModuleType,
    stack: Stack,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    error: Exception,
) -> None:
    client = FailingClient(boto3.client("dynamodb"), method, error)
    store = JobStore(client, stack.ref("JobsTable"))
    monkeypatch.setattr(enqueue, "job_store", lambda: store)
    response = enqueue.handler(
        submit_event({"analyzer": "echo", "input": 1}, {"idempotency-key": "net"}), LambdaContext()
    )
    if method == "get_item":  # a new job never reads; the status route does
        assert response["statusCode"] == 202
        event = copy.deepcopy(load_event("enqueue_get_job"))
        response = enqueue.handler(event, LambdaContext())
    assert response["statusCode"] == 503
    assert response["headers"]["Retry-After"] == "2"


@pytest.mark.parametrize("error", NETWORK_ERRORS, ids=lambda e: type(e).__name__)
def test_an_sqs_network_error_is_503_and_leaves_the_job_stored_unsent(
    enqueue: ModuleType,
    job_store: JobStore,
    queue: JobQueue,
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
) -> None:
    failing = FailingClient(queue.client, "send_message", error)
    monkeypatch.setattr(enqueue.job_queue(), "client", failing)
    response = enqueue.handler(
        submit_event({"analyzer": "echo", "input": 1}, {"idempotency-key": "sqs"}), LambdaContext()
    )
    assert response["statusCode"] == 503 and response["headers"]["Retry-After"] == "2"
    job_id = job_id_for_idempotency_key("sqs", SAMPLE_CALLER)
    record = job_store.get(job_id)
    assert record is not None and record.status == JobStatus.QUEUED and not record.sent
    # Stranded unless the client retries: the sweep finds it (functions/sweep).
    cutoff = datetime.now(UTC) + timedelta(seconds=1)
    assert [r.job_id for r in job_store.unsent_before(cutoff)] == [job_id]
    assert messages(queue) == []


@pytest.mark.parametrize(
    ("name", "value"),
    [("ENABLE_DRILL_ANALYZERS", "yes"), ("MAX_RUNTIME_S", "six hours"), ("MAX_RUNTIME_S", "0")],
)
def test_a_bad_policy_setting_fails_at_import_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    for key, setting in {"JOBS_TABLE": "t", "JOBS_QUEUE_URL": "q", "DATA_BUCKET": "b"}.items():
        monkeypatch.setenv(key, setting)
    monkeypatch.setenv(name, value)
    with pytest.raises(MissingSetting, match=name):
        Settings.from_env()
