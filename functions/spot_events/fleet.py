"""This stack's instances and schedules in AWS: which instances are ours (the stack tag plus
``spotline:role``), the one-time stop schedule, and the work a worker still holds."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from spot_events.events import STOP_ACTION, iso, parse_time
from spotline.instance_tags import INTERRUPTED_TAG, ROLE_TAG, STACK_TAG, TERMINATES_AT_TAG
from spotline.jobstore import JobStore

__all__ = ["INTERRUPTED_TAG", "ROLE_TAG", "STACK_TAG", "TERMINATES_AT_TAG"]
WORKER = "worker"
STANDBY = "standby"
STOP_SCHEDULE_NAME = "stop-standby"
# A spot instance is reclaimed two minutes after its warning: a warned worker still shows
# `running` meanwhile and must not count as capacity.
AT_RISK_WINDOW = timedelta(minutes=5)
ACTIVE_STATES = frozenset({"pending", "running"})


@dataclass(frozen=True)
class Instance:
    instance_id: str
    state: str
    role: str
    availability_zone: str = ""
    instance_type: str = ""
    launch_time: datetime | None = None
    interrupted_at: datetime | None = None

    @classmethod
    def from_ec2(cls, raw: dict[str, Any]) -> Instance:
        tags = {t["Key"]: t["Value"] for t in raw.get("Tags", [])}
        return cls(
            instance_id=raw["InstanceId"],
            state=raw.get("State", {}).get("Name", "unknown"),
            role=tags.get(ROLE_TAG, ""),
            availability_zone=raw.get("Placement", {}).get("AvailabilityZone", ""),
            instance_type=raw.get("InstanceType", ""),
            launch_time=parse_time(raw.get("LaunchTime")),
            interrupted_at=parse_time(tags.get(INTERRUPTED_TAG)),
        )

    def at_risk(self, now: datetime) -> bool:
        return self.interrupted_at is not None and now - self.interrupted_at < AT_RISK_WINDOW


# -- AWS edges --------------------------------------------------------------------------------


class Fleet:
    """This stack's instances in EC2."""

    def __init__(self, ec2: Any, stack_name: str) -> None:
        self.ec2 = ec2
        self.stack_name = stack_name

    def _describe(
        self, filters: list[dict[str, Any]], ids: list[str] | None = None
    ) -> list[Instance]:
        kwargs: dict[str, Any] = {
            "Filters": [{"Name": f"tag:{STACK_TAG}", "Values": [self.stack_name]}, *filters]
        }
        if ids:
            kwargs["InstanceIds"] = ids
        found = []
        for page in self.ec2.get_paginator("describe_instances").paginate(**kwargs):
            for reservation in page["Reservations"]:
                found.extend(Instance.from_ec2(i) for i in reservation["Instances"])
        return found

    def ours(self, instance_id: str) -> Instance | None:
        """The instance if it carries this stack's tags; None for anyone else's (or unknown)."""
        try:
            found = self._describe([], [instance_id])
        except ClientError as exc:
            if exc.response["Error"]["Code"].startswith("InvalidInstanceID"):
                return None
            raise
        return found[0] if found else None

    def by_role(self, role: str) -> list[Instance]:
        return self._describe(
            [
                {"Name": f"tag:{ROLE_TAG}", "Values": [role]},
                {
                    "Name": "instance-state-name",
                    "Values": ["pending", "running", "stopping", "stopped"],
                },
            ]
        )

    def healthy_workers(self, now: datetime) -> list[Instance]:
        """Running spot workers that have no interruption pending."""
        return [w for w in self.by_role(WORKER) if w.state == "running" and not w.at_risk(now)]

    def mark_interrupted(self, instance_ids: Iterable[str], at: datetime) -> None:
        ids = sorted(set(instance_ids))
        if ids:
            self.ec2.create_tags(Resources=ids, Tags=[{"Key": INTERRUPTED_TAG, "Value": iso(at)}])

    def mark_terminating(self, instance_id: str, at: datetime) -> None:
        """Tell the worker on ``instance_id`` when it goes away: it reads the tag through IMDS
        (gpu_worker/interruption/reclaim.py). The one way a warning that EC2 sends only to
        EventBridge (an interruptible Capacity Reservation's) reaches the instance."""
        self.ec2.create_tags(
            Resources=[instance_id], Tags=[{"Key": TERMINATES_AT_TAG, "Value": iso(at)}]
        )

    def start(self, instance_ids: list[str]) -> None:
        self.ec2.start_instances(InstanceIds=instance_ids)

    def stop(self, instance_ids: list[str]) -> None:
        self.ec2.stop_instances(InstanceIds=instance_ids)


class StopScheduler:
    """The one-time schedule that invokes this function with ``{"action": "stop-standby"}``."""

    def __init__(self, scheduler: Any, group: str, role_arn: str) -> None:
        self.scheduler = scheduler
        self.group = group
        self.role_arn = role_arn

    def schedule_stop(self, at: datetime, *, target_arn: str, scheduled_at: datetime) -> None:
        """Create the schedule, or replace it: the latest healthy event pushes the stop back."""
        definition: dict[str, Any] = {
            "Name": STOP_SCHEDULE_NAME,
            "GroupName": self.group,
            "ScheduleExpression": f"at({at.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%S')})",
            "ScheduleExpressionTimezone": "UTC",
            "FlexibleTimeWindow": {"Mode": "OFF"},
            "ActionAfterCompletion": "DELETE",
            "Target": {
                "Arn": target_arn,
                "RoleArn": self.role_arn,
                "Input": json.dumps({"action": STOP_ACTION, "scheduled_at": iso(scheduled_at)}),
                "RetryPolicy": {"MaximumRetryAttempts": 3, "MaximumEventAgeInSeconds": 3600},
            },
        }
        try:
            self.scheduler.create_schedule(**definition)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConflictException":
                raise
            self.scheduler.update_schedule(**definition)


class Workload:
    """The queue's backlog and a worker's jobs in flight, from SQS and the job table."""

    def __init__(self, queue: Any, store: JobStore, *, page_size: int | None = None) -> None:
        self.queue = queue
        self.store = store
        self.page_size = page_size  # None: DynamoDB's own pages (1 MB); tests make them small

    def backlog(self) -> int:
        visible, _ = self.queue.approximate_counts()
        return visible

    def in_flight(self, instance_id: str) -> int:
        """RUNNING jobs held by the worker on this instance (``JobStore.count_running_on``).

        The index behind it is eventually consistent (as was the Scan it replaced): a job
        claimed a moment ago may not show yet. That is acceptable here: the window is the
        index's lag (well under a second), and a standby stopped inside it is shut down like a
        preempted spot worker: SIGTERM, the worker checkpoints and requeues the job (an
        interruption, never an attempt), and a worker killed outright has its message
        redelivered within one visibility window and taken over."""
        return self.store.count_running_on(instance_id, page_size=self.page_size)
