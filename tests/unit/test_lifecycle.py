"""The worker's view of the ASG termination lifecycle hook."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto import mock_aws
from moto.autoscaling.models import autoscaling_backends
from moto.core import DEFAULT_ACCOUNT_ID

from gpu_worker.lifecycle import LifecycleHookMonitor, instance_id_from_imds

GROUP = "unit-workers"
HOOK = "drain"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def group() -> Iterator[tuple[Any, list[str]]]:
    with mock_aws():
        ec2 = boto3.client("ec2")
        autoscaling = boto3.client("autoscaling")
        template = ec2.create_launch_template(
            LaunchTemplateName="workers",
            LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "g4dn.xlarge"},
        )["LaunchTemplate"]["LaunchTemplateId"]
        autoscaling.create_auto_scaling_group(
            AutoScalingGroupName=GROUP,
            LaunchTemplate={"LaunchTemplateId": template, "Version": "$Latest"},
            MinSize=2,
            MaxSize=2,
            AvailabilityZones=["us-east-1a"],
        )
        autoscaling.put_lifecycle_hook(
            AutoScalingGroupName=GROUP,
            LifecycleHookName=HOOK,
            LifecycleTransition="autoscaling:EC2_INSTANCE_TERMINATING",
            HeartbeatTimeout=300,
        )
        instances = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[GROUP])
        ids = [i["InstanceId"] for i in instances["AutoScalingGroups"][0]["Instances"]]
        yield autoscaling, ids


def set_lifecycle_state(instance_id: str, state: str) -> None:
    # moto never moves an instance to Terminating:Wait by itself.
    backend = autoscaling_backends[DEFAULT_ACCOUNT_ID]["us-east-1"]
    for instance_state in backend.autoscaling_groups[GROUP].instance_states:
        if instance_state.instance.id == instance_id:
            instance_state.lifecycle_state = state


def test_poll_is_false_while_in_service_and_true_once_the_hook_is_pending(
    group: tuple[Any, list[str]],
) -> None:
    autoscaling, (mine, other) = group
    clock = Clock()
    monitor = LifecycleHookMonitor(
        autoscaling, instance_id=mine, hook_name=HOOK, min_interval_s=5, clock=clock
    )
    assert monitor.poll() is False
    set_lifecycle_state(other, "Terminating:Wait")  # another instance's hook is not ours
    clock.now += 5
    assert monitor.poll() is False
    set_lifecycle_state(mine, "Terminating:Wait")
    clock.now += 5
    assert monitor.poll() is True
    assert monitor.group_name == GROUP  # learnt from the group when not configured
    set_lifecycle_state(mine, "Terminating:Proceed")
    assert monitor.poll() is True  # latched: draining never un-happens


def test_poll_is_rate_limited(group: tuple[Any, list[str]]) -> None:
    autoscaling, (mine, _) = group
    clock = Clock()
    monitor = LifecycleHookMonitor(
        autoscaling, instance_id=mine, hook_name=HOOK, min_interval_s=5, clock=clock
    )
    assert monitor.poll() is False
    set_lifecycle_state(mine, "Terminating:Wait")
    clock.now += 1
    assert monitor.poll() is False  # not asked again within the interval
    clock.now += 4
    assert monitor.poll() is True


def test_instance_outside_any_group_is_never_pending(group: tuple[Any, list[str]]) -> None:
    autoscaling, _ = group
    standby = LifecycleHookMonitor(
        autoscaling, instance_id="i-0123456789abcdef0", hook_name=HOOK, min_interval_s=0
    )
    assert standby.poll() is False


def test_api_errors_are_not_fatal(group: tuple[Any, list[str]]) -> None:
    autoscaling, (mine, _) = group
    stubber = Stubber(autoscaling)
    stubber.add_client_error("describe_auto_scaling_instances", "Throttling", http_status_code=400)
    monitor = LifecycleHookMonitor(autoscaling, instance_id=mine, hook_name=HOOK, min_interval_s=0)
    with stubber:
        assert monitor.poll() is False
    set_lifecycle_state(mine, "Terminating:Wait")
    assert monitor.poll() is True


# moto implements no CompleteLifecycleAction: the request is checked with botocore's Stubber.


def test_complete_sends_the_action_once() -> None:
    autoscaling = boto3.client("autoscaling", region_name="us-east-1")
    monitor = LifecycleHookMonitor(
        autoscaling, instance_id="i-0abc", hook_name=HOOK, group_name=GROUP
    )
    with Stubber(autoscaling) as stubber:
        stubber.add_response(
            "complete_lifecycle_action",
            {},
            {
                "LifecycleHookName": HOOK,
                "AutoScalingGroupName": GROUP,
                "InstanceId": "i-0abc",
                "LifecycleActionResult": "CONTINUE",
            },
        )
        assert monitor.complete() is True
        assert monitor.complete() is False  # idempotent: no second request
        stubber.assert_no_pending_responses()


def test_complete_after_the_hook_timed_out_is_quiet() -> None:
    autoscaling = boto3.client("autoscaling", region_name="us-east-1")
    monitor = LifecycleHookMonitor(
        autoscaling, instance_id="i-0abc", hook_name=HOOK, group_name=GROUP
    )
    with Stubber(autoscaling) as stubber:
        stubber.add_client_error(
            "complete_lifecycle_action",
            "ValidationError",
            "No active Lifecycle Action found with instance ID i-0abc",
        )
        assert monitor.complete() is False


def test_complete_raises_other_errors() -> None:
    autoscaling = boto3.client("autoscaling", region_name="us-east-1")
    monitor = LifecycleHookMonitor(
        autoscaling, instance_id="i-0abc", hook_name=HOOK, group_name=GROUP
    )
    with Stubber(autoscaling) as stubber:
        stubber.add_client_error("complete_lifecycle_action", "AccessDenied", "no")
        with pytest.raises(ClientError):
            monitor.complete()


def test_complete_without_a_known_group_is_an_error() -> None:
    monitor = LifecycleHookMonitor(
        boto3.client("autoscaling", region_name="us-east-1"), instance_id="i-0abc", hook_name=HOOK
    )
    with pytest.raises(ValueError, match="WORKER_ASG_NAME"):
        monitor.complete()


class _Imds(BaseHTTPRequestHandler):
    def do_PUT(self) -> None:
        ok = (
            self.path == "/latest/api/token"
            and self.headers["X-aws-ec2-metadata-token-ttl-seconds"]
        )
        self._reply(200 if ok else 400, "token-1")

    def do_GET(self) -> None:
        ok = self.path == "/latest/meta-data/instance-id"
        ok = ok and self.headers.get("X-aws-ec2-metadata-token") == "token-1"
        self._reply(200 if ok else 401, "i-0feedbeef0000000a")

    def _reply(self, status: int, body: str) -> None:
        self.send_response(status)
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def imds() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Imds)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_from_env_reads_the_instance_id_through_imdsv2(imds: str) -> None:
    client = boto3.client("autoscaling", region_name="us-east-1")
    env = {"WORKER_LIFECYCLE_HOOK": HOOK, "WORKER_ASG_NAME": GROUP, "WORKER_IMDS_URL": imds}
    monitor = LifecycleHookMonitor.from_env(client, env)
    assert monitor is not None
    assert (monitor.instance_id, monitor.group_name) == ("i-0feedbeef0000000a", GROUP)
    assert instance_id_from_imds(imds) == "i-0feedbeef0000000a"


def test_from_env_without_a_hook_is_none() -> None:
    assert (
        LifecycleHookMonitor.from_env(boto3.client("autoscaling", region_name="us-east-1"), {})
        is None
    )
