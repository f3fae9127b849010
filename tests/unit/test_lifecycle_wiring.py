"""The ASG termination hook as an interruption source of the real Worker: it drains the worker
like a spot notice, and the lifecycle action is completed only after the worker let go."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from devstack.cfn import Stack
from devstack.imds import ImdsMock
from devstack.motoserver import wait_until
from gpu_worker.consumer import Worker
from gpu_worker.interruption import Source
from tests.unit.conftest import stack_worker_config


class FakeAutoScaling:
    """Stands in for the autoscaling client (moto has no CompleteLifecycleAction)."""

    def __init__(self) -> None:
        self.completed: list[dict[str, Any]] = []

    def complete_lifecycle_action(self, **request: Any) -> dict[str, Any]:
        self.completed.append(request)
        return {}


@pytest.fixture
def imds() -> Iterator[ImdsMock]:
    with ImdsMock("i-0feedbeef0000000a", lifecycle_state="InService") as mock:
        yield mock


def make_worker(stack: Stack, imds: ImdsMock, autoscaling: FakeAutoScaling) -> Worker:
    config = stack_worker_config(
        stack,
        worker_id="unit",
        imds_endpoint=imds.url,
        imds_poll_s=0.05,
        lifecycle_hook="drain",
        asg_name="unit-workers",
        wait_s=0,
        health_port=0,
    )
    return Worker(
        config,
        sqs=boto3.client("sqs"),
        dynamodb=boto3.client("dynamodb"),
        s3=boto3.client("s3"),
        autoscaling=autoscaling,
    )


def test_pending_hook_stops_the_worker_and_completes_the_action_after_it_let_go(
    stack: Stack, imds: ImdsMock
) -> None:
    autoscaling = FakeAutoScaling()
    worker = make_worker(stack, imds, autoscaling)
    runner = threading.Thread(target=worker.run, daemon=True)
    runner.start()
    wait_until(lambda: worker.supervisor.child_pid is not None, timeout=30, what="the child")
    assert autoscaling.completed == []
    imds.set_lifecycle_state("Terminated")
    runner.join(timeout=30)
    assert not runner.is_alive(), "the worker did not stop for the lifecycle hook"
    assert worker.interruption is not None
    assert worker.interruption.source == str(Source.ASG_LIFECYCLE)
    assert autoscaling.completed == [
        {
            "LifecycleHookName": "drain",
            "AutoScalingGroupName": "unit-workers",
            "InstanceId": "i-0feedbeef0000000a",
            "LifecycleActionResult": "CONTINUE",
        }
    ]


def test_no_pending_hook_means_nothing_to_complete(stack: Stack, imds: ImdsMock) -> None:
    autoscaling = FakeAutoScaling()
    worker = make_worker(stack, imds, autoscaling)
    runner = threading.Thread(target=worker.run, daemon=True)
    runner.start()
    wait_until(lambda: worker.supervisor.child_pid is not None, timeout=30, what="the child")
    worker.request_stop("test")
    runner.join(timeout=30)
    assert not runner.is_alive()
    assert autoscaling.completed == []
