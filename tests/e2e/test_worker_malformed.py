"""Hostile queue messages for the real worker: each goes to the DLQ as INVALID_INPUT, once."""

from __future__ import annotations

import json
import uuid

import pytest

from devstack.motoserver import wait_until
from devstack.stack import Devstack
from spotline.contract import ErrorKind, JobMessage, JobStatus, MessageAttribute

pytestmark = pytest.mark.e2e

QUEUE_LIMIT_BYTES = 262144  # the template's MaxMessageBytes default


def oversize_body() -> str:
    """A well-formed job message for a job nobody submitted, a few bytes under the queue's limit
    (the worker forwards it with attributes, which SQS counts against the DLQ's limit)."""
    envelope = JobMessage(str(uuid.uuid4()), {"analyzer": "echo", "input": ""}).to_json()
    filler = QUEUE_LIMIT_BYTES - 64 - len(envelope.encode("utf-8"))
    body = JobMessage(str(uuid.uuid4()), {"analyzer": "echo", "input": "x" * filler}).to_json()
    assert QUEUE_LIMIT_BYTES - 100 < len(body.encode("utf-8")) <= QUEUE_LIMIT_BYTES
    return body


def test_malformed_messages_are_dead_lettered_once_as_invalid_input(devstack: Devstack) -> None:
    worker = devstack.start_worker()
    invalid_job = str(uuid.uuid4())
    bad_request = {"analyzer": "no such analyzer!", "input": 1, "input_uri": "s3://x/y"}
    devstack.store.create(invalid_job, bad_request)  # a record exists; its request is invalid
    bodies = {
        "not JSON": "this is {not json\x01",
        "JSON array": json.dumps([1, 2, 3]),
        "wrong shape": json.dumps({"hello": "world", "request": {"analyzer": "echo"}}),
        "invalid request": JobMessage(invalid_job, bad_request).to_json(),
        "no job record": JobMessage(str(uuid.uuid4()), {"analyzer": "echo", "input": 1}).to_json(),
        "oversize": oversize_body(),
    }
    for body in bodies.values():
        devstack.queue.send_body(body)

    wait_until(lambda: devstack.queue_depths()["jobs"] == (0, 0), timeout=60, what="jobs queue")
    wait_until(
        lambda: devstack.queue_depths()["dlq"][0] >= len(bodies), timeout=20, what="DLQ messages"
    )
    received = []
    while batch := devstack.dlq.receive(max_messages=10, wait_s=1, visibility_s=300):
        received.extend(batch)
    for label, body in bodies.items():
        copies = [m for m in received if m.body == body]
        assert len(copies) == 1, f"{label}: {len(copies)} copies in the DLQ"
        kind = copies[0].message_attributes[MessageAttribute.ERROR_KIND]["StringValue"]
        assert kind == ErrorKind.INVALID_INPUT, label
    assert len(received) == len(bodies)
    record = devstack.job(invalid_job)
    assert record is not None and record.status == JobStatus.DEAD_LETTERED
    assert record.last_error is not None and record.last_error.kind == ErrorKind.INVALID_INPUT

    assert worker.alive()
    # SQS counts attributes against the limit (moto counts only the body): the DLQ must have room.
    sqs = devstack.client("sqs")
    limits = [
        int(
            sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["MaximumMessageSize"])[
                "Attributes"
            ]["MaximumMessageSize"]
        )
        for url in (devstack.queue.url, devstack.dlq.url)
    ]
    assert limits[1] >= limits[0] + 4096, limits
    status, body = devstack.submit({"analyzer": "echo", "input": {"after": "hostility"}})
    assert status == 202
    job_id = body["job_id"]
    wait_until(
        lambda: devstack.job(job_id).status == JobStatus.SUCCEEDED, timeout=30, what="normal job"
    )
    assert devstack.read_result(devstack.job(job_id).result_uri) == {"after": "hostility"}
    assert worker.alive()
