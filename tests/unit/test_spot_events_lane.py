"""The on-demand lane in the spot_events handler: jobs on the lane's queue start the standby
(reconcile) and hold off its stop until the queue is empty."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import ModuleType

import boto3
import pytest
from moto import mock_aws

from devstack.cfn import Stack, provision
from devstack.lambdas import load_event, load_handler_module
from spot_events.fleet import ROLE_TAG, STACK_TAG
from tests.unit.test_spot_events import TEMPLATE, Fleet, _launch, invoke, set_clock

LANE = {"DeployWorkers": "true", "WorkerTiers": "default,large", "OnDemandLane": "true"}


@pytest.fixture(scope="module")
def moto() -> Iterator[None]:
    with mock_aws():
        yield


@pytest.fixture
def lane_stack(moto: None, request: pytest.FixtureRequest) -> Stack:
    name = f"lane-{zlib.crc32(request.node.nodeid.encode()):08x}"
    return provision(
        boto3.Session(region_name="us-east-1"), stack_name=name, parameters=LANE, template=TEMPLATE
    )


@pytest.fixture
def fleet(lane_stack: Stack) -> Fleet:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    tags = {STACK_TAG: lane_stack.name, ROLE_TAG: "worker"}
    workers = [_launch(ec2, tags, spot=True) for _ in range(2)]
    standby = _launch(ec2, {**tags, ROLE_TAG: "standby"})
    ec2.stop_instances(InstanceIds=[standby])
    stranger = _launch(ec2, {STACK_TAG: "someone-else", ROLE_TAG: "worker"}, spot=True)
    return Fleet(ec2, lane_stack.name, workers, standby, stranger)


@pytest.fixture
def app(lane_stack: Stack) -> ModuleType:
    env = {"ALERT_CHANNELS": "", "STANDBY_START_WAIT_S": "0", "POWERTOOLS_LOG_LEVEL": "INFO"}
    return load_handler_module("spot_events.app", lane_stack, "SpotEventsFunction", env)


def on_the_lane(stack: Stack) -> str:
    sqs = boto3.client("sqs")
    url = stack.ref("OnDemandQueue")
    sqs.send_message(QueueUrl=url, MessageBody='{"job_id": "on-the-lane"}')
    return url


def test_reconcile_starts_the_standby_for_jobs_on_the_lane_with_a_whole_fleet(
    app: ModuleType, fleet: Fleet, lane_stack: Stack
) -> None:
    assert invoke(app, load_event("reconcile"))["action"] == "steady"  # lane empty
    on_the_lane(lane_stack)

    outcome = invoke(app, load_event("reconcile"))

    assert outcome["action"] == "started" and outcome["reasons"] == ["1 job(s) on the lane"]
    assert fleet.state(fleet.standby) == "running"


def test_the_standby_stops_only_once_the_lane_is_empty(
    app: ModuleType, fleet: Fleet, lane_stack: Stack
) -> None:
    fleet.ec2.start_instances(InstanceIds=[fleet.standby])
    url = on_the_lane(lane_stack)
    set_clock(app, datetime.now(UTC) + timedelta(minutes=11))

    kept = invoke(app, load_event("reconcile"))
    assert kept["action"] == "steady" and "1 job(s) on the on-demand lane" in kept["reasons"]
    stop = invoke(app, load_event("stop_standby"))
    assert stop["action"] == "rescheduled" and "1 job(s) on the on-demand lane" in stop["reasons"]
    assert fleet.state(fleet.standby) == "running"

    # The lane's worker took the job and finished it: the queue is empty.
    sqs = boto3.client("sqs")
    (message,) = sqs.receive_message(QueueUrl=url)["Messages"]
    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])

    assert invoke(app, load_event("reconcile"))["action"] == "stopped"
    assert fleet.state(fleet.standby) == "stopped"


def test_a_job_being_run_on_the_lane_counts_as_lane_depth(
    app: ModuleType, fleet: Fleet, lane_stack: Stack
) -> None:
    fleet.ec2.start_instances(InstanceIds=[fleet.standby])
    url = on_the_lane(lane_stack)
    boto3.client("sqs").receive_message(QueueUrl=url, VisibilityTimeout=300)  # in flight
    set_clock(app, datetime.now(UTC) + timedelta(minutes=11))
    kept = invoke(app, load_event("reconcile"))
    assert "1 job(s) on the on-demand lane" in kept["reasons"]
