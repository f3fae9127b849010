"""The Auto Scaling termination lifecycle hook, seen from the instance.

When the group scales in or replaces a spot instance (capacity rebalancing), Auto Scaling sets
IMDS ``autoscaling/target-lifecycle-state`` to where the instance is going (``InService``,
``Terminated``, ``Warmed:*``; see "Retrieve the target lifecycle state through instance
metadata" in the Auto Scaling guide) and, with a termination hook, holds it in
``Terminating:Wait`` until someone completes the action or the hook's timeout runs out. The
monitor turns a target state that takes the instance out of service into an interruption; the
worker drains exactly as for a spot notice, and the event's after-release step completes the
action, so the instance goes as soon as it is safe instead of after the whole timeout.
"""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError

from gpu_worker.interruption.event import Interruption, InterruptionAction, Source
from gpu_worker.interruption.imds import ImdsClient, ImdsMonitor, TokenRefused

logger = Logger(service="spotline-worker", child=True)

TARGET_STATE_PATH = "/latest/meta-data/autoscaling/target-lifecycle-state"
# Readable only when the launch template enables instance metadata tags; WORKER_ASG_NAME wins.
GROUP_TAG_PATH = "/latest/meta-data/tags/instance/aws:autoscaling:groupName"
# Steady states that keep the machine (and the worker) running.
STAYING = frozenset({"InService", "Standby", "Detached"})
TERMINATED = "Terminated"
WARMED_PREFIX = "Warmed:"  # back to a warm pool: stopped, hibernated, or terminated there


def leaves_service(state: str) -> bool:
    """True for a target state that takes the instance away; ValueError for no known state."""
    if state in STAYING:
        return False
    if state == TERMINATED or state.startswith(WARMED_PREFIX):
        return True
    raise ValueError(f"not a lifecycle state: {state!r}")


class LifecycleAction:
    """``complete()``: tell Auto Scaling the worker has drained (CompleteLifecycleAction,
    idempotent). The instance id and group come from the settings, else from IMDS."""

    def __init__(
        self,
        autoscaling: Any,
        *,
        hook_name: str,
        group_name: str | None = None,
        instance_id: str | None = None,
        imds: ImdsClient | None = None,
    ) -> None:
        self.autoscaling = autoscaling
        self.hook_name = hook_name
        self.imds = imds
        self._group_name = group_name or None
        self._instance_id = instance_id or None
        self._completed = False

    @property
    def instance_id(self) -> str:
        if self._instance_id is None:
            if self.imds is None:
                raise ValueError("this instance's id is unknown: set WORKER_INSTANCE_ID")
            self._instance_id = self.imds.instance_id()
        return self._instance_id

    @property
    def group_name(self) -> str | None:
        if self._group_name is None and self.imds is not None:
            self._group_name = self.imds.text(GROUP_TAG_PATH) or None
        return self._group_name

    def resolve(self) -> None:
        """Learn the instance id and group now, while IMDS answers; trouble is logged only
        (``complete`` says what is missing)."""
        try:
            _ = self.instance_id, self.group_name
        except (OSError, TokenRefused, ValueError) as exc:
            logger.warning("lifecycle action target unknown", extra={"reason": str(exc)})

    def complete(self, result: str = "CONTINUE") -> bool:
        """True if this call completed the action; False if there was none left to complete."""
        if self._completed:
            return False
        if not self.group_name:
            raise ValueError("the Auto Scaling group is unknown: set WORKER_ASG_NAME")
        try:
            self.autoscaling.complete_lifecycle_action(
                LifecycleHookName=self.hook_name,
                AutoScalingGroupName=self.group_name,
                InstanceId=self.instance_id,
                LifecycleActionResult=result,
            )
        except ClientError as exc:
            # The hook timed out, or another process completed it: nothing is waiting anymore.
            if exc.response["Error"]["Code"] == "ValidationError":
                logger.info(
                    "no lifecycle action to complete",
                    extra={"reason": exc.response["Error"]["Message"]},
                )
                self._completed = True
                return False
            raise
        self._completed = True
        logger.info("lifecycle action completed", extra={"group": self.group_name})
        return True


class LifecycleMonitor(ImdsMonitor):
    """``autoscaling/target-lifecycle-state``: 404 outside a group (the standby), ``InService``
    while serving, ``Terminated`` or ``Warmed:*`` once Auto Scaling takes the instance away.
    Latched: once seen, draining never un-happens."""

    name = str(Source.ASG_LIFECYCLE)
    path = TARGET_STATE_PATH

    def __init__(self, client: ImdsClient, *, poll_s: float, action: LifecycleAction) -> None:
        super().__init__(client, poll_s=poll_s)
        self.action = action
        self.leaving: Interruption | None = None

    def check(self) -> Interruption | None:
        return self.leaving if self.leaving is not None else super().check()

    def parse(self, body: bytes) -> Interruption | None:
        state = body.decode("utf-8").strip()
        if not leaves_service(state):
            return None
        self.action.resolve()
        logger.warning(
            "Auto Scaling is taking this instance out of service",
            extra={"target_state": state, "hook": self.action.hook_name},
        )
        self.leaving = Interruption(
            self.name,
            InterruptionAction.TERMINATE,
            time.time(),
            None,
            self.action.hook_name,
            after_release=self.action.complete,
        )
        return self.leaving
