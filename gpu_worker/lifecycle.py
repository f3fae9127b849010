"""The Auto Scaling termination lifecycle hook, seen from the worker on the instance.

When the group scales in or replaces a spot instance (capacity rebalancing), the instance waits
in ``Terminating:Wait`` until someone completes the hook or its heartbeat timeout runs out. The
worker polls for that state (``poll()``), drains (stop receiving, checkpoint and release the
running job) and then calls ``complete()``, so the instance goes as soon as it is safe instead
of after the whole timeout, and never before.

Standalone on purpose: the interruption monitors feed one event stream; this class only answers
"is the hook pending for me?" and "I am done".
"""

from __future__ import annotations

import logging
import os
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

log = logging.getLogger(__name__)

TERMINATING_WAIT = "Terminating:Wait"
IMDS_URL = "http://169.254.169.254"


def instance_id_from_imds(base_url: str = IMDS_URL, *, timeout_s: float = 2.0) -> str:
    """This instance's id through IMDSv2 (token first: the launch template requires it)."""
    token_request = urllib.request.Request(
        f"{base_url}/latest/api/token",
        method="PUT",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
    )
    with urllib.request.urlopen(token_request, timeout=timeout_s) as response:
        token = response.read().decode()
    id_request = urllib.request.Request(
        f"{base_url}/latest/meta-data/instance-id",
        headers={"X-aws-ec2-metadata-token": token},
    )
    with urllib.request.urlopen(id_request, timeout=timeout_s) as response:
        return str(response.read().decode().strip())


class LifecycleHookMonitor:
    """``poll() -> bool``: the termination hook is pending for this instance (latched once seen).
    ``complete() -> bool``: tell Auto Scaling the worker has drained (idempotent)."""

    def __init__(
        self,
        autoscaling: Any,
        *,
        instance_id: str,
        hook_name: str,
        group_name: str | None = None,
        min_interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.autoscaling = autoscaling
        self.instance_id = instance_id
        self.hook_name = hook_name
        self.group_name = group_name
        # The supervisor ticks ten times a second; Describe* calls are throttled per account.
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._last_poll: float | None = None
        self._pending = False
        self._completed = False

    @classmethod
    def from_env(
        cls, autoscaling: Any, environ: dict[str, str] | None = None
    ) -> LifecycleHookMonitor | None:
        """Configured from WORKER_LIFECYCLE_HOOK (+ WORKER_ASG_NAME, WORKER_INSTANCE_ID or IMDS);
        None when no hook is configured (the standby, devstack)."""
        env = os.environ if environ is None else environ
        hook_name = env.get("WORKER_LIFECYCLE_HOOK", "").strip()
        if not hook_name:
            return None
        instance_id = env.get("WORKER_INSTANCE_ID", "").strip() or instance_id_from_imds(
            env.get("WORKER_IMDS_URL", IMDS_URL)
        )
        return cls(
            autoscaling,
            instance_id=instance_id,
            hook_name=hook_name,
            group_name=env.get("WORKER_ASG_NAME", "").strip() or None,
        )

    @property
    def pending(self) -> bool:
        return self._pending

    def poll(self) -> bool:
        if self._pending:
            return True
        now = self._clock()
        if self._last_poll is not None and now - self._last_poll < self.min_interval_s:
            return False
        self._last_poll = now
        try:
            found = self.autoscaling.describe_auto_scaling_instances(
                InstanceIds=[self.instance_id]
            )["AutoScalingInstances"]
        except (BotoCoreError, ClientError) as exc:
            # Not fatal: the spot notice and SIGTERM still reach the worker; try next interval.
            log.warning("lifecycle state unavailable: %s", type(exc).__name__)
            return False
        if not found:
            return False  # not in a group (the on-demand standby)
        instance = found[0]
        self.group_name = self.group_name or instance.get("AutoScalingGroupName")
        if instance.get("LifecycleState") == TERMINATING_WAIT:
            log.warning("termination lifecycle hook pending", extra={"group": self.group_name})
            self._pending = True
        return self._pending

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
                log.info("no lifecycle action to complete: %s", exc.response["Error"]["Message"])
                self._completed = True
                return False
            raise
        self._completed = True
        return True
