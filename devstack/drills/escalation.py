"""Escalation drills (issue 19): an OOM moves a job to the larger tier; a job preempted twice
moves to the on-demand lane.

Tiers are worker pools with queues of their own. Here each tier is a worker process on a queue
the drill creates (the template's LargeTierQueue and OnDemandQueue stand-ins), told its tier and
where to escalate as the launch template's user data tells a deployed one:

- tier-default (job memory 300 MiB) and tier-large (1 GiB): a memory hog that needs about
  500 MiB runs out of memory on tier-default, is re-sent to tier-large's queue, and succeeds
  there, with the move in its tier history;
- lane-spot-1 and lane-spot-2 (default tier, each with its own IMDS mock) get a spot notice
  each while the job runs; after the second the job goes to the on-demand lane's queue, where
  the lane's worker (the standby, started when the lane has work, as reconcile does) finishes
  it from its checkpoint. The standby covers the spot queue too (WORKER_COVER_QUEUE_URL, as the
  template's user data sets it): once lane-spot-2 is gone, a job sent to the spot queue is run
  by the standby, after the lane's job.
"""

from __future__ import annotations

import time
from typing import Any

import boto3

from devstack.drills.base import Check, Drill, Expectation
from devstack.drills.spot import STEP_S, _View, drive_in_background, resumed_without_redoing
from devstack.imds import ImdsMock
from devstack.motoserver import wait_until
from devstack.stack import Devstack
from devstack.workers import WorkerProcess
from spotline.contract import ErrorKind, JobMessage, JobStatus, new_job_id
from spotline.jobstore import JobRecord
from spotline.queue import JobQueue
from spotline.tiers import ON_DEMAND_TIER, TIER, TIER_HISTORY

MIB = 1024 * 1024
DEFAULT_LIMIT, LARGE_LIMIT = "300Mi", "1Gi"
HOG_BYTES = 400 * MIB  # plus the child's own ~100 MiB: over the default tier, under the large
PREEMPTIONS_BEFORE_ON_DEMAND = 2


def _queue(dev: Devstack, name: str) -> JobQueue:
    sqs = dev.client("sqs")
    return JobQueue(sqs, sqs.create_queue(QueueName=f"{dev.require_stack.name}-{name}")["QueueUrl"])


def _thread_queue(dev: Devstack, url: str) -> JobQueue:
    """A queue with a client of its own, for a drill's background thread."""
    session = boto3.Session(region_name="us-east-1")
    return JobQueue(session.client("sqs", endpoint_url=dev.server.endpoint_url), url)


def _send(dev: Devstack, queue: JobQueue, request: dict[str, Any]) -> str:
    """Store the job and send it to a tier's queue (as enqueue does for the tier it picks)."""
    job_id = new_job_id()
    dev.store.create(job_id, request)
    queue.send(JobMessage(job_id, request))
    dev.store.mark_sent(job_id)
    return job_id


def _tier_env(tier: str, queue: JobQueue, **more: str) -> dict[str, str]:
    return {"WORKER_TIER": tier, "WORKER_QUEUE_URL": queue.url, **more}


class OomEscalation(Drill):
    name = "OOM escalation"

    def __init__(self) -> None:
        self.job_id: str | None = None
        self.large: WorkerProcess | None = None
        self.problem = ""

    def setup(self, dev: Devstack) -> None:
        default_q, large_q = _queue(dev, "tier-default"), _queue(dev, "tier-large")
        self.large_q = large_q
        dev.start_worker(
            "tier-default",
            **_tier_env(
                "default",
                default_q,
                WORKER_JOB_MEMORY_LIMIT=DEFAULT_LIMIT,
                WORKER_ESCALATION_TIER="large",
                WORKER_ESCALATION_QUEUE_URL=large_q.url,
            ),
        )
        request = {
            "analyzer": "memory_hog",
            "input": {"label": "needs the larger tier"},
            "params": {"bytes_per_step": 32 * MIB, "step_s": 0.02, "max_bytes": HOG_BYTES},
        }
        self.job_id = _send(dev, default_q, request)
        drive_in_background("tier-large", lambda: self._scale_from_zero(dev), self._fail)

    def _fail(self, problem: str) -> None:
        self.problem = problem

    def _scale_from_zero(self, dev: Devstack) -> None:
        # As the larger tier's group does: its first instance starts once a job waits on it.
        large_q = _thread_queue(dev, self.large_q.url)
        wait_until(lambda: sum(large_q.approximate_counts()) > 0, timeout=40, what="an OOM move")
        self.large = dev.start_worker(
            "tier-large", **_tier_env("large", self.large_q, WORKER_JOB_MEMORY_LIMIT=LARGE_LIMIT)
        )

    def done(self, dev: Devstack) -> bool:
        return self.large is not None or bool(self.problem)

    def submit(self, dev: Devstack) -> list[Expectation]:
        if self.job_id is None:
            return []
        return [
            Expectation(self.job_id, "memory hog, OOM -> larger tier", JobStatus.SUCCEEDED, _moved)
        ]

    def checks(self, dev: Devstack, records: dict[str, JobRecord]) -> list[Check]:
        if self.problem:
            return [Check("OOM escalation: the job reached the larger tier", False, self.problem)]
        record = records.get(self.job_id or "")
        moves = record.extra.get(TIER_HISTORY, []) if record else []
        detail = ", ".join(
            f"{m['from']} -> {m['to']} after {m['error_kind']} "
            f"(peak {int(m.get('peak_memory_bytes', 0)) / MIB:.0f} MiB)"
            for m in moves
        )
        return [
            Check("OOM on the default tier -> finished on the larger tier", bool(moves), detail)
        ]


def _moved(dev: Devstack, record: JobRecord) -> str | None:
    moves = record.extra.get(TIER_HISTORY, [])
    if [(m["from"], m["to"], m["error_kind"]) for m in moves] != [
        ("default", "large", str(ErrorKind.OOM))
    ]:
        return f"tier history {moves}"
    if record.worker != "tier-large" or record.extra.get(TIER) != "large":
        return f"finished by {record.worker} on tier {record.extra.get(TIER)}"
    if record.attempts != 1 or not moves[0].get("peak_memory_bytes"):
        return f"attempts={record.attempts}, move {moves[0]}"
    return None


class LaneEscalation(Drill):
    name = "preemption budget"
    seconds = 8.0

    def __init__(self) -> None:
        self.imds = [ImdsMock(), ImdsMock()]
        self.job_id: str | None = None
        self.spot: list[WorkerProcess] = []
        self.lane: WorkerProcess | None = None
        self.lane_q: JobQueue | None = None
        self.spot_q: JobQueue | None = None
        self.problem = ""
        self.lane_started_after_s: float | None = None
        # Sent to the spot queue with no spot worker left: the standby covers it.
        self.cover_job_id: str | None = None
        self.finished = False

    def setup(self, dev: Devstack) -> None:
        for mock in self.imds:
            mock.start()
        self.spot_q, self.lane_q = _queue(dev, "tier-spot"), _queue(dev, "tier-lane")
        self.spot.append(dev.start_worker("lane-spot-1", **self._spot_env(0)))
        request = {
            "analyzer": "sleep",
            "input": {"label": "preempted twice"},
            "params": {"seconds": self.seconds, "step_s": STEP_S, "checkpoint_every_s": 1},
        }
        self.job_id = _send(dev, self.spot_q, request)
        view, job_id = _View(dev), self.job_id
        lane_q = _thread_queue(dev, self.lane_q.url)
        drive_in_background(
            "lane-notices", lambda: self._drive(dev, view, lane_q, job_id), self._fail
        )

    def _spot_env(self, index: int) -> dict[str, str]:
        assert self.spot_q is not None and self.lane_q is not None
        return _tier_env(
            "default",
            self.spot_q,
            WORKER_ON_DEMAND_QUEUE_URL=self.lane_q.url,
            WORKER_PREEMPTIONS_BEFORE_ON_DEMAND=str(PREEMPTIONS_BEFORE_ON_DEMAND),
            WORKER_IMDS_ENDPOINT=self.imds[index].url,
            WORKER_IMDS_POLL_S="0.5",
        )

    def _fail(self, problem: str) -> None:
        self.problem = problem

    def _drive(self, dev: Devstack, view: _View, lane_q: JobQueue, job_id: str) -> None:
        # Each notice comes while its worker runs the job, after a checkpoint made there: a
        # notice pending before the worker took the job would only keep it from taking one.
        for notice, name in enumerate(("lane-spot-1", "lane-spot-2")):
            if notice == 1:
                # As the Auto Scaling group would: a replacement spot worker comes up.
                wait_until(lambda: not self.spot[0].alive(), timeout=30, what="lane-spot-1 to exit")
                self.spot.append(dev.start_worker(name, **self._spot_env(1)))

            def running_on(worker: str = name) -> bool:
                record = view.store.get(job_id)
                return (
                    record is not None
                    and record.status == JobStatus.RUNNING
                    and record.worker == worker
                )

            wait_until(running_on, timeout=30, what=f"{name} to run the job")
            saved = view.steps_saved(job_id)
            wait_until(
                lambda saved=saved: view.steps_saved(job_id) >= saved + 2,
                timeout=30,
                what=f"{name}'s checkpoints",
            )
            self.imds[notice].schedule_notice("terminate", deadline_s=120)

            def released(count: int = notice + 1) -> bool:
                record = view.store.get(job_id)
                return record is not None and record.interruptions >= count

            wait_until(released, timeout=30, what=f"the job released after notice {notice + 1}")
        escalated_at = time.monotonic()
        # The lane has work: the standby starts (reconcile reads the lane's depth).
        wait_until(lambda: sum(lane_q.approximate_counts()) > 0, timeout=30, what="the lane")
        assert self.lane_q is not None and self.spot_q is not None
        self.lane = dev.start_worker(
            "lane-standby",
            **_tier_env(
                ON_DEMAND_TIER,
                self.lane_q,
                WORKER_COVER_QUEUE_URL=self.spot_q.url,
                WORKER_COVER_DLQ_URL=dev.require_stack.ref("JobsDeadLetterQueue"),
            ),
        )
        self.lane_started_after_s = time.monotonic() - escalated_at
        # A spot gap: the spot queue's last worker is gone, and a job arrives there.
        wait_until(lambda: not self.spot[1].alive(), timeout=30, what="lane-spot-2 to exit")
        request = {"analyzer": "sleep", "input": {"label": "spot gap"}, "params": {"seconds": 1}}
        cover_id = new_job_id()
        view.store.create(cover_id, request)
        _thread_queue(dev, self.spot_q.url).send(JobMessage(cover_id, request))
        view.store.mark_sent(cover_id)
        self.cover_job_id = cover_id

        def covered() -> bool:
            record = view.store.get(cover_id)
            return record is not None and record.status == JobStatus.SUCCEEDED

        wait_until(covered, timeout=60, what="the standby to run the spot queue's job")
        self.finished = True

    def done(self, dev: Devstack) -> bool:
        return self.job_id is None or self.finished or bool(self.problem)

    def submit(self, dev: Devstack) -> list[Expectation]:
        if self.job_id is None:
            return []
        return [
            Expectation(
                self.job_id, "sleep, 2 spot notices -> lane", JobStatus.SUCCEEDED, self._check
            )
        ]

    def _check(self, dev: Devstack, record: JobRecord) -> str | None:
        if record.interruptions != PREEMPTIONS_BEFORE_ON_DEMAND or record.attempts != 0:
            return f"interruptions={record.interruptions} attempts={record.attempts}"
        moves = record.extra.get(TIER_HISTORY, [])
        if [m["to"] for m in moves] != [ON_DEMAND_TIER]:
            return f"tier history {moves}"
        if record.worker != "lane-standby":
            return f"finished by {record.worker}, not the lane's worker"
        return resumed_without_redoing(dev, record, "lane-spot-2")

    def checks(self, dev: Devstack, records: dict[str, JobRecord]) -> list[Check]:
        if self.problem:
            return [Check("preemption budget: two notices delivered", False, self.problem)]
        record = records.get(self.job_id or "")
        done = record is not None and record.status == JobStatus.SUCCEEDED
        cover = records.get(self.cover_job_id or "") or (
            dev.store.get(self.cover_job_id) if self.cover_job_id else None
        )
        return [
            Check(
                "preempted twice -> finished on the on-demand lane",
                done and record is not None and record.worker == "lane-standby",
                f"interruptions={record.interruptions if record else '-'}; lane worker started "
                f"{self.lane_started_after_s or 0:.1f}s after the second release",
            ),
            Check(
                "the lane's standby covers the spot queue's gap",
                cover is not None
                and cover.status == JobStatus.SUCCEEDED
                and cover.worker == "lane-standby",
                f"spot-queue job {cover.status if cover else 'not sent'} on "
                f"{cover.worker if cover else '-'}",
            ),
        ]

    def teardown(self, dev: Devstack) -> None:
        for mock in self.imds:
            mock.stop()
