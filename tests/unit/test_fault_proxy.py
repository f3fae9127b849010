"""FaultProxy between boto3 and a real moto server: faithful when idle, AWS's faults when armed.

boto3 clients here make one attempt (``total_max_attempts``: botocore's ``max_attempts`` counts
retries, so ``{"max_attempts": 1}`` still retries once) so that a fault surfaces, except where a
test proves that botocore's standard retries ride over it.
"""

from __future__ import annotations

import http.client
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionError, HTTPClientError
from botocore.retries.standard import (
    RetryContext,
    ThrottledRetryableChecker,
    TransientRetryableChecker,
)

from devstack.faults import AwsRequest, Fault, FaultProxy, FaultRule, Protocol, Rulebook
from devstack.motoserver import MotoServer, free_port

MIB = 1024 * 1024
# What botocore's standard retry mode counts as transient, beside the error codes.
TRANSIENT_EXCEPTIONS = (ConnectionError, HTTPClientError)

Client = Callable[..., Any]
# A SigV4 header of the shape botocore signs with; moto server reads the scope, not the signature.
SQS_AUTHORIZATION = (
    "AWS4-HMAC-SHA256 Credential=testing/20240101/us-east-1/sqs/aws4_request, "
    "SignedHeaders=host, Signature=0"
)
S3_AUTHORIZATION = SQS_AUTHORIZATION.replace("/sqs/", "/s3/")


@pytest.fixture(scope="module")
def moto_server() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture
def proxy(moto_server: MotoServer) -> Iterator[FaultProxy]:
    with FaultProxy(moto_server.endpoint_url) as started:
        yield started


@pytest.fixture
def client(proxy: FaultProxy) -> Client:
    """boto3 clients through the proxy, one attempt unless told otherwise."""

    def make(service: str, *, attempts: int = 1) -> Any:
        config = Config(retries={"total_max_attempts": attempts, "mode": "standard"})
        return boto3.client(
            service, endpoint_url=proxy.endpoint_url, region_name="us-east-1", config=config
        )

    return make


@pytest.fixture
def queue_url(client: Client) -> str:
    return str(client("sqs").create_queue(QueueName=f"q-{uuid.uuid4().hex}")["QueueUrl"])


@pytest.fixture
def bucket(client: Client) -> str:
    name = f"bucket-{uuid.uuid4().hex}"
    client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture
def table(client: Client) -> str:
    name = f"table-{uuid.uuid4().hex}"
    client("dynamodb").create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return name


def error_of(excinfo: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    response = excinfo.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def retry_context(exc: ClientError) -> RetryContext:
    status = exc.response["ResponseMetadata"]["HTTPStatusCode"]
    return RetryContext(
        attempt_number=1,
        parsed_response=exc.response,
        http_response=SimpleNamespace(status_code=status),
    )


# -- passing through ---------------------------------------------------------------------------


def test_sqs_round_trip_passes_through(proxy: FaultProxy, client: Client, queue_url: str) -> None:
    sqs = client("sqs")

    sqs.send_message(QueueUrl=queue_url, MessageBody="hello")
    messages = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=1)["Messages"]
    sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=messages[0]["ReceiptHandle"])

    assert [m["Body"] for m in messages] == ["hello"]
    assert proxy.seen("sqs", "SendMessage") == 1
    assert proxy.seen("sqs", "ReceiveMessage") == 1
    assert proxy.seen("sqs", "DeleteMessage") == 1
    assert proxy.seen("sqs", "*") == 4  # CreateQueue too
    assert proxy.injected() == 0


def test_s3_get_and_head_keep_bodies_and_lengths(
    proxy: FaultProxy, client: Client, bucket: str
) -> None:
    s3 = client("s3")
    small, large = b'{"x": 1}', os.urandom(MIB)
    s3.put_object(Bucket=bucket, Key="results/small.json", Body=small)
    s3.put_object(Bucket=bucket, Key="results/large.bin", Body=large)

    got_small = s3.get_object(Bucket=bucket, Key="results/small.json")
    got_large = s3.get_object(Bucket=bucket, Key="results/large.bin")
    head = s3.head_object(Bucket=bucket, Key="results/large.bin")

    assert got_small["Body"].read() == small
    assert got_large["ContentLength"] == MIB
    assert got_large["Body"].read() == large
    assert head["ContentLength"] == MIB
    assert proxy.seen("s3", "PutObject") == 2
    assert proxy.seen("s3", "GetObject") == 2
    assert proxy.seen("s3", "HeadObject") == 1


def test_chunked_request_body_is_forwarded_whole(
    proxy: FaultProxy, client: Client, bucket: str
) -> None:
    """botocore sends Content-Length over http (aws-chunked only over https), but a client
    that streams gets the same object."""
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    connection.request(
        "PUT",
        f"/{bucket}/inputs/streamed",
        body=iter([b"abc", b"def", b"g" * 5000]),  # no length: http.client sends it chunked
        headers={"Authorization": S3_AUTHORIZATION},
    )
    response = connection.getresponse()
    response.read()
    connection.close()

    assert response.status == 200
    body = client("s3").get_object(Bucket=bucket, Key="inputs/streamed")["Body"].read()
    assert body == b"abcdef" + b"g" * 5000


def test_virtual_host_bucket_reaches_moto_path_style(
    proxy: FaultProxy, client: Client, bucket: str
) -> None:
    client("s3").put_object(Bucket=bucket, Key="results/x", Body=b"vhost")
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    # Signed by anyone: moto refuses anonymous reads of a private object.
    headers = {"Host": f"{bucket}.localhost:{proxy.port}", "Authorization": S3_AUTHORIZATION}
    connection.request("GET", "/results/x", headers=headers)
    response = connection.getresponse()

    assert (response.status, response.read()) == (200, b"vhost")
    assert proxy.seen("s3", "GetObject") == 1
    connection.close()


def test_sqs_query_protocol_is_recognised(
    proxy: FaultProxy, client: Client, queue_url: str
) -> None:
    """botocore before 1.31.64 sent SQS as form-encoded ``Action=`` requests."""
    proxy.inject("sqs", "SendMessage", fault="throttle")
    form = f"Action=SendMessage&QueueUrl={queue_url}&MessageBody=hi&Version=2012-11-05"
    headers = {
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
        "Authorization": SQS_AUTHORIZATION,
    }
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)

    connection.request("POST", "/", body=form, headers=headers)
    throttled = connection.getresponse()
    throttled_body = throttled.read()
    connection.request("POST", "/", body=form, headers=headers)
    sent = connection.getresponse()
    sent.read()
    connection.close()

    assert throttled.status == 400
    assert b"<Code>RequestThrottled</Code>" in throttled_body
    assert sent.status == 200
    assert proxy.seen("sqs", "SendMessage") == 2


# -- faults ------------------------------------------------------------------------------------


def test_throttled_receive_is_a_throttling_error_once(
    proxy: FaultProxy, client: Client, queue_url: str
) -> None:
    sqs = client("sqs")
    sqs.send_message(QueueUrl=queue_url, MessageBody="hello")
    proxy.inject("sqs", "ReceiveMessage", fault="throttle")

    with pytest.raises(sqs.exceptions.RequestThrottled) as excinfo:
        sqs.receive_message(QueueUrl=queue_url)
    messages = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=1)["Messages"]

    assert error_of(excinfo) == ("RequestThrottled", 400)
    assert ThrottledRetryableChecker().is_retryable(retry_context(excinfo.value))
    assert [m["Body"] for m in messages] == ["hello"]
    assert proxy.injected("sqs", "ReceiveMessage") == 1
    assert proxy.seen("sqs", "ReceiveMessage") == 2


def test_sqs_500_and_503_are_transient(proxy: FaultProxy, client: Client, queue_url: str) -> None:
    sqs = client("sqs")
    proxy.inject("sqs", "SendMessage", fault="500")
    proxy.inject("sqs", "DeleteMessage", fault="503", key_contains="never-a-handle")

    with pytest.raises(ClientError) as internal:
        sqs.send_message(QueueUrl=queue_url, MessageBody="x")
    proxy.clear()
    proxy.inject("sqs", "SendMessage", fault="503")
    with pytest.raises(ClientError) as unavailable:
        sqs.send_message(QueueUrl=queue_url, MessageBody="x")

    assert error_of(internal) == ("InternalError", 500)
    assert error_of(unavailable) == ("ServiceUnavailable", 503)
    assert TransientRetryableChecker().is_retryable(retry_context(internal.value))
    assert TransientRetryableChecker().is_retryable(retry_context(unavailable.value))


def test_dynamodb_update_item_500_is_internal_server_error(
    proxy: FaultProxy, client: Client, table: str
) -> None:
    dynamodb = client("dynamodb")
    proxy.inject("dynamodb", "UpdateItem", fault="500")
    update = {
        "TableName": table,
        "Key": {"id": {"S": "job-1"}},
        "UpdateExpression": "SET job_status = :s",
        "ExpressionAttributeValues": {":s": {"S": "RUNNING"}},
    }

    with pytest.raises(ClientError) as excinfo:
        dynamodb.update_item(**update)
    dynamodb.update_item(**update)

    assert error_of(excinfo) == ("InternalServerError", 500)
    assert dynamodb.get_item(TableName=table, Key={"id": {"S": "job-1"}})["Item"]
    assert proxy.injected("dynamodb") == 1


def test_dynamodb_throttle_is_provisioned_throughput_exceeded(
    proxy: FaultProxy, client: Client, table: str
) -> None:
    dynamodb = client("dynamodb")
    proxy.inject("dynamodb", "GetItem", fault="throttle")

    with pytest.raises(dynamodb.exceptions.ProvisionedThroughputExceededException) as excinfo:
        dynamodb.get_item(TableName=table, Key={"id": {"S": "job-1"}})

    assert ThrottledRetryableChecker().is_retryable(retry_context(excinfo.value))


def test_s3_put_fault_only_under_its_prefix(proxy: FaultProxy, client: Client, bucket: str) -> None:
    s3 = client("s3")
    proxy.inject("s3", "PutObject", fault="500", times=None, key_contains="checkpoints/")

    s3.put_object(Bucket=bucket, Key="results/x", Body=b"result")
    for _ in range(2):
        with pytest.raises(ClientError) as excinfo:
            s3.put_object(Bucket=bucket, Key="checkpoints/job-1/state", Body=b"state")
        assert error_of(excinfo) == ("InternalError", 500)
    proxy.clear()
    s3.put_object(Bucket=bucket, Key="checkpoints/job-1/state", Body=b"state")

    assert proxy.injected("s3", "PutObject") == 2
    assert proxy.seen("s3", "PutObject") == 4


def test_s3_throttle_is_slow_down(proxy: FaultProxy, client: Client, bucket: str) -> None:
    s3 = client("s3")
    proxy.inject("s3", "GetObject", fault="throttle")

    with pytest.raises(ClientError) as excinfo:
        s3.get_object(Bucket=bucket, Key="results/x")

    assert error_of(excinfo) == ("SlowDown", 503)
    assert ThrottledRetryableChecker().is_retryable(retry_context(excinfo.value))


def test_head_fault_has_no_body_and_the_connection_stays_usable(
    proxy: FaultProxy, client: Client, bucket: str
) -> None:
    s3 = client("s3")
    s3.put_object(Bucket=bucket, Key="results/x", Body=b"12345")
    proxy.inject("s3", "HeadObject", fault="503")

    with pytest.raises(ClientError) as excinfo:
        s3.head_object(Bucket=bucket, Key="results/x")
    # Same pooled connection: a stray body after the HEAD would corrupt this response.
    head = s3.head_object(Bucket=bucket, Key="results/x")

    assert error_of(excinfo) == ("503", 503)  # S3 sends HEAD errors without a body
    assert head["ContentLength"] == 5


def test_reset_is_a_connection_error_botocore_retries(
    proxy: FaultProxy, client: Client, queue_url: str
) -> None:
    sqs = client("sqs")
    proxy.inject("sqs", "SendMessage", fault="reset")

    with pytest.raises(TRANSIENT_EXCEPTIONS):
        sqs.send_message(QueueUrl=queue_url, MessageBody="lost")
    sqs.send_message(QueueUrl=queue_url, MessageBody="kept")

    assert proxy.injected("sqs", "SendMessage") == 1


def test_slow_delays_then_forwards(proxy: FaultProxy, client: Client, queue_url: str) -> None:
    sqs = client("sqs")
    proxy.inject("sqs", "SendMessage", fault="slow:0.5")

    started = time.monotonic()
    sqs.send_message(QueueUrl=queue_url, MessageBody="late")
    elapsed_s = time.monotonic() - started

    assert elapsed_s >= 0.5
    assert sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=1)["Messages"]


def test_default_retries_ride_over_one_fault_of_each_kind(
    proxy: FaultProxy, client: Client, queue_url: str, bucket: str, table: str
) -> None:
    """AWS's codes are retryable, so ours must be: a 3-attempt standard client never notices."""
    sqs, s3, dynamodb = (client(name, attempts=3) for name in ("sqs", "s3", "dynamodb"))
    proxy.inject("sqs", "SendMessage", fault="500")
    proxy.inject("sqs", "ReceiveMessage", fault="throttle")
    proxy.inject("s3", "PutObject", fault="503")
    proxy.inject("dynamodb", "PutItem", fault="500")
    proxy.inject("dynamodb", "GetItem", fault="reset")

    sqs.send_message(QueueUrl=queue_url, MessageBody="once")
    assert sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=1)["Messages"]
    s3.put_object(Bucket=bucket, Key="results/x", Body=b"x")
    dynamodb.put_item(TableName=table, Item={"id": {"S": "job-1"}})
    assert dynamodb.get_item(TableName=table, Key={"id": {"S": "job-1"}})["Item"]

    assert proxy.injected() == 5
    assert proxy.seen("sqs", "SendMessage") == 2
    assert proxy.seen("dynamodb", "GetItem") == 2


def test_body_filter_applies_to_json_services(
    proxy: FaultProxy, client: Client, queue_url: str
) -> None:
    sqs = client("sqs")
    proxy.inject("sqs", "SendMessage", fault="500", times=None, key_contains="job-7")

    sqs.send_message(QueueUrl=queue_url, MessageBody='{"job_id": "job-6"}')
    with pytest.raises(ClientError):
        sqs.send_message(QueueUrl=queue_url, MessageBody='{"job_id": "job-7"}')

    assert proxy.injected() == 1


# -- the proxy itself --------------------------------------------------------------------------


def test_stopped_upstream_answers_502_at_once() -> None:
    with FaultProxy(f"http://127.0.0.1:{free_port()}") as proxy:
        connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        connection.request("POST", "/", body=b"{}", headers={"X-Amz-Target": "AmazonSQS.X"})
        response = connection.getresponse()

        assert response.status == 502
        assert response.read().startswith(b"upstream: ConnectionRefusedError")
        connection.close()


def test_client_leaving_mid_request_does_not_hurt_the_next(
    proxy: FaultProxy, client: Client, queue_url: str
) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")

    client("sqs").send_message(QueueUrl=queue_url, MessageBody="after")

    assert proxy.seen("sqs", "SendMessage") == 1


def test_malformed_framing_gets_400_and_a_closed_connection(proxy: FaultProxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: many\r\n\r\n")
        answer = sock.makefile("rb").read()  # to EOF: the proxy closes after answering

    assert answer.startswith(b"HTTP/1.1 400")


def test_stop_ends_idle_keep_alive_connections(moto_server: MotoServer) -> None:
    proxy = FaultProxy(moto_server.endpoint_url).start()
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    connection.request("GET", "/moto-api/")
    connection.getresponse().read()  # the connection stays open, its handler thread waits

    started = time.monotonic()
    proxy.stop()

    assert time.monotonic() - started < 2
    connection.close()


def test_inject_refuses_what_it_cannot_do(proxy: FaultProxy) -> None:
    for fault in ("teapot", "slow", "slow:-1", "reset:3"):
        with pytest.raises(ValueError):
            proxy.inject("sqs", "SendMessage", fault=fault)
    with pytest.raises(ValueError):
        proxy.inject("sqs", "SendMessage", times=0)
    with pytest.raises(ValueError):
        proxy.inject("sqs", "SendMessage", probability=0)


def test_seeded_probability_replays() -> None:
    request = AwsRequest("sqs", "ReceiveMessage", Protocol.JSON)

    def pattern(seed: int) -> list[bool]:
        rules = Rulebook(seed)
        rules.add(FaultRule("sqs", "*", Fault.parse("500"), remaining=None, probability=0.5))
        return [rules.decide(request) is not None for _ in range(40)]

    assert pattern(7) == pattern(7)
    assert pattern(7) != pattern(8)
    assert 5 < sum(pattern(7)) < 35
