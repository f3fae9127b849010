"""devstack's moto server closes moto's unlocked SQS list rebuilds (a lost or revived message
would look like the pipeline's own loss in the chaos drill)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import boto3
import pytest
from moto.core import DEFAULT_ACCOUNT_ID
from moto.sqs import models

from devstack.moto_main import close_races


@pytest.fixture
def locked(aws: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Recorded first, so the originals come back after the test.
    monkeypatch.setattr(models.Queue, "delete_message", models.Queue.delete_message)
    monkeypatch.setattr(models.SQSBackend, "receive_message", models.SQSBackend.receive_message)
    close_races()
    close_races()  # a second call changes nothing
    yield


def _blocked_by_the_queue_lock(queue_name: str, call: Callable[[], object]) -> None:
    queue = models.sqs_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].queues[queue_name]
    done = threading.Event()

    def run() -> None:
        call()
        done.set()

    with queue._messages_lock:
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        assert not done.wait(0.3), "ran while another request held the queue"
    assert done.wait(10), "did not run once the queue was free"
    thread.join(10)


def test_delete_and_receive_wait_for_the_queue_lock(locked: None) -> None:
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="raced")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="one")
    sqs.send_message(QueueUrl=url, MessageBody="two")
    received: list[dict[str, str]] = []

    def receive() -> None:
        received.extend(sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1)["Messages"])

    _blocked_by_the_queue_lock("raced", receive)
    assert len(received) == 1
    handle = received[0]["ReceiptHandle"]
    _blocked_by_the_queue_lock(
        "raced", lambda: sqs.delete_message(QueueUrl=url, ReceiptHandle=handle)
    )
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "1"  # the other one, not lost


def test_a_long_poll_releases_the_lock_while_it_waits(locked: None) -> None:
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="polled")["QueueUrl"]
    got: list[object] = []
    poller = threading.Thread(
        target=lambda: got.extend(
            sqs.receive_message(QueueUrl=url, WaitTimeSeconds=5).get("Messages", [])
        ),
        daemon=True,
    )
    poller.start()
    # The poll is waiting: a send gets through the lock and wakes it.
    boto3.client("sqs", region_name="us-east-1").send_message(QueueUrl=url, MessageBody="late")
    poller.join(10)
    assert not poller.is_alive() and [m["Body"] for m in got] == ["late"]  # type: ignore[index]
