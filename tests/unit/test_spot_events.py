"""The spot_events handler against moto (EC2, Scheduler, SQS, DynamoDB, SSM)."""

from __future__ import annotations

import copy
import json
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

import boto3
import botocore.client
import pytest
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID
from moto.ec2.models import ec2_backends

from devstack.cfn import Stack, load_template, provision
from devstack.lambdas import LambdaContext, load_event, load_handler_module
from devstack.sink import WebhookSink
from spot_events.fleet import INTERRUPTED_TAG, ROLE_TAG, STACK_TAG, TERMINATES_AT_TAG
from spot_events.standby import StandbyNotReady
from spotline.contract import JobStatus
from spotline.jobstore import JobStore
from tests.unit.conftest import emitted_metrics

TEMPLATE = load_template()  # parsed once; each test provisions its own stack from it
AMI_ID = "ami-12c6146b"  # one of moto's built-in images (listing them all takes seconds)
CONTEXT = LambdaContext(function_name="SpotEventsFunction")


@dataclass
class Fleet:
    """The moto instances of one test: spot workers, the standby, a stranger."""

    ec2: Any
    stack_name: str
    workers: list[str]
    standby: str
    stranger: str

    def state(self, instance_id: str) -> str:
        reservations = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        return str(reservations[0]["Instances"][0]["State"]["Name"])

    def tags(self, instance_id: str) -> dict[str, str]:
        reservations = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        return {t["Key"]: t["Value"] for t in reservations[0]["Instances"][0].get("Tags", [])}

    def launch_worker(self) -> str:
        return _launch(self.ec2, {STACK_TAG: self.stack_name, ROLE_TAG: "worker"}, spot=True)

    def force_state(self, instance_id: str, name: str) -> None:
        # moto moves stop/start instantly; `stopping` only exists if a test puts it there.
        instance = ec2_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].get_instance(instance_id)
        instance._state.name = name


def _launch(ec2: Any, tags: dict[str, str], *, spot: bool = False) -> str:
    kwargs: dict[str, Any] = {}
    if spot:
        kwargs["InstanceMarketOptions"] = {"MarketType": "spot"}
    instance = ec2.run_instances(
        ImageId=AMI_ID,
        MinCount=1,
        MaxCount=1,
        InstanceType="g4dn.xlarge",
        Placement={"AvailabilityZone": "us-east-1b"},
        TagSpecifications=[
            {
                "ResourceType": "instance",
                "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
            }
        ],
        **kwargs,
    )["Instances"][0]
    return str(instance["InstanceId"])


class Recorder:
    """The AWS API calls the handler makes, as (IAM service prefix, operation name)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.active = False

    def invoke(self, app: ModuleType, event: Any) -> dict[str, Any]:
        self.active = True
        try:
            return invoke(app, event)
        finally:
            self.active = False

    def operations(self) -> list[str]:
        return [operation for _, operation in self.calls]


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recording = Recorder()
    original = botocore.client.BaseClient._make_api_call

    def record(self: Any, operation_name: str, api_params: Any) -> Any:
        if recording.active:
            recording.calls.append((self.meta.service_model.signing_name, operation_name))
        return original(self, operation_name, api_params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", record)
    return recording


@pytest.fixture(scope="module")
def moto() -> Iterator[None]:
    # One moto for the module (resetting every backend per test costs seconds); each test gets
    # its own stack, and the handler only ever sees instances tagged with its stack's name.
    with mock_aws():
        yield


@pytest.fixture
def fleet_stack(moto: None, request: pytest.FixtureRequest) -> Stack:
    name = f"unit-{zlib.crc32(request.node.nodeid.encode()):08x}"
    return provision(
        boto3.Session(region_name="us-east-1"),
        stack_name=name,
        parameters={"DeployWorkers": "true"},
        template=TEMPLATE,
    )


@pytest.fixture
def fleet(fleet_stack: Stack) -> Fleet:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    tags = {STACK_TAG: fleet_stack.name, ROLE_TAG: "worker"}
    workers = [_launch(ec2, tags, spot=True) for _ in range(2)]
    standby = _launch(ec2, {**tags, ROLE_TAG: "standby"})
    ec2.stop_instances(InstanceIds=[standby])
    stranger = _launch(ec2, {STACK_TAG: "someone-else", ROLE_TAG: "worker"}, spot=True)
    return Fleet(ec2, fleet_stack.name, workers, standby, stranger)


@pytest.fixture
def sink() -> Iterator[WebhookSink]:
    with WebhookSink() as server:
        yield server


HandlerFactory = Callable[..., ModuleType]


@pytest.fixture
def load_app(fleet_stack: Stack) -> HandlerFactory:
    def load(**env: str) -> ModuleType:
        from aws_lambda_powertools.utilities import parameters

        parameters.clear_caches()
        # Other tests' handlers may leave POWERTOOLS_* settings in os.environ: set ours.
        base = {
            "ALERT_CHANNELS": "",
            "STANDBY_START_WAIT_S": "0",
            "POWERTOOLS_METRICS_DISABLED": "false",
            "POWERTOOLS_LOG_LEVEL": "INFO",
        }
        return load_handler_module(
            "spot_events.app", fleet_stack, "SpotEventsFunction", {**base, **env}
        )

    return load


@pytest.fixture
def app(load_app: HandlerFactory) -> ModuleType:
    return load_app()


@pytest.fixture
def alerting_app(load_app: HandlerFactory, sink: WebhookSink) -> ModuleType:
    boto3.client("ssm").put_parameter(
        Name="/spotline/alerts/webhook",
        Value=f"{sink.url}/spot",
        Type="SecureString",
        Overwrite=True,
    )
    return load_app(ALERT_CHANNELS="webhook")


def ec2_event(name: str, instance_id: str, **detail: Any) -> dict[str, Any]:
    event = copy.deepcopy(load_event(name))
    event["detail"]["instance-id"] = instance_id
    event["detail"].update(detail)
    event["resources"] = [f"arn:aws:ec2:us-east-1:123456789012:instance/{instance_id}"]
    return event


def schedules(stack: Stack) -> list[dict[str, Any]]:
    client = boto3.client("scheduler")
    found = []
    group = stack.ref("StandbyScheduleGroup")
    for summary in client.list_schedules(GroupName=group)["Schedules"]:
        found.append(client.get_schedule(GroupName=summary["GroupName"], Name=summary["Name"]))
    return found


def invoke(app: ModuleType, event: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = app.handler(event, CONTEXT)
    return result


def set_clock(app: ModuleType, moment: datetime) -> None:
    app.controller().clock = lambda: moment


def run_job_on(store: JobStore, worker_id: str) -> str:
    job_id = "6b0f0c3e-1c1a-4c56-9d53-3e2d9c1b7a11"
    store.create(job_id, {"analyzer": "echo", "input": 1})
    store.claim(job_id, owner=f"{worker_id}/m/1", worker=worker_id, expect_owner=None)
    return job_id


# -- interruption warning and rebalance -------------------------------------------------------


def test_interruption_warning_starts_the_standby_and_alerts(
    alerting_app: ModuleType, fleet: Fleet, sink: WebhookSink
) -> None:
    event = ec2_event("spot_interruption_warning", fleet.workers[0])
    outcome = invoke(alerting_app, event)
    assert outcome["action"] == "started"
    assert outcome["instances"] == [fleet.standby]
    assert fleet.state(fleet.standby) == "running"
    # The interruption is recorded on the worker and the standby, with the event's time.
    assert fleet.tags(fleet.workers[0])[INTERRUPTED_TAG] == event["time"]
    assert fleet.tags(fleet.standby)[INTERRUPTED_TAG] == event["time"]
    (alert,) = sink.on("/spot")
    fields = alert.json()["fields"]
    assert fields["instance"] == fleet.workers[0]
    assert fields["availability zone"] == "us-east-1b"
    assert fields["instance type"] == "g4dn.xlarge"
    assert fields["notice at"] == "2026-11-23T05:00:00Z"
    assert fields["action at"] == "2026-11-23T05:02:00Z"


def test_capacity_reservation_warning_is_a_spot_warning_and_tells_the_worker(
    alerting_app: ModuleType, fleet: Fleet, sink: WebhookSink
) -> None:
    # events/spot_capacity_reservation_warning.json copies the reference shape in the
    # EC2 user guide, "Monitor interruptible Capacity Reservations with EventBridge and
    # CloudTrail" (detail: instance-id, instance-action, instance-termination-time, azId).
    event = ec2_event(
        "spot_capacity_reservation_warning",
        fleet.workers[0],
        **{"instance-termination-time": "2026-11-23T05:01:45Z"},
    )
    outcome = invoke(alerting_app, event)
    assert outcome["action"] == "started" and outcome["first_notice"] is True
    assert fleet.state(fleet.standby) == "running"
    assert fleet.tags(fleet.workers[0])[INTERRUPTED_TAG] == event["time"]
    # IMDS has no path for this warning: the worker reads its deadline from this tag.
    assert fleet.tags(fleet.workers[0])[TERMINATES_AT_TAG] == "2026-11-23T05:01:45Z"
    assert TERMINATES_AT_TAG not in fleet.tags(fleet.standby)
    (alert,) = sink.on("/spot")
    assert alert.json()["title"] == "Capacity Reservation interruption warning"
    assert alert.json()["fields"]["action at"] == "2026-11-23T05:01:45Z"


@pytest.mark.parametrize(
    "detail_type",
    [
        "EC2 Capacity Reservation Instance Interruption Warning",
        "EC2 Interruptible Capacity Reservation Instance Interruption Warning",
    ],
)
def test_both_spellings_of_the_reservation_warning_are_warnings(
    app: ModuleType, fleet: Fleet, detail_type: str
) -> None:
    event = ec2_event("spot_capacity_reservation_warning", fleet.workers[1])
    event["detail-type"] = detail_type
    assert invoke(app, event)["action"] == "started"


def test_a_warning_without_a_usable_termination_time_means_two_minutes(
    app: ModuleType, fleet: Fleet
) -> None:
    event = ec2_event(
        "spot_capacity_reservation_warning",
        fleet.workers[0],
        **{"instance-termination-time": "yyyy-mm-ddThh:mm:ssZ"},
    )
    invoke(app, event)
    assert fleet.tags(fleet.workers[0])[TERMINATES_AT_TAG] == "2026-11-23T05:02:00Z"
    # A spot warning names no time: its worker is told two minutes after it, too.
    invoke(app, ec2_event("spot_interruption_warning", fleet.workers[1]))
    assert fleet.tags(fleet.workers[1])[TERMINATES_AT_TAG] == "2026-11-23T05:02:00Z"


def test_a_rebalance_recommendation_does_not_tell_the_worker_it_goes(
    app: ModuleType, fleet: Fleet
) -> None:
    invoke(app, ec2_event("spot_rebalance_recommendation", fleet.workers[1]))
    assert TERMINATES_AT_TAG not in fleet.tags(fleet.workers[1])


def test_rebalance_recommendation_starts_the_standby(app: ModuleType, fleet: Fleet) -> None:
    outcome = invoke(app, ec2_event("spot_rebalance_recommendation", fleet.workers[1]))
    assert outcome["action"] == "started"
    assert fleet.state(fleet.standby) == "running"


def test_rebalance_recommendation_is_ignored_when_disabled(
    load_app: HandlerFactory, fleet: Fleet
) -> None:
    app = load_app(STANDBY_START_ON_REBALANCE="false")
    outcome = invoke(app, ec2_event("spot_rebalance_recommendation", fleet.workers[1]))
    assert outcome["action"] == "ignored"
    assert fleet.state(fleet.standby) == "stopped"


def test_with_rebalance_start_off_the_warning_still_starts_the_standby(
    load_app: HandlerFactory, fleet: Fleet
) -> None:
    app = load_app(STANDBY_START_ON_REBALANCE="false")
    assert (
        invoke(app, ec2_event("spot_rebalance_recommendation", fleet.workers[0]))["action"]
        == "ignored"
    )
    assert fleet.state(fleet.standby) == "stopped"
    assert (
        invoke(app, ec2_event("spot_interruption_warning", fleet.workers[0]))["action"] == "started"
    )
    assert fleet.state(fleet.standby) == "running"


def test_warning_for_an_unrelated_instance_is_ignored(
    app: ModuleType, fleet: Fleet, recorder: Recorder
) -> None:
    unknown = recorder.invoke(app, load_event("spot_interruption_unrelated_instance"))
    stranger = recorder.invoke(app, ec2_event("spot_interruption_warning", fleet.stranger))
    standby_itself = recorder.invoke(app, ec2_event("spot_interruption_warning", fleet.standby))
    assert unknown["action"] == stranger["action"] == standby_itself["action"] == "ignored"
    assert fleet.state(fleet.standby) == "stopped"
    assert INTERRUPTED_TAG not in fleet.tags(fleet.stranger)
    assert set(recorder.operations()) == {"DescribeInstances"}


def test_duplicate_warning_starts_the_standby_once_and_alerts_once(
    alerting_app: ModuleType, fleet: Fleet, sink: WebhookSink, recorder: Recorder
) -> None:
    event = ec2_event("spot_interruption_warning", fleet.workers[0])
    first = recorder.invoke(alerting_app, event)
    second = recorder.invoke(alerting_app, copy.deepcopy(event))
    assert (first["action"], second["action"]) == ("started", "already-running")
    assert recorder.operations().count("StartInstances") == 1
    assert len(sink.on("/spot")) == 1
    # A stale notice delivered late neither alerts nor moves the recorded time back.
    stale = copy.deepcopy(event)
    stale["time"] = "2026-11-23T04:00:00Z"
    recorder.invoke(alerting_app, stale)
    assert fleet.tags(fleet.standby)[INTERRUPTED_TAG] == event["time"]
    assert len(sink.on("/spot")) == 1


def test_dashboard_metrics_count_warnings_once_and_gauge_the_standby(
    app: ModuleType, fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    event = ec2_event("spot_interruption_warning", fleet.workers[0])
    invoke(app, event)
    invoke(app, copy.deepcopy(event))
    set_clock(app, datetime(2026, 11, 23, 5, 13, tzinfo=UTC))  # the warned worker is gone
    fleet.ec2.terminate_instances(InstanceIds=[fleet.workers[0]])
    assert invoke(app, load_event("stop_standby"))["action"] == "stopped"
    first, duplicate, stop = emitted_metrics(capsys.readouterr().out)
    assert first == {"SpotInterruptionWarnings": [1.0], "StandbyRunning": [1.0]}
    assert duplicate == {"StandbyRunning": [1.0]}
    assert stop == {"StandbyRunning": [0.0]}


def test_warning_while_the_standby_is_stopping_raises_so_lambda_retries(
    app: ModuleType, fleet: Fleet
) -> None:
    fleet.ec2.start_instances(InstanceIds=[fleet.standby])
    fleet.force_state(fleet.standby, "stopping")
    event = ec2_event("spot_interruption_warning", fleet.workers[0])
    with pytest.raises(StandbyNotReady):
        invoke(app, event)
    # Lambda's asynchronous retry comes after the instance has finished stopping.
    fleet.force_state(fleet.standby, "stopped")
    assert invoke(app, event)["action"] == "started"
    assert fleet.state(fleet.standby) == "running"


def test_stopping_standby_is_waited_for_within_the_bound(
    load_app: HandlerFactory, fleet: Fleet
) -> None:
    app = load_app(STANDBY_START_WAIT_S="30")
    fleet.force_state(fleet.standby, "stopping")
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        fleet.force_state(fleet.standby, "stopped")  # it finished stopping meanwhile

    app.controller().sleep = sleep
    outcome = invoke(app, ec2_event("spot_interruption_warning", fleet.workers[0]))
    assert outcome["action"] == "started" and len(waits) == 1
    assert fleet.state(fleet.standby) == "running"


def test_no_standby_instance_is_reported_not_retried(app: ModuleType, fleet: Fleet) -> None:
    fleet.ec2.terminate_instances(InstanceIds=[fleet.standby])
    outcome = invoke(app, ec2_event("spot_interruption_warning", fleet.workers[0]))
    assert outcome["action"] == "no-standby"


# -- fulfillment / running -> the stop schedule -----------------------------------------------


@pytest.mark.parametrize("name", ["spot_request_fulfillment", "instance_state_running"])
def test_new_worker_schedules_the_standby_stop_after_the_cooldown(
    app: ModuleType, fleet: Fleet, fleet_stack: Stack, name: str
) -> None:
    fleet.ec2.start_instances(InstanceIds=[fleet.standby])
    now = datetime(2026, 11, 23, 5, 3, tzinfo=UTC)
    set_clock(app, now)
    outcome = invoke(app, ec2_event(name, fleet.launch_worker()))
    assert outcome["action"] == "stop-scheduled"
    (schedule,) = schedules(fleet_stack)
    assert schedule["GroupName"] == fleet_stack.ref("StandbyScheduleGroup")
    assert schedule["ScheduleExpression"] == "at(2026-11-23T05:13:00)"
    assert schedule["ScheduleExpressionTimezone"] == "UTC"
    assert schedule["ActionAfterCompletion"] == "DELETE"
    assert schedule["Target"]["Arn"] == CONTEXT.invoked_function_arn
    assert schedule["Target"]["RoleArn"] == fleet_stack.attr("StandbySchedulerRole", "Arn")
    assert json.loads(schedule["Target"]["Input"]) == {
        "action": "stop-standby",
        "scheduled_at": "2026-11-23T05:03:00Z",
    }


def test_a_later_healthy_event_replaces_the_schedule(
    app: ModuleType, fleet: Fleet, fleet_stack: Stack
) -> None:
    fleet.ec2.start_instances(InstanceIds=[fleet.standby])
    worker = fleet.launch_worker()
    set_clock(app, datetime(2026, 11, 23, 5, 3, tzinfo=UTC))
    invoke(app, ec2_event("spot_request_fulfillment", worker))
    set_clock(app, datetime(2026, 11, 23, 5, 4, tzinfo=UTC))
    invoke(app, ec2_event("instance_state_running", worker))
    (schedule,) = schedules(fleet_stack)
    assert schedule["ScheduleExpression"] == "at(2026-11-23T05:14:00)"


def test_new_worker_with_the_standby_stopped_schedules_nothing(
    app: ModuleType, fleet: Fleet, fleet_stack: Stack
) -> None:
    outcome = invoke(app, ec2_event("spot_request_fulfillment", fleet.launch_worker()))
    assert outcome["action"] == "nothing-to-stop"
    assert schedules(fleet_stack) == []


def test_state_change_other_than_running_is_ignored(
    app: ModuleType, fleet: Fleet, fleet_stack: Stack
) -> None:
    event = ec2_event("instance_state_running", fleet.workers[0], state="stopping")
    assert invoke(app, event)["action"] == "ignored"
    assert schedules(fleet_stack) == []


# -- stop-standby -----------------------------------------------------------------------------


def test_stop_standby_stops_an_idle_standby_of_a_healthy_fleet(
    app: ModuleType, fleet: Fleet
) -> None:
    fleet.ec2.start_instances(InstanceIds=[fleet.standby])
    outcome = invoke(app, load_event("stop_standby"))
    assert outcome["action"] == "stopped"
    assert fleet.state(fleet.standby) == "stopped"
    assert invoke(app, load_event("stop_standby"))["action"] == "already-stopped"


def test_stop_is_refused_while_the_fleet_is_short_then_done_later(
    app: ModuleType, fleet: Fleet, fleet_stack: Stack
) -> None:
    fleet.ec2.start_instances(InstanceIds=[fleet.standby])
    fleet.ec2.terminate_instances(InstanceIds=fleet.workers)
    now = datetime(2026, 11, 23, 5, 13, tzinfo=UTC)
    set_clock(app, now)
    outcome = invoke(app, load_event("stop_standby"))
    assert outcome["action"] == "rescheduled"
    assert "0 healthy spot worker(s) < 1" in outcome["reasons"]
    assert fleet.state(fleet.standby) == "running"
    (schedule,) = schedules(fleet_stack)
    assert schedule["ScheduleExpression"] == "at(2026-11-23T05:23:00)"
    # The replacement arrives; the re-scheduled stop fires.
    fleet.launch_worker()
    set_clock(app, now + timedelta(minutes=10))
    assert invoke(app, json.loads(schedule["Target"]["Input"]))["action"] == "stopped"
    assert fleet.state(fleet.standby) == "stopped"


def test_stop_is_refused_while_the_standby_runs_a_job_then_done_later(
    app: ModuleType, fleet: Fleet, fleet_stack: Stack
) -> None:
    fleet.ec2.start_instances(InstanceIds=[fleet.standby])
    store = JobStore(boto3.client("dynamodb"), fleet_stack.ref("JobsTable"))
    job_id = run_job_on(store, fleet.standby)
    outcome = invoke(app, load_event("stop_standby"))
    assert outcome["action"] == "rescheduled"
    assert f"{fleet.standby} has 1 job(s) in flight" in outcome["reasons"]
    assert fleet.state(fleet.standby) == "running"
    store.transition(job_id, JobStatus.SUCCEEDED)
    assert invoke(app, load_event("stop_standby"))["action"] == "stopped"


def test_a_job_taken_over_from_the_standby_no_longer_holds_it_up(
    app: ModuleType, fleet: Fleet, fleet_stack: Stack
) -> None:
    fleet.ec2.start_instances(InstanceIds=[fleet.standby])
    store = JobStore(boto3.client("dynamodb"), fleet_stack.ref("JobsTable"))
    job_id = run_job_on(store, fleet.standby)
    assert invoke(app, load_event("stop_standby"))["action"] == "rescheduled"
    # Its message came back (the standby's worker presumed dead): a spot worker holds it now.
    store.claim(job_id, "spot/m/2", fleet.workers[0], expect_owner=f"{fleet.standby}/m/1")
    assert invoke(app, load_event("stop_standby"))["action"] == "stopped"


def test_stop_is_refused_when_an_interruption_came_after_the_schedule(
    app: ModuleType, fleet: Fleet
) -> None:
    fleet.ec2.start_instances(InstanceIds=[fleet.standby])
    warning = ec2_event("spot_interruption_warning", fleet.workers[0])
    warning["time"] = "2026-11-23T05:05:00Z"  # after stop_standby.json's scheduled_at
    invoke(app, warning)
    set_clock(app, datetime(2026, 11, 23, 5, 13, tzinfo=UTC))
    outcome = invoke(app, load_event("stop_standby"))
    assert outcome["action"] == "rescheduled"
    assert "interruption at 2026-11-23T05:05:00Z" in outcome["reasons"]
    assert fleet.state(fleet.standby) == "running"


def test_racing_warning_and_stop_leave_the_standby_running(app: ModuleType, fleet: Fleet) -> None:
    # The stop was decided first and the instance is still stopping when the warning lands:
    # the warning raises (retry), and the retry starts it again.
    fleet.ec2.start_instances(InstanceIds=[fleet.standby])
    assert invoke(app, load_event("stop_standby"))["action"] == "stopped"
    fleet.force_state(fleet.standby, "stopping")
    warning = ec2_event("spot_interruption_warning", fleet.workers[0])
    with pytest.raises(StandbyNotReady):
        invoke(app, warning)
    fleet.force_state(fleet.standby, "stopped")
    invoke(app, warning)
    assert fleet.state(fleet.standby) == "running"


def test_warning_landing_during_the_stop_makes_the_stop_start_it_again(
    app: ModuleType, fleet: Fleet
) -> None:
    # The stop passed its checks; the warning lands before StopInstances, sees `running` and
    # returns; the stop then stops the standby, sees the newer interruption and undoes it.
    fleet.ec2.start_instances(InstanceIds=[fleet.standby])
    controller = app.controller()
    real_stop = controller.fleet.stop
    warning = ec2_event("spot_interruption_warning", fleet.workers[0])
    warning["time"] = "2026-11-23T05:05:00Z"  # after stop_standby.json's scheduled_at

    def stop_while_warned(ids: list[str]) -> None:
        assert invoke(app, warning)["action"] == "already-running"
        real_stop(ids)
        fleet.force_state(fleet.standby, "stopping")  # as EC2 would report it for a while

    controller.fleet.stop = stop_while_warned
    with pytest.raises(StandbyNotReady):
        invoke(app, load_event("stop_standby"))
    # Lambda's asynchronous retry of the same stop-standby, once the instance has stopped.
    controller.fleet.stop = real_stop
    fleet.force_state(fleet.standby, "stopped")
    assert invoke(app, load_event("stop_standby"))["action"] == "restarted"
    assert fleet.state(fleet.standby) == "running"


# -- reconcile --------------------------------------------------------------------------------


def test_reconcile_repairs_a_missed_warning(
    alerting_app: ModuleType, fleet: Fleet, fleet_stack: Stack, sink: WebhookSink
) -> None:
    # Both workers vanished without a warning reaching us, and work is waiting.
    fleet.ec2.terminate_instances(InstanceIds=fleet.workers)
    boto3.client("sqs").send_message(QueueUrl=fleet_stack.ref("JobsQueue"), MessageBody="{}")
    outcome = invoke(alerting_app, load_event("reconcile"))
    assert outcome["action"] == "started"
    assert fleet.state(fleet.standby) == "running"
    assert sink.on("/spot")[0].json()["title"] == "Standby started by reconcile"
    assert invoke(alerting_app, load_event("reconcile"))["action"] == "steady"


def test_reconcile_starts_a_standby_that_was_stopping_on_its_next_run(
    app: ModuleType, fleet: Fleet, fleet_stack: Stack
) -> None:
    fleet.ec2.terminate_instances(InstanceIds=fleet.workers)
    boto3.client("sqs").send_message(QueueUrl=fleet_stack.ref("JobsQueue"), MessageBody="{}")
    fleet.force_state(fleet.standby, "stopping")
    assert invoke(app, load_event("reconcile"))["action"] == "pending-start"  # never raises
    fleet.force_state(fleet.standby, "stopped")
    assert invoke(app, load_event("reconcile"))["action"] == "started"
    assert fleet.state(fleet.standby) == "running"


def test_reconcile_leaves_the_standby_stopped_without_a_backlog(
    app: ModuleType, fleet: Fleet
) -> None:
    fleet.ec2.terminate_instances(InstanceIds=fleet.workers)
    assert invoke(app, load_event("reconcile"))["action"] == "steady"
    assert fleet.state(fleet.standby) == "stopped"


def test_reconcile_repairs_a_missed_fulfillment(app: ModuleType, fleet: Fleet) -> None:
    # The standby ran for the interruption; the replacement's events never arrived.
    fleet.ec2.start_instances(InstanceIds=[fleet.standby])
    now = datetime.now(UTC)
    set_clock(app, now)
    early = invoke(app, load_event("reconcile"))
    assert early["action"] == "steady"  # not before a full cooldown: never undercut the schedule
    assert fleet.state(fleet.standby) == "running"
    set_clock(app, now + timedelta(minutes=11))
    assert invoke(app, load_event("reconcile"))["action"] == "stopped"
    assert fleet.state(fleet.standby) == "stopped"


def test_reconcile_keeps_the_standby_while_its_worker_runs_a_job_and_stops_it_after(
    app: ModuleType, fleet: Fleet, fleet_stack: Stack
) -> None:
    fleet.ec2.start_instances(InstanceIds=[fleet.standby])
    store = JobStore(boto3.client("dynamodb"), fleet_stack.ref("JobsTable"))
    # The worker's own path (claim without a read, complete without a reply); its WORKER_ID is
    # the instance id, as the launch template's user data sets it.
    job_id = "0d4c1b7e-5f0a-4d8e-9a57-2f1c3b6e8d90"
    store.create(job_id, {"analyzer": "echo", "input": 1})
    store.claim_queued(job_id, f"{fleet.standby}/m/1", fleet.standby)
    set_clock(app, datetime.now(UTC) + timedelta(minutes=11))
    busy = invoke(app, load_event("reconcile"))
    assert busy["action"] == "steady"
    assert busy["reasons"] == [f"{fleet.standby} has 1 job(s) in flight"]
    assert fleet.state(fleet.standby) == "running"
    store.complete_quietly(job_id, f"{fleet.standby}/m/1", "s3://bucket/results/job.json")
    assert invoke(app, load_event("reconcile"))["action"] == "stopped"
    assert fleet.state(fleet.standby) == "stopped"


def test_reconcile_does_not_count_warned_workers_as_capacity(
    app: ModuleType, fleet: Fleet, fleet_stack: Stack
) -> None:
    event = ec2_event("spot_interruption_warning", fleet.workers[0])
    now = datetime.now(UTC)
    event["time"] = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    invoke(app, event)
    fleet.ec2.terminate_instances(InstanceIds=[fleet.workers[1]])
    set_clock(app, now + timedelta(minutes=1))
    fleet.ec2.stop_instances(InstanceIds=[fleet.standby])  # someone stopped it by hand
    boto3.client("sqs").send_message(QueueUrl=fleet_stack.ref("JobsQueue"), MessageBody="{}")
    assert invoke(app, load_event("reconcile"))["action"] == "started"


# -- malformed input --------------------------------------------------------------------------


def _without_detail() -> dict[str, Any]:
    event = copy.deepcopy(load_event("spot_interruption_warning"))
    del event["detail"]
    return event


def _with(path: str, value: Any) -> dict[str, Any]:
    event = copy.deepcopy(load_event("spot_interruption_warning"))
    target = event
    *parents, leaf = path.split(".")
    for key in parents:
        target = target[key]
    target[leaf] = value
    return event


MALFORMED = {
    "no-detail": _without_detail(),
    "detail-not-object": _with("detail", "i-123"),
    "no-instance-id": _with("detail.instance-id", None),
    "bad-instance-id": _with("detail.instance-id", "i-../../etc"),
    "bad-time": _with("time", "yesterday"),
    "unknown-detail-type": _with("detail-type", "EC2 Something Else"),
    "unknown-source": _with("source", "my.app"),
    "unknown-action": {"action": "explode"},
    "not-an-event": {"hello": "world"},
    "not-an-object": [],
}


def test_malformed_events_are_logged_and_ignored(
    app: ModuleType, fleet: Fleet, caplog: pytest.LogCaptureFixture, fleet_stack: Stack
) -> None:
    # One fleet for all cases: each case is a handler call that must neither raise nor act.
    for name, event in MALFORMED.items():
        caplog.clear()
        outcome = invoke(app, event)
        assert outcome["action"] == "ignored", name
        assert "malformed event ignored" in caplog.messages, name
    assert fleet.state(fleet.standby) == "stopped"
    assert schedules(fleet_stack) == []


# -- least privilege --------------------------------------------------------------------------

# Calls that imply a permission on another service.
IMPLIED = {
    ("scheduler", "CreateSchedule"): "iam:PassRole",
    ("scheduler", "UpdateSchedule"): "iam:PassRole",
}


def _policy_actions() -> set[str]:
    function = load_template()["Resources"]["SpotEventsFunction"]["Properties"]
    actions: set[str] = set()
    for policy in function["Policies"]:
        for statement in policy["Statement"]:
            listed = statement["Action"]
            actions.update([listed] if isinstance(listed, str) else listed)
    return actions


def test_the_function_policy_allows_exactly_the_calls_the_handler_makes(
    alerting_app: ModuleType, fleet: Fleet, fleet_stack: Stack, recorder: Recorder
) -> None:
    """Drive every branch, record the handler's AWS calls, compare with the template's policy."""
    app, run = alerting_app, recorder.invoke
    run(app, ec2_event("spot_interruption_warning", fleet.workers[0]))
    replacement = fleet.launch_worker()
    run(app, ec2_event("spot_request_fulfillment", replacement))
    run(app, ec2_event("instance_state_running", replacement))  # replaces the schedule
    store = JobStore(boto3.client("dynamodb"), fleet_stack.ref("JobsTable"))
    job_id = run_job_on(store, fleet.standby)
    assert run(app, load_event("stop_standby"))["action"] == "rescheduled"  # busy
    store.transition(job_id, JobStatus.SUCCEEDED)
    set_clock(app, datetime.now(UTC) + timedelta(hours=1))
    assert run(app, load_event("stop_standby"))["action"] == "stopped"
    fleet.ec2.terminate_instances(InstanceIds=[*fleet.workers, replacement])
    boto3.client("sqs").send_message(QueueUrl=fleet_stack.ref("JobsQueue"), MessageBody="{}")
    assert run(app, load_event("reconcile"))["action"] == "started"
    made = {f"{service}:{operation}" for service, operation in recorder.calls}
    made |= {IMPLIED[call] for call in recorder.calls if call in IMPLIED}
    assert made == _policy_actions()
