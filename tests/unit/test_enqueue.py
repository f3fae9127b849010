from __future__ import annotations

import base64
import copy
import json
from types import ModuleType
from typing import Any

import pytest
from botocore.exceptions import ClientError

from devstack.lambdas import LambdaContext, load_event
from pipeline.jobstore import JobStore
from pipeline.queue import JobQueue


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
    inside = {"analyzer": "echo", "input_uri": f"s3://{enqueue.settings.data_bucket}/in/a.json"}
    assert call(enqueue, submit_event(inside))[0] == 202
    assert len(messages(queue)) == 1
