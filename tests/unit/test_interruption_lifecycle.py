"""The ASG termination lifecycle hook, seen from the instance: the target lifecycle state read
from IMDS (as AWS documents it, not by polling DescribeAutoScalingInstances), and the lifecycle
action completed after the job is released."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from devstack.imds import LIFECYCLE_PATH, ImdsMock
from devstack.motoserver import free_port
from gpu_worker.interruption import (
    ImdsClient,
    InterruptionAction,
    InterruptionWatch,
    LifecycleAction,
    LifecycleMonitor,
    Source,
    monitors_for,
)
from tests.unit.interruption_fixtures import RecordingLogger, log
from tests.unit.test_interruption_sources import settings

__all__ = ["log"]  # fixtures

GROUP = "unit-workers"
HOOK = "drain"


def lifecycle_monitor(imds: ImdsMock, **action: Any) -> LifecycleMonitor:
    client = ImdsClient(imds.url)
    autoscaling = boto3.client("autoscaling", region_name="us-east-1")
    return LifecycleMonitor(
        client,
        poll_s=5,
        action=LifecycleAction(autoscaling, hook_name=HOOK, imds=client, **action),
    )


@pytest.fixture
def group() -> Iterator[tuple[ImdsMock, ImdsMock]]:
    """Two instances of one group, each with its own IMDS (as on EC2), both in service."""
    with (
        ImdsMock("i-0aaaaaaaaaaaaaaa1", lifecycle_state="InService", group_name=GROUP) as mine,
        ImdsMock("i-0aaaaaaaaaaaaaaa2", lifecycle_state="InService", group_name=GROUP) as other,
    ):
        yield mine, other


def test_poll_is_false_while_in_service_and_true_once_the_hook_is_pending(
    group: tuple[ImdsMock, ImdsMock],
) -> None:
    mine, other = group
    monitor = lifecycle_monitor(mine)
    assert monitor.check() is None
    other.set_lifecycle_state("Terminated")  # another instance's hook is not ours
    assert monitor.check() is None
    mine.set_lifecycle_state("Terminated")
    event = monitor.check()
    assert event is not None
    assert monitor.action.group_name == GROUP  # learnt from IMDS when not configured
    assert monitor.action.instance_id == "i-0aaaaaaaaaaaaaaa1"
    mine.set_lifecycle_state("InService")
    assert monitor.check() is event  # latched: draining never un-happens


@pytest.mark.parametrize("state", ["Warmed:Stopped", "Warmed:Hibernated", "Warmed:Terminated"])
def test_going_back_to_a_warm_pool_also_drains(
    group: tuple[ImdsMock, ImdsMock], state: str
) -> None:
    mine, _ = group
    mine.set_lifecycle_state(state)
    assert lifecycle_monitor(mine).check() is not None


def test_standby_and_detach_keep_the_worker(group: tuple[ImdsMock, ImdsMock]) -> None:
    mine, _ = group
    monitor = lifecycle_monitor(mine)
    for state in ("Standby", "Detached", "InService"):
        mine.set_lifecycle_state(state)
        assert monitor.check() is None


def test_poll_is_rate_limited(group: tuple[ImdsMock, ImdsMock]) -> None:
    """The watch asks the monitor again only once its interval has passed."""
    mine, _ = group
    monitor = lifecycle_monitor(mine)
    received: list[Any] = []
    watch = InterruptionWatch([monitor], received.append)
    due: dict[str, float] = {}
    start = time.monotonic()
    watch.check_all(now=start, due=due)
    assert received == []
    mine.set_lifecycle_state("Terminated")
    watch.check_all(now=start + 1, due=due)
    assert received == []  # not asked again within the interval
    assert mine.stats()["counts"][f"GET {LIFECYCLE_PATH} 200"] == 1
    watch.check_all(now=due[monitor.name], due=due)
    assert [event.source for event in received] == [str(Source.ASG_LIFECYCLE)]


def test_instance_outside_any_group_is_never_pending() -> None:
    with ImdsMock() as standby:  # no target lifecycle state: IMDS answers 404
        assert lifecycle_monitor(standby).check() is None


def test_api_errors_are_not_fatal(group: tuple[ImdsMock, ImdsMock], log: RecordingLogger) -> None:
    mine, _ = group
    monitor = lifecycle_monitor(mine)
    mine.serve_garbage(LIFECYCLE_PATH, status=500, body=b"internal error")
    assert monitor.check() is None
    mine.serve_garbage(LIFECYCLE_PATH, body=b"Exploding")  # no lifecycle state we know
    assert monitor.check() is None
    assert log.messages("warning") == ["ignoring unexpected metadata answer"] * 2
    mine.reset()
    mine.set_lifecycle_state("Terminated")
    assert monitor.check() is not None


def test_absent_imds_is_not_fatal_either() -> None:
    client = ImdsClient(f"http://127.0.0.1:{free_port()}", timeout_s=0.5)
    action = LifecycleAction(None, hook_name=HOOK, group_name=GROUP, imds=client)
    assert LifecycleMonitor(client, poll_s=5, action=action).check() is None


def test_pending_hook_is_a_termination_whose_after_release_completes_the_action(
    group: tuple[ImdsMock, ImdsMock],
) -> None:
    mine, _ = group
    monitor = lifecycle_monitor(mine, group_name="configured-group")
    mine.set_lifecycle_state("Terminated")
    event = monitor.check()
    assert event is not None
    assert (event.source, event.action, event.detail) == (
        str(Source.ASG_LIFECYCLE),
        InterruptionAction.TERMINATE,
        "drain",
    )
    assert not event.advisory
    assert event.after_release == monitor.action.complete
    assert monitor.action.group_name == "configured-group"  # the setting wins over IMDS


# moto implements no CompleteLifecycleAction: the request is checked with botocore's Stubber.


def test_complete_sends_the_action_once() -> None:
    autoscaling = boto3.client("autoscaling", region_name="us-east-1")
    action = LifecycleAction(autoscaling, instance_id="i-0abc", hook_name=HOOK, group_name=GROUP)
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
        assert action.complete() is True
        assert action.complete() is False  # idempotent: no second request
        stubber.assert_no_pending_responses()


def test_complete_after_the_hook_timed_out_is_quiet() -> None:
    autoscaling = boto3.client("autoscaling", region_name="us-east-1")
    action = LifecycleAction(autoscaling, instance_id="i-0abc", hook_name=HOOK, group_name=GROUP)
    with Stubber(autoscaling) as stubber:
        stubber.add_client_error(
            "complete_lifecycle_action",
            "ValidationError",
            "No active Lifecycle Action found with instance ID i-0abc",
        )
        assert action.complete() is False


def test_complete_raises_other_errors() -> None:
    autoscaling = boto3.client("autoscaling", region_name="us-east-1")
    action = LifecycleAction(autoscaling, instance_id="i-0abc", hook_name=HOOK, group_name=GROUP)
    with Stubber(autoscaling) as stubber:
        stubber.add_client_error("complete_lifecycle_action", "AccessDenied", "no")
        with pytest.raises(ClientError):
            action.complete()


def test_complete_without_a_known_group_is_an_error() -> None:
    action = LifecycleAction(
        boto3.client("autoscaling", region_name="us-east-1"), instance_id="i-0abc", hook_name=HOOK
    )
    with pytest.raises(ValueError, match="WORKER_ASG_NAME"):
        action.complete()


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
    config = settings(imds_endpoint=imds, lifecycle_hook=HOOK, asg_name=GROUP)
    (monitor,) = [m for m in monitors_for(config, autoscaling=client) if m.name == "asg-lifecycle"]
    assert isinstance(monitor, LifecycleMonitor)
    assert (monitor.action.instance_id, monitor.action.group_name) == ("i-0feedbeef0000000a", GROUP)
    assert ImdsClient(imds).instance_id() == "i-0feedbeef0000000a"


def test_from_env_without_a_hook_is_none() -> None:
    monitors = monitors_for(
        settings(imds_endpoint="http://x"),
        autoscaling=boto3.client("autoscaling", region_name="us-east-1"),
    )
    assert [m for m in monitors if m.name == "asg-lifecycle"] == []
