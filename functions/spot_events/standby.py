"""The on-demand standby for the spot fleet (failure F4).

Capacity rebalancing only replaced a spot worker after it was gone, leaving minutes with no
server. Here the standby (a stopped on-demand instance from the workers' launch template) is
started on the 2-minute warning, and stopped again a cooldown after the spot fleet is whole,
through a one-time EventBridge Scheduler schedule. Events get lost or arrive twice or out of
order, so every action re-reads EC2 and is idempotent, and a periodic reconcile converges the
standby to what the fleet needs.

Which instances are ours: the stack tag plus ``spotline:role=worker`` (spot workers, tagged by
the Auto Scaling group) or ``spotline:role=standby``.

Where interruptions are recorded: as the tag ``spotline:interrupted-at`` on the interrupted
worker *and* on the standby, in the same CreateTags call that precedes the start. The record
lives on the instances it is about (no reserved keys in the job table, whose scans and API serve
jobs), it costs no extra read (every decision already describes the instances), it vanishes
with the instances, and the IAM policy can confine the write to this one tag key on this
stack's instances.

With the on-demand lane (OnDemandLane), the standby's worker takes the lane's queue first, where
the worker re-sends a job preempted too often (gpu_worker/escalation.py), and covers the jobs
queue after it (gpu_worker/queues.py), so its spot-gap role stays: reconcile starts the standby
while the lane holds jobs, and no stop happens until it is empty.

Length note: about 440 lines, one decision per EC2 event kind plus the reconcile that
converges them; they re-read the same instance view and must agree, so they stay side by side.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from botocore.exceptions import ClientError

from spot_events.events import EventKind, SpotEvent, iso, utc_moment
from spot_events.fleet import (
    ACTIVE_STATES,
    ROLE_TAG,
    STACK_TAG,
    STANDBY,
    WORKER,
    Fleet,
    Instance,
    StopScheduler,
    Workload,
)
from spotline.alerts import Alert, AlertSender, Severity
from spotline.settings import MissingSetting, env_int, require_env


class StandbyNotReady(RuntimeError):
    """The standby is still `stopping`: raised so Lambda's asynchronous retry starts it later."""


class StandbyMissing(RuntimeError):
    """No instance carries this stack's standby tags: a deployment problem, not a retry case."""


@dataclass(frozen=True)
class StandbyOutcome:
    """What a call did, returned by the handler (and shown by devstack)."""

    action: str
    reasons: tuple[str, ...] = ()
    instances: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "reasons": list(self.reasons),
            "instances": list(self.instances),
            **self.extra,
        }


@dataclass(frozen=True)
class StandbyConfig:
    stack_name: str
    schedule_group: str
    scheduler_role_arn: str
    cooldown_s: int = 600
    min_spot_workers: int = 1
    start_on_rebalance: bool = True
    start_wait_s: int = 20
    poll_s: float = 2.0
    on_demand_queue_url: str = ""  # the lane's queue (OnDemandLane); empty: no lane

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> StandbyConfig:
        env = os.environ if environ is None else environ
        rebalance = env.get("STANDBY_START_ON_REBALANCE", "true").strip().lower()
        if rebalance not in {"true", "false"}:
            raise MissingSetting("STANDBY_START_ON_REBALANCE must be true or false")
        return cls(
            stack_name=require_env("STACK_NAME"),
            schedule_group=require_env("STANDBY_SCHEDULE_GROUP"),
            scheduler_role_arn=require_env("STANDBY_SCHEDULER_ROLE_ARN"),
            # STANDBY_COOLDOWN_S overrides the minutes (devstack's drill uses seconds).
            cooldown_s=env_int("STANDBY_COOLDOWN_S", 60 * env_int("STANDBY_COOLDOWN_MINUTES", 10)),
            min_spot_workers=env_int("STANDBY_MIN_SPOT_WORKERS", 1),
            start_on_rebalance=rebalance == "true",
            start_wait_s=env_int("STANDBY_START_WAIT_S", 20),
            on_demand_queue_url=env.get("ON_DEMAND_QUEUE_URL", "").strip(),
        )

    @property
    def cooldown(self) -> timedelta:
        return timedelta(seconds=self.cooldown_s)


class Logger(Protocol):
    def info(self, msg: str, *args: Any, **kwargs: Any) -> Any: ...
    def debug(self, msg: str, *args: Any, **kwargs: Any) -> Any: ...
    def warning(self, msg: str, *args: Any, **kwargs: Any) -> Any: ...
    def error(self, msg: str, *args: Any, **kwargs: Any) -> Any: ...


# -- the decisions ----------------------------------------------------------------------------


def _before(recorded: datetime | None, moment: datetime) -> bool:
    return recorded is None or recorded < moment


def _interrupted_since(standbys: Iterable[Instance], since: datetime) -> bool:
    return any(s.interrupted_at is not None and s.interrupted_at > since for s in standbys)


class StandbyController:
    def __init__(
        self,
        config: StandbyConfig,
        *,
        fleet: Fleet,
        scheduler: StopScheduler,
        workload: Workload,
        logger: Logger,
        alerts: AlertSender | None = None,
        clock: Callable[[], datetime] = utc_moment,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.fleet = fleet
        self.scheduler = scheduler
        self.workload = workload
        self.logger = logger
        self.alerts = alerts
        self.clock = clock
        self.sleep = sleep
        self.monotonic = monotonic

    # -- EC2 events ---------------------------------------------------------------------------

    def on_event(self, event: SpotEvent, *, target_arn: str) -> StandbyOutcome:
        worker = self.fleet.ours(event.instance_id)
        if worker is None or worker.role != WORKER:
            self.logger.debug(
                "event for an instance that is not our worker, ignored",
                extra={"instance_id": event.instance_id, "detail_type": event.detail_type},
            )
            return StandbyOutcome("ignored", ("not our worker",), (event.instance_id,))
        if event.kind in (EventKind.INTERRUPTION, EventKind.REBALANCE):
            return self.on_interruption(event, worker)
        return self.on_worker_up(event, worker, target_arn=target_arn)

    def on_interruption(self, event: SpotEvent, worker: Instance) -> StandbyOutcome:
        if event.kind is EventKind.REBALANCE and not self.config.start_on_rebalance:
            self.logger.info("rebalance recommendation, standby not started (disabled)")
            return StandbyOutcome("ignored", ("rebalance start disabled",), (worker.instance_id,))
        # A redelivered event carries the same time: it alerts once. A later notice alerts again.
        first_notice = _before(worker.interrupted_at, event.time)
        standbys = self._standbys()
        if first_notice and event.terminates_at is not None:
            # The worker learns of a warning IMDS does not carry (a Capacity Reservation's)
            # from this tag; written before the record below, so a retry writes it again.
            self.fleet.mark_terminating(worker.instance_id, event.terminates_at)
        # Record before starting: a stop-standby racing with this warning then sees it. Tags
        # only move forward, so a stale event delivered late cannot hide a newer interruption.
        self.fleet.mark_interrupted(
            [i.instance_id for i in (worker, *standbys) if _before(i.interrupted_at, event.time)],
            event.time,
        )
        started = self._ensure_running(wait=True)
        self.logger.info(
            "standby started on spot notice" if started else "standby already up on spot notice",
            extra={
                "instance_id": worker.instance_id,
                "kind": str(event.kind),
                "started": started,
            },
        )
        if first_notice:
            self._alert_interruption(event, worker, started)
        return StandbyOutcome(
            "started" if started else "already-running",
            (f"{event.kind} for {worker.instance_id}",),
            tuple(started or [s.instance_id for s in standbys]),
            {
                "first_notice": first_notice and event.kind is EventKind.INTERRUPTION,
                "standby_running": True,
            },
        )

    def on_worker_up(
        self, event: SpotEvent, worker: Instance, *, target_arn: str
    ) -> StandbyOutcome:
        standbys = [s for s in self._standbys() if s.state in ACTIVE_STATES]
        if not standbys:
            return StandbyOutcome(
                "nothing-to-stop", ("standby not running",), (worker.instance_id,)
            )
        now = self.clock()
        stop_at = now + self.config.cooldown
        self.scheduler.schedule_stop(stop_at, target_arn=target_arn, scheduled_at=now)
        self.logger.info(
            "standby stop scheduled",
            extra={"instance_id": worker.instance_id, "kind": str(event.kind), "at": iso(stop_at)},
        )
        return StandbyOutcome(
            "stop-scheduled",
            (),
            (worker.instance_id,),
            {"stop_at": iso(stop_at), "standby_running": True},
        )

    # -- scheduled actions --------------------------------------------------------------------

    def stop_standby(self, scheduled_at: datetime | None, *, target_arn: str) -> StandbyOutcome:
        now = self.clock()
        since = scheduled_at or now - self.config.cooldown
        every = self._standbys()
        standbys = [s for s in every if s.state in ACTIVE_STATES]
        if not standbys:
            if _interrupted_since(every, since):
                return self._undo_stop(since)  # a retry after losing the race below
            return StandbyOutcome("already-stopped", extra={"standby_running": False})
        blockers = self._stop_blockers(standbys, since=since, now=now)
        if blockers:
            stop_at = now + self.config.cooldown
            self.scheduler.schedule_stop(stop_at, target_arn=target_arn, scheduled_at=now)
            self.logger.info(
                "standby stop postponed", extra={"reasons": blockers, "at": iso(stop_at)}
            )
            return StandbyOutcome(
                "rescheduled",
                tuple(blockers),
                extra={"stop_at": iso(stop_at), "standby_running": True},
            )
        ids = [s.instance_id for s in standbys]
        self.fleet.stop(ids)
        # A warning that landed between the checks above and the stop saw the standby running
        # and left it alone: it is needed after all, so this call starts it again.
        if _interrupted_since(self._standbys(), since):
            return self._undo_stop(since)
        self.logger.info("standby stopped", extra={"instances": ids})
        return StandbyOutcome("stopped", (), tuple(ids), {"standby_running": False})

    def _undo_stop(self, since: datetime) -> StandbyOutcome:
        self.logger.warning("a spot warning raced the standby's stop: starting it again")
        # Raises StandbyNotReady while it is still stopping: Lambda's retry comes back here.
        started = self._ensure_running(wait=True)
        return StandbyOutcome(
            "restarted",
            (f"interruption after {iso(since)} raced the stop",),
            tuple(started),
            {"standby_running": True},
        )

    def reconcile(self) -> StandbyOutcome:
        """Converge: start when the fleet is short and work waits; stop when idle and whole."""
        outcome = self._reconcile()
        running = outcome.action == "started" or (
            outcome.action != "stopped"
            and any(s.state in ACTIVE_STATES for s in self.fleet.by_role(STANDBY))
        )
        return StandbyOutcome(
            outcome.action,
            outcome.reasons,
            outcome.instances,
            {**outcome.extra, "standby_running": running},
        )

    def _reconcile(self) -> StandbyOutcome:
        now = self.clock()
        lane = self.workload.lane_depth()
        if lane > 0:
            # Jobs preempted too often wait for the standby, whatever the spot fleet does.
            started = self._ensure_running(wait=False)
            if started:
                self.logger.info("reconcile started the standby for the lane", extra={"lane": lane})
                return StandbyOutcome("started", (f"{lane} job(s) on the lane",), tuple(started))
        healthy = self.fleet.healthy_workers(now)
        standbys = self._standbys()
        if len(healthy) < self.config.min_spot_workers:
            backlog = self.workload.backlog()
            if backlog > 0:
                started = self._ensure_running(wait=False)
                if started:
                    self.logger.warning(
                        "reconcile started the standby (a spot event was missed?)",
                        extra={"healthy_workers": len(healthy), "backlog": backlog},
                    )
                    self._send(
                        Alert(
                            title="Standby started by reconcile",
                            text=(
                                f"{len(healthy)} healthy spot worker(s) < "
                                f"{self.config.min_spot_workers} with {backlog} job(s) waiting"
                            ),
                            severity=Severity.WARNING,
                            fields=(("standby", ", ".join(started)),),
                            dedupe_key=f"reconcile-start/{iso(now)}",
                        )
                    )
                    return StandbyOutcome("started", ("fleet short with backlog",), tuple(started))
                if any(s.state == "stopping" for s in standbys):
                    return StandbyOutcome(
                        "pending-start", ("standby still stopping: next reconcile",)
                    )
                return StandbyOutcome("steady", ("fleet short, standby up",))
            return StandbyOutcome("steady", ("fleet short, no backlog",))
        active = [s for s in standbys if s.state in ACTIVE_STATES]
        if not active:
            return StandbyOutcome("steady", ("fleet healthy, standby stopped",))
        # Without the schedule's timestamp: require a full cooldown since the last interruption
        # and since the standby came up, so reconcile never undercuts the scheduled stop.
        blockers = self._stop_blockers(active, since=now - self.config.cooldown, now=now)
        blockers += [
            f"{s.instance_id} up for less than the cooldown"
            for s in active
            if s.launch_time is not None and now - s.launch_time < self.config.cooldown
        ]
        if blockers:
            return StandbyOutcome("steady", tuple(blockers))
        ids = [s.instance_id for s in active]
        self.fleet.stop(ids)
        self.logger.info("reconcile stopped the standby", extra={"instances": ids})
        return StandbyOutcome("stopped", ("fleet healthy, standby idle",), tuple(ids))

    # -- helpers ------------------------------------------------------------------------------

    def _standbys(self) -> list[Instance]:
        standbys = self.fleet.by_role(STANDBY)
        if not standbys:
            raise StandbyMissing(
                f"no instance tagged {ROLE_TAG}={STANDBY} and {STACK_TAG}={self.config.stack_name}"
            )
        return standbys

    def _ensure_running(self, *, wait: bool) -> list[str]:
        """Start every stopped standby; the ids actually started. A `stopping` one is waited
        for (bounded) and then StandbyNotReady is raised, so the asynchronous retry finishes."""
        deadline = self.monotonic() + self.config.start_wait_s
        started: list[str] = []
        while True:
            standbys = self._standbys()
            stopped = [s.instance_id for s in standbys if s.state == "stopped"]
            stopping = [s.instance_id for s in standbys if s.state == "stopping"]
            for instance_id in stopped:
                try:
                    self.fleet.start([instance_id])
                    started.append(instance_id)
                except ClientError as exc:
                    if exc.response["Error"]["Code"] != "IncorrectInstanceState":
                        raise
                    stopping.append(instance_id)  # it moved on between describe and start
            if not stopping:
                return started
            if not wait:
                self.logger.info("standby still stopping", extra={"instances": stopping})
                return started
            if self.monotonic() >= deadline:
                raise StandbyNotReady(f"standby {', '.join(stopping)} still stopping")
            self.sleep(self.config.poll_s)

    def _stop_blockers(
        self, standbys: list[Instance], *, since: datetime, now: datetime
    ) -> list[str]:
        blockers = []
        if (lane := self.workload.lane_depth()) > 0:
            blockers.append(f"{lane} job(s) on the on-demand lane")
        healthy = len(self.fleet.healthy_workers(now))
        if healthy < self.config.min_spot_workers:
            blockers.append(f"{healthy} healthy spot worker(s) < {self.config.min_spot_workers}")
        for standby in standbys:
            if standby.interrupted_at is not None and standby.interrupted_at > since:
                blockers.append(f"interruption at {iso(standby.interrupted_at)}")
            if standby.state == "pending":
                blockers.append(f"{standby.instance_id} still pending")
            elif (busy := self.workload.in_flight(standby.instance_id)) > 0:
                blockers.append(f"{standby.instance_id} has {busy} job(s) in flight")
        return blockers

    def _alert_interruption(self, event: SpotEvent, worker: Instance, started: list[str]) -> None:
        warned = event.kind is EventKind.INTERRUPTION
        action_at = event.terminates_at if warned else None
        title = "Spot interruption warning" if warned else "Spot rebalance recommendation"
        if event.capacity_reservation:
            title = "Capacity Reservation interruption warning"
        self._send(
            Alert(
                title=title,
                text=(
                    f"Spot worker {worker.instance_id} "
                    + ("will be reclaimed" if warned else "is at elevated risk")
                    + (f"; standby {', '.join(started)} started" if started else "; standby up")
                ),
                severity=Severity.WARNING,
                fields=(
                    ("instance", worker.instance_id),
                    ("availability zone", worker.availability_zone or "-"),
                    ("instance type", worker.instance_type or "-"),
                    ("notice at", iso(event.time)),
                    ("action at", iso(action_at) if action_at else "-"),
                ),
                dedupe_key=f"{event.kind}/{worker.instance_id}",
            )
        )

    def _send(self, alert: Alert) -> None:
        if self.alerts is None:
            return
        for channel, delivery in self.alerts.send(alert).items():
            if not delivery.ok:
                # The standby is already started; a failed chat message must not undo or retry it.
                self.logger.warning(
                    "alert delivery failed",
                    extra={"channel": channel, "error": delivery.error, "status": delivery.status},
                )
