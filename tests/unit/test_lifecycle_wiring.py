"""The ASG termination hook as an interruption source of the real Worker: it drains the worker
like a spot notice, and the lifecycle action is completed only after the worker let go."""

from __future__ import annotations

import threading

import boto3

from devstack.cfn import Stack
from devstack.motoserver import wait_until
from gpu_worker.consumer import Worker
from gpu_worker.interruption import Action, LifecycleMonitor, Source
from tests.unit.conftest import stack_worker_config


class FakeHook:
    """Stands in for LifecycleHookMonitor (moto has no CompleteLifecycleAction)."""

    hook_name = "drain"
    min_interval_s = 0.05

    def __init__(self) -> None:
        self.pending = False
        self.completed = 0

    def poll(self) -> bool:
        return self.pending

    def complete(self, result: str = "CONTINUE") -> bool:
        self.completed += 1
        return True


def make_worker(stack: Stack, hook: FakeHook) -> Worker:
    config = stack_worker_config(
        stack,
        worker_id="unit",
        imds_endpoint="",
        wait_s=0,
        health_port=0,
    )
    return Worker(
        config,
        sqs=boto3.client("sqs"),
        dynamodb=boto3.client("dynamodb"),
        s3=boto3.client("s3"),
        lifecycle=hook,  # type: ignore[arg-type]
    )


def test_monitor_reports_a_pending_hook_as_a_termination() -> None:
    hook = FakeHook()
    monitor = LifecycleMonitor(hook)
    assert monitor.check() is None and monitor.interval_s == hook.min_interval_s
    hook.pending = True
    event = monitor.check()
    assert event is not None
    assert (event.source, event.action, event.detail) == (
        str(Source.ASG_LIFECYCLE),
        Action.TERMINATE,
        "drain",
    )
    assert not event.advisory


def test_pending_hook_stops_the_worker_and_completes_the_action_after_it_let_go(
    stack: Stack,
) -> None:
    hook = FakeHook()
    worker = make_worker(stack, hook)
    runner = threading.Thread(target=worker.run, daemon=True)
    runner.start()
    wait_until(lambda: worker.supervisor.child_pid is not None, timeout=30, what="the child")
    assert hook.completed == 0
    hook.pending = True
    runner.join(timeout=30)
    assert not runner.is_alive(), "the worker did not stop for the lifecycle hook"
    assert worker.interruption is not None
    assert worker.interruption.source == str(Source.ASG_LIFECYCLE)
    assert hook.completed == 1


def test_no_pending_hook_means_nothing_to_complete(stack: Stack) -> None:
    hook = FakeHook()
    worker = make_worker(stack, hook)
    runner = threading.Thread(target=worker.run, daemon=True)
    runner.start()
    wait_until(lambda: worker.supervisor.child_pid is not None, timeout=30, what="the child")
    worker.request_stop("test")
    runner.join(timeout=30)
    assert not runner.is_alive()
    assert hook.completed == 0
