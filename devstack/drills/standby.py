"""Spot interruption -> the on-demand standby, with moto as EC2 and Scheduler.

The drill creates tagged EC2 instances in moto (two spot workers, a stopped standby), sends
EventBridge-shaped EC2 events (the files in events/) through the template's own rule patterns
(EventBridge TestEventPattern) to the real spot_events handler, and, since moto never fires
Scheduler schedules, fires the stop schedule itself once it is due. The standby goes
stopped -> running on the warning and back to stopped after a shortened cooldown.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

from moto.events.models import EventPattern

from devstack.cfn import PROVISIONERS, Stack
from devstack.drills.base import Check, Drill
from devstack.lambdas import LambdaContext, load_event, load_handler_module
from devstack.stack import Devstack
from spot_events.fleet import ROLE_TAG, STACK_TAG, STOP_SCHEDULE_NAME

COOLDOWN_S = 3
AMI_ID = "ami-12c6146b"  # one of moto's built-in images
CONTEXT = LambdaContext(function_name="SpotEventsFunction")


def with_fleet(dev: Devstack) -> Stack:
    """The demo stack plus the two resources behind DeployWorkers (off in the demo) that the
    spot events function needs, created from the template beside the demo's queue and table."""
    base = dev.require_stack
    fleet = Stack(
        base.name,
        base.region,
        base.template,
        {**base.parameters, "DeployWorkers": "true"},
        dict(base.resources),
    )
    for logical_id in ("StandbyScheduleGroup", "StandbySchedulerRole"):
        resource = base.template["Resources"][logical_id]
        props = fleet.resolve(resource.get("Properties", {}))
        fleet.resources[logical_id] = PROVISIONERS[resource["Type"]](
            dev.session, fleet, logical_id, props
        )
    return fleet


class StandbyDrill(Drill):
    name = "standby"

    def __init__(self) -> None:
        self._checks: list[Check] = []
        self._step = "warn"
        self._states: list[str] = []
        self._handler: ModuleType | None = None
        self._patterns: list[dict[str, Any]] = []
        self._stack: Stack | None = None
        self._workers: list[str] = []
        self._standby = ""
        self._stop_at: datetime | None = None

    # -- setup ------------------------------------------------------------------------------

    def setup(self, dev: Devstack) -> None:
        fleet = with_fleet(dev)
        self._stack = fleet
        self._handler = load_handler_module(
            "spot_events.app",
            fleet,
            "SpotEventsFunction",
            {
                **dev.handler_env,
                "ALERT_CHANNELS": "",
                "STANDBY_COOLDOWN_S": str(COOLDOWN_S),
                "STANDBY_START_WAIT_S": "0",
            },
        )
        events = fleet.template["Resources"]["SpotEventsFunction"]["Properties"]["Events"]
        self._patterns = [
            e["Properties"]["Pattern"] for e in events.values() if e["Type"] == "EventBridgeRule"
        ]
        ec2 = dev.client("ec2")
        self._workers = [self._launch(ec2, fleet.name, "worker") for _ in range(2)]
        self._standby = self._launch(ec2, fleet.name, "standby")
        ec2.stop_instances(InstanceIds=[self._standby])
        self._record_state(dev)

    def _launch(self, ec2: Any, stack_name: str, role: str) -> str:
        market = {"InstanceMarketOptions": {"MarketType": "spot"}} if role == "worker" else {}
        tags = [{"Key": STACK_TAG, "Value": stack_name}, {"Key": ROLE_TAG, "Value": role}]
        instance = ec2.run_instances(
            ImageId=AMI_ID,
            MinCount=1,
            MaxCount=1,
            InstanceType="g4dn.xlarge",
            TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
            **market,
        )["Instances"][0]
        return str(instance["InstanceId"])

    # -- EventBridge, as far as the drill needs it -------------------------------------------

    def _deliver(self, dev: Devstack, event: dict[str, Any]) -> list[dict[str, Any]]:
        """Invoke the handler once per template rule whose pattern matches (as EventBridge does),
        with moto's own EventBridge matcher (moto server leaves TestEventPattern unimplemented)."""
        outcomes = []
        for pattern in self._patterns:
            if EventPattern.load(json.dumps(pattern)).matches_event(event):
                assert self._handler is not None
                outcomes.append(self._handler.handler(copy.deepcopy(event), CONTEXT))
        return outcomes

    def _event(self, name: str, instance_id: str) -> dict[str, Any]:
        event = copy.deepcopy(load_event(name))
        event["detail"]["instance-id"] = instance_id
        event["resources"] = [f"arn:aws:ec2:us-east-1:123456789012:instance/{instance_id}"]
        event["time"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return event

    def _state(self, dev: Devstack) -> str:
        found = dev.client("ec2").describe_instances(InstanceIds=[self._standby])
        return str(found["Reservations"][0]["Instances"][0]["State"]["Name"])

    def _record_state(self, dev: Devstack) -> None:
        state = self._state(dev)
        if not self._states or self._states[-1] != state:
            self._states.append(state)

    # -- the story, one step per tick ---------------------------------------------------------

    def tick(self, dev: Devstack, elapsed_s: float) -> None:
        try:
            self._advance(dev, elapsed_s)
        except Exception as exc:  # noqa: BLE001 - a drill failure is reported, not raised
            self._checks.append(Check(f"standby drill at step {self._step}", False, repr(exc)))
            self._step = "done"

    def _advance(self, dev: Devstack, elapsed_s: float) -> None:
        add = self._checks.append
        if self._step == "warn" and elapsed_s >= 0.5:
            stranger = self._deliver(dev, load_event("spot_interruption_unrelated_instance"))
            add(
                Check(
                    "warning for an unrelated instance ignored",
                    _actions(stranger) == ["ignored"],
                    str(_actions(stranger)),
                )
            )
            warning = self._event("spot_interruption_warning", self._workers[0])
            first = self._deliver(dev, warning)
            again = self._deliver(dev, warning)
            self._record_state(dev)
            add(
                Check(
                    "spot warning starts the standby, a duplicate does not",
                    _actions(first) == ["started"] and _actions(again) == ["already-running"],
                    f"{_actions(first)} then {_actions(again)}",
                )
            )
            dev.client("ec2").terminate_instances(InstanceIds=[self._workers[0]])  # reclaimed
            self._step = "replace"
        elif self._step == "replace" and elapsed_s >= 1.5:
            replacement = self._launch(dev.client("ec2"), dev.require_stack.name, "worker")
            fulfilled = self._deliver(dev, self._event("spot_request_fulfillment", replacement))
            running = self._deliver(dev, self._event("instance_state_running", replacement))
            scheduler = dev.client("scheduler")
            group = self._stack.ref("StandbyScheduleGroup") if self._stack else ""
            schedule = scheduler.get_schedule(GroupName=group, Name=STOP_SCHEDULE_NAME)
            expression = schedule["ScheduleExpression"]
            self._stop_at = datetime.fromisoformat(expression[3:-1]).replace(tzinfo=UTC)
            add(
                Check(
                    "new spot worker schedules the standby's stop",
                    _actions(fulfilled + running) == ["stop-scheduled", "stop-scheduled"],
                    f"{expression}, cooldown {COOLDOWN_S}s",
                )
            )
            self._step = "fire"
        elif self._step == "fire" and self._stop_at and datetime.now(UTC) >= self._stop_at:
            # moto never fires schedules: do what Scheduler does, then ActionAfterCompletion.
            scheduler = dev.client("scheduler")
            group = self._stack.ref("StandbyScheduleGroup") if self._stack else ""
            schedule = scheduler.get_schedule(GroupName=group, Name=STOP_SCHEDULE_NAME)
            assert self._handler is not None
            outcome = self._handler.handler(json.loads(schedule["Target"]["Input"]), CONTEXT)
            scheduler.delete_schedule(GroupName=group, Name=STOP_SCHEDULE_NAME)
            self._record_state(dev)
            add(
                Check(
                    "due schedule stops the idle standby",
                    outcome["action"] == "stopped",
                    outcome["action"],
                )
            )
            self._step = "done"

    def done(self, dev: Devstack) -> bool:
        return self._step == "done"

    def checks(self, dev: Devstack, records: Any) -> list[Check]:
        journey = " → ".join(self._states)
        expected = ["stopped", "running", "stopped"]
        return [
            *self._checks,
            Check("standby stopped → running → stopped", self._states == expected, journey),
        ]


def _actions(outcomes: list[dict[str, Any]]) -> list[str]:
    return [str(o.get("action")) for o in outcomes]
