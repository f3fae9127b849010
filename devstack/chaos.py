"""``python -m devstack chaos``: break things at random, many times, and count.

Moto server as AWS, one IMDS mock per worker (a notice hits one worker), two or more real
``python -m gpu_worker`` processes and the real dead-letter handler on the DLQ (the
DeadLetterRouter plays Lambda's SQS event source, the WebhookSink plays Slack, Discord and the
users' callbacks). Jobs go in through the real enqueue handler: ordinary (echo), long
checkpointing (sleep), memory hogs under a small job limit, permanent failures and crashing
analyzers. A seeded schedule SIGKILLs and SIGTERMs workers, posts spot notices and rebalance
recommendations to their IMDS mocks and restarts them. At the end, from the queues, the job
table, the bucket and the sink: nothing lost, one effect per job, the right ones died, and
everyone was told exactly once. Any violation is listed and the exit status is 1.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import signal
import statistics
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
from botocore.exceptions import ClientError

from devstack.deadletters import DeadLetterRouter, configure_notifications
from devstack.faults import FaultProxy
from devstack.imds import ImdsMock
from devstack.motoserver import MotoServer
from devstack.sink import WebhookSink
from devstack.stack import Devstack
from devstack.workers import WorkerProcess
from gpu_worker.checkpoint import CHECKPOINT_PREFIX, SAVED_AT_METADATA
from spotline.contract import ErrorKind, JobMessage, JobStatus
from spotline.jobstore import JobRecord
from spotline.notified import CALLBACK, delivered_for
from spotline.standard_webhooks import generate_key_pair

MIB = 1024 * 1024
STEP_S = 0.1
CHECKPOINT_EVERY_S = 1.0
JOB_MEMORY_LIMIT = "256Mi"
MAX_ATTEMPTS = 3
# Slack for the measured loss of a hard kill beyond one checkpoint interval: a step in flight,
# the checkpoint's upload, and the drill's own clock reading.
LOSS_SLACK_S = STEP_S + 0.5

# kind -> (share of the jobs, expected status, expected last_error.kind)
MIX: dict[str, tuple[float, JobStatus, ErrorKind | None]] = {
    "echo": (0.50, JobStatus.SUCCEEDED, None),
    "sleep": (0.25, JobStatus.SUCCEEDED, None),
    "memory_hog": (0.08, JobStatus.DEAD_LETTERED, ErrorKind.OOM),
    "fail": (0.09, JobStatus.DEAD_LETTERED, ErrorKind.ANALYZER_ERROR),
    "crash": (0.08, JobStatus.DEAD_LETTERED, ErrorKind.UNKNOWN),
}
FAULT_KINDS = ("sigkill", "sigterm", "spot_notice", "rebalance", "duplicate", "stop_child")
FAULT_WEIGHTS = (3, 2, 2, 1, 2, 1)
# Every attempt's limit on the chaos stack: a stopped child is killed (TIMEOUT) this soon.
MAX_RUNTIME_S = 8
# Attempts a job of each kind earns on its own (its failures, at most MAX_ATTEMPTS); a stopped
# child's TIMEOUT adds one. Anything above is a fault counted as the job's attempt.
EARNED_ATTEMPTS = {
    "echo": 0,
    "sleep": 0,
    "memory_hog": MAX_ATTEMPTS,
    "fail": 1,
    "crash": MAX_ATTEMPTS,
}


@dataclass
class ChaosConfig:
    seed: int
    jobs: int = 200
    workers: int = 3
    duration_s: float = 120.0  # faults are injected for this long (or until the jobs are done)
    fault_every_s: float = 3.0  # mean gap between faults
    timeout_s: float = 540.0  # the whole run, faults included
    visibility_s: int = 5
    # Share of the workers' AWS calls answered as a failing AWS would (throttle, 5xx, a dropped
    # connection), through devstack's FaultProxy, while faults are on. botocore's own retries
    # are off in the drill's workers so each one reaches the worker. 0 turns it off.
    aws_fault_rate: float = 0.05


@dataclass
class Planned:
    job_id: str
    kind: str
    request: dict[str, Any]


@dataclass
class Hit:
    """One job running on a worker when a fault hit it."""

    job_id: str
    kind: str  # the job's kind (echo, sleep, ...)
    fault: str
    at: float  # epoch seconds
    started_at: str | None  # the attempt that was hit
    lost_s: float | None = None  # work past the last checkpoint, lost (hard kills)
    unchecked_s: float | None = None  # what the kill would have cost with no checkpoints
    back_after_s: float | None = None  # fault -> the job running (or done) again


@dataclass
class Slot:
    index: int
    imds: ImdsMock
    worker: WorkerProcess | None = None
    generation: int = 0
    restart_at: float | None = None
    notice_at: float | None = None  # monotonic: a notice follows a rebalance recommendation
    draining: bool = False
    noticed: bool = False  # told to go (notice or SIGTERM): not a target again
    exit_planned: bool = False  # the drill killed it or told it to go: an exit is expected

    @property
    def name(self) -> str:
        return f"w{self.index}-{self.generation}"

    def up(self) -> bool:
        return self.worker is not None and self.worker.alive()


@dataclass
class ChaosReport:
    seed: int
    jobs: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    by_kind: dict[str, Counter[str]] = field(default_factory=dict)
    faults: Counter[str] = field(default_factory=Counter)
    hits: list[Hit] = field(default_factory=list)
    redeliveries: int = 0
    interruptions: int = 0
    violations: list[str] = field(default_factory=list)
    lost_jobs: int = 0
    stuck_jobs: int = 0
    duplicate_effects: int = 0
    worker_exits_unplanned: int = 0
    infra_faults_counted_as_attempts: int = 0
    infra_faults_injected: int = 0
    duplicates_sent: int = 0
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations

    def figures(self) -> dict[str, Any]:
        back = sorted(h.back_after_s for h in self.hits if h.back_after_s is not None)
        lost = [h.lost_s for h in self.hits if h.lost_s is not None]
        per = statistics.fmean(lost) if lost else 0.0
        unchecked = [h.unchecked_s for h in self.hits if h.unchecked_s is not None]
        return {
            "seed": self.seed,
            "jobs": self.jobs,
            "faults_injected": sum(n for k, n in self.faults.items() if k != "restart"),
            "faults": dict(self.faults),
            "jobs_lost": self.lost_jobs,
            "duplicate_effects": self.duplicate_effects,
            "stuck_jobs": self.stuck_jobs,
            "worker_exits_unplanned": self.worker_exits_unplanned,
            "infra_faults_injected": self.infra_faults_injected,
            "infra_faults_counted_as_attempts": self.infra_faults_counted_as_attempts,
            "duplicates_sent": self.duplicates_sent,
            "violations": len(self.violations),
            "redeliveries": self.redeliveries,
            "interruptions": self.interruptions,
            "jobs_hit": len(self.hits),
            "fault_to_running_median_s": round(statistics.median(back), 2) if back else None,
            "fault_to_running_p95_s": round(_p95(back), 2) if back else None,
            "work_redone_s": round(sum(lost), 2),
            "work_redone_per_interruption_s": round(per, 3),
            "checkpoint_interval_s": CHECKPOINT_EVERY_S,
            "redone_to_interval_ratio": round(per / CHECKPOINT_EVERY_S, 3),
            # Baseline, same kills: the attempt's whole work, as if it never checkpointed.
            "work_redone_without_checkpoints_s": round(sum(unchecked), 2),
            "redone_vs_no_checkpoint_ratio": (
                round(sum(lost) / sum(unchecked), 3) if sum(unchecked) > 0 else None
            ),
            "elapsed_s": round(self.elapsed_s, 1),
        }


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def job_mix(jobs: int, rng: random.Random) -> list[str]:
    """``jobs`` kinds in MIX's proportions (each failing kind at least once), shuffled."""
    kinds: list[str] = []
    for kind, (share, status, _) in MIX.items():
        if kind != "echo":
            count = round(jobs * share)
            kinds += [kind] * (max(1, count) if status == JobStatus.DEAD_LETTERED else count)
    kinds += ["echo"] * max(0, jobs - len(kinds))
    rng.shuffle(kinds)
    return kinds


def job_request(kind: str, n: int, rng: random.Random, callback_url: str) -> dict[str, Any]:
    notify = {"notify": {"callback_url": callback_url}}
    if kind == "echo":
        return {"analyzer": "echo", "input": {"n": n}}
    if kind == "sleep":
        seconds = rng.choice([1.5, 2.0, 3.0, 4.0])
        params = {"seconds": seconds, "step_s": STEP_S, "checkpoint_every_s": CHECKPOINT_EVERY_S}
        return {"analyzer": "sleep", "input": {"n": n}, "params": params}
    if kind == "memory_hog":
        # Capped: on a worker without the limit it would succeed (and the drill fail).
        params = {"bytes_per_step": 32 * MIB, "step_s": 0.02, "max_bytes": 2**30}
        return {"analyzer": "memory_hog", "input": {"n": n}, "params": params, **notify}
    if kind == "fail":
        params = {"error": "permanent", "message": f"chaos permanent failure {n}"}
        return {"analyzer": "fail", "input": {"n": n}, "params": params, **notify}
    if kind == "crash":
        params = {"signal": "SIGKILL", "after_s": 0.1}
        return {"analyzer": "crash", "input": {"n": n}, "params": params, **notify}
    raise ValueError(kind)


class Chaos:
    def __init__(
        self, config: ChaosConfig, *, log: Any = print, quiet_handlers: bool = False
    ) -> None:
        self.config = config
        self.quiet_handlers = quiet_handlers
        self.rng = random.Random(config.seed)
        self.log = log
        self.report = ChaosReport(seed=config.seed)
        self.sink = WebhookSink()
        self.signing_key, _ = generate_key_pair()
        self.slots: list[Slot] = []
        self.planned: dict[str, Planned] = {}
        self.pending: list[Hit] = []
        self.dev: Devstack | None = None
        self.router: DeadLetterRouter | None = None
        self.channels: list[str] = []
        self.stopped_jobs: set[str] = set()  # their child was SIGSTOPped once (TIMEOUT)
        self.proxy: FaultProxy | None = None

    # -- workers -------------------------------------------------------------------------------

    def _worker_env(self, slot: Slot) -> dict[str, str]:
        return {
            "WORKER_IMDS_ENDPOINT": slot.imds.url,
            "WORKER_IMDS_POLL_S": "0.5",
            "WORKER_VISIBILITY_WINDOW_S": str(self.config.visibility_s),
            "WORKER_WAIT_S": "1",
            "WORKER_BACKOFF_BASE_S": "1",
            "WORKER_BACKOFF_MAX_S": "2",
            "WORKER_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
            "WORKER_JOB_MEMORY_LIMIT": JOB_MEMORY_LIMIT,
            "WORKER_CHECKPOINT_GRACE_S": "5",
            "WORKER_METRICS": "off",
            "WORKER_ENABLE_DRILLS": "true",
            "WORKER_MAX_RUNTIME_S": str(MAX_RUNTIME_S),
            **(
                {"AWS_ENDPOINT_URL": self.proxy.endpoint_url, "WORKER_AWS_MAX_ATTEMPTS": "1"}
                if self.proxy is not None
                else {}
            ),
        }

    def _start(self, slot: Slot) -> None:
        assert self.dev is not None
        slot.imds.reset()
        slot.generation += 1
        slot.draining, slot.noticed, slot.restart_at, slot.notice_at = False, False, None, None
        slot.exit_planned = False
        slot.worker = self.dev.start_worker(slot.name, **self._worker_env(slot))

    def _healthy(self) -> list[Slot]:
        return [s for s in self.slots if s.up() and not (s.draining or s.noticed)]

    # -- faults --------------------------------------------------------------------------------

    def _table(self) -> dict[str, dict[str, str]]:
        """job_id -> status, worker, started_at of every job: one scan, not a read per job."""
        assert self.dev is not None
        client = self.dev.client("dynamodb")
        rows: dict[str, dict[str, str]] = {}
        pages = client.get_paginator("scan").paginate(
            TableName=self.dev.require_stack.ref("JobsTable"),
            ProjectionExpression="job_id, #s, #w, started_at",
            ExpressionAttributeNames={"#s": "status", "#w": "worker"},
            ConsistentRead=True,
        )
        for page in pages:
            for item in page.get("Items", []):
                rows[item["job_id"]["S"]] = {k: v.get("S", "") for k, v in item.items()}
        return rows

    def _running_on(self, slot: Slot) -> list[JobRecord]:
        assert self.dev is not None
        records = []
        for job_id, row in self._table().items():
            if job_id not in self.planned or row.get("worker") != slot.name:
                continue
            if row.get("status") != str(JobStatus.RUNNING):
                continue
            record = self.dev.job(job_id)
            if record is not None and record.status == JobStatus.RUNNING:
                records.append(record)
        return records

    def _checkpoint_time(self, job_id: str) -> float | None:
        """When the job's last checkpoint state was taken (the worker's ``saved-at`` metadata:
        S3's LastModified is whole seconds, which would overstate a loss by up to a second)."""
        assert self.dev is not None
        try:
            head = self.dev.client("s3").head_object(
                Bucket=self.dev.bucket, Key=f"{CHECKPOINT_PREFIX}{job_id}"
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise
        saved_at = head.get("Metadata", {}).get(SAVED_AT_METADATA)
        return float(saved_at) if saved_at else float(head["LastModified"].timestamp())

    def _hit(self, slot: Slot, fault: str, now: float) -> list[Hit]:
        hits = []
        for record in self._running_on(slot):
            kind = self.planned[record.job_id].kind
            hit = Hit(record.job_id, kind, fault, now, record.started_at)
            # A stopped child makes no progress: time since its checkpoint is not work lost.
            if fault == "sigkill" and kind == "sleep" and record.job_id not in self.stopped_jobs:
                # Work since the last checkpoint (or since the attempt began) is lost.
                marks = (self._checkpoint_time(record.job_id), _epoch(record.started_at))
                since = max((t for t in marks if t is not None), default=now)
                hit.lost_s = max(0.0, now - since)
                began = _epoch(record.started_at)
                hit.unchecked_s = max(0.0, now - began) if began is not None else None
            self.report.hits.append(hit)
            self.pending.append(hit)
            hits.append(hit)
        return hits

    def inject(self) -> None:
        """One fault from the seeded schedule, on a randomly chosen worker."""
        kind = self.rng.choices(FAULT_KINDS, weights=FAULT_WEIGHTS)[0]
        if kind == "duplicate":
            self._duplicate()
            return
        if kind == "stop_child":
            self._stop_child()
            return
        targets = self._healthy()
        if len(targets) <= 1:
            # Keep one worker serving: never take the last healthy one; bring one back instead.
            down = [s for s in self.slots if not s.up()]
            if down:
                self._restart(self.rng.choice(down))
            return
        slot = self.rng.choice(targets)
        assert slot.worker is not None
        now = time.time()
        self.report.faults[kind] += 1
        self.log(f"  t+{self._t():5.1f}s  {kind:<11} {slot.name}")
        if kind != "rebalance":
            slot.exit_planned = True
        if kind == "sigkill":
            hits = self._hit(slot, kind, now)
            slot.worker.kill()  # the host is gone: supervisor and analysis child
            late = time.time() - now  # the kill came after the look: that work is lost too
            for hit in hits:
                if hit.lost_s is not None:
                    hit.lost_s += late
                if hit.unchecked_s is not None:
                    hit.unchecked_s += late
        elif kind == "sigterm":
            self._hit(slot, kind, now)
            slot.worker.signal(signal.SIGTERM)
            slot.noticed = True  # on its way out: not a target again
        elif kind == "spot_notice":
            self._hit(slot, kind, now)
            slot.imds.schedule_notice("terminate", deadline_s=self.rng.uniform(8, 20))
            slot.noticed = True
        else:
            slot.imds.recommend_rebalance()
            slot.draining = True
            # A rebalance recommendation is usually followed by the interruption itself.
            slot.notice_at = time.monotonic() + self.rng.uniform(2, 6)
        if kind in ("sigkill", "sigterm", "spot_notice"):
            slot.restart_at = time.monotonic() + self.rng.uniform(1, 4)

    def _aws_faults_on(self) -> None:
        """Random AWS failures on the workers' calls, of every service and operation."""
        assert self.proxy is not None
        rate = self.config.aws_fault_rate
        for fault, share in (("throttle", 0.4), ("500", 0.3), ("503", 0.1), ("reset", 0.2)):
            self.proxy.inject("*", "*", fault=fault, times=None, probability=rate * share)

    def _aws_faults_off(self) -> None:
        if self.proxy is not None:
            self.report.infra_faults_injected = self.proxy.injected()
            self.proxy.clear()

    def _duplicate(self) -> None:
        """Deliver a job's message again while it runs: at-least-once delivery, a client's
        re-send, a requeue that crashed between its send and its delete."""
        assert self.dev is not None
        running = [
            job_id
            for job_id, row in self._table().items()
            if job_id in self.planned and row.get("status") == str(JobStatus.RUNNING)
        ]
        if not running:
            return
        job_id = self.rng.choice(sorted(running))
        self.dev.queue.send(JobMessage(job_id, self.planned[job_id].request))
        self.report.faults["duplicate"] += 1
        self.report.duplicates_sent += 1
        self.log(f"  t+{self._t():5.1f}s  duplicate   {job_id[:8]}")

    def _stop_child(self) -> None:
        """SIGSTOP the analysis child under a running sleep job: it is killed at the stack's
        runtime cap (TIMEOUT, an attempt the job earns) and the job retried."""
        for slot in self._healthy():
            candidates = [
                r
                for r in self._running_on(slot)
                if self.planned[r.job_id].kind == "sleep" and r.job_id not in self.stopped_jobs
            ]
            child = analysis_child(slot.worker)
            if not candidates or child is None:
                continue
            record = candidates[0]
            with contextlib.suppress(psutil.Error):
                child.send_signal(signal.SIGSTOP)
                self.stopped_jobs.add(record.job_id)
                self.report.faults["stop_child"] += 1
                self.log(f"  t+{self._t():5.1f}s  stop_child  {slot.name} ({record.job_id[:8]})")
            return

    def _restart(self, slot: Slot) -> None:
        if slot.worker is not None and slot.worker.alive():
            return
        if slot.worker is not None:
            slot.worker.kill()  # reap it and close its log
        self.report.faults["restart"] += 1
        self._start(slot)
        self.log(f"  t+{self._t():5.1f}s  restart     {slot.name}")

    def housekeeping(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.draining and slot.notice_at is not None and now >= slot.notice_at:
                self._hit(slot, "spot_notice", time.time())
                slot.imds.schedule_notice("terminate", deadline_s=self.rng.uniform(8, 20))
                self.report.faults["spot_notice"] += 1
                self.log(f"  t+{self._t():5.1f}s  spot_notice {slot.name} (after rebalance)")
                slot.draining, slot.noticed, slot.notice_at = False, True, None
                slot.exit_planned = True
                slot.restart_at = now + self.rng.uniform(1, 4)
            if not slot.up() and slot.worker is not None and not slot.exit_planned:
                # Nobody told it to go: a job (or AWS failing) took a worker down.
                self.report.worker_exits_unplanned += 1
                code = slot.worker.process.returncode if slot.worker.process else None
                self.report.violations.append(f"{slot.name} exited unplanned (code {code})")
                self.log(f"  t+{self._t():5.1f}s  UNPLANNED EXIT {slot.name} (code {code})")
                slot.exit_planned = True
            if not slot.up() and slot.restart_at is not None and now >= slot.restart_at:
                self._restart(slot)
            elif not slot.up() and slot.restart_at is None:
                slot.restart_at = now + self.rng.uniform(1, 4)
        self._follow_hits()

    def _follow_hits(self) -> None:
        """Fault -> the hit job running again: a later claim, or an outcome."""
        assert self.dev is not None
        still = []
        for hit in self.pending:
            record = self.dev.job(hit.job_id)
            if record is None:
                continue
            again = record.started_at != hit.started_at and record.status == JobStatus.RUNNING
            measured = hit.job_id not in self.stopped_jobs
            if (
                again
                and hit.lost_s is None
                and self.planned[hit.job_id].kind == "sleep"
                and measured
            ):
                # A graceful stop checkpoints on the way out: work since the last checkpoint
                # before the fault is what the next holder redoes (none, when it did).
                began = _epoch(hit.started_at)
                saved = self._checkpoint_time(hit.job_id) or began
                if saved is not None:
                    hit.lost_s = max(0.0, hit.at - saved)
                if began is not None:
                    hit.unchecked_s = max(0.0, hit.at - began)
            if again or record.status in (JobStatus.SUCCEEDED, JobStatus.DEAD_LETTERED):
                hit.back_after_s = time.time() - hit.at
            else:
                still.append(hit)
        self.pending = still

    def _t(self) -> float:
        return time.monotonic() - self._t0

    # -- the run -------------------------------------------------------------------------------

    def finished(self) -> bool:
        assert self.dev is not None
        if self.dev.queue.approximate_counts() != (0, 0):
            return False
        if self.dev.dlq.approximate_counts() != (0, 0):
            return False
        table = self._table()
        settled = (str(JobStatus.SUCCEEDED), str(JobStatus.DEAD_LETTERED))
        if any(table.get(job_id, {}).get("status") not in settled for job_id in self.planned):
            return False
        return self._told_everyone()

    def _told_everyone(self) -> bool:
        assert self.dev is not None
        for job_id, plan in self.planned.items():
            record = self.dev.job(job_id)
            if record is None or record.status != JobStatus.DEAD_LETTERED:
                continue
            wanted = set(self.channels)
            if (plan.request.get("notify") or {}).get("callback_url"):
                wanted.add(CALLBACK)
            if not wanted <= delivered_for(record).keys():
                return False
        return True

    def run(self, server: MotoServer | None = None) -> ChaosReport:
        config = self.config
        started = time.monotonic()
        self._t0 = started
        self.log(
            f"chaos: seed {config.seed}, {config.jobs} jobs, {config.workers} workers, "
            f"faults for {config.duration_s:.0f}s (replay with --seed {config.seed})"
        )
        # Loading the handlers writes their environment into os.environ (as a Lambda container
        # has it); put this process's back afterwards so nothing leaks into a test session.
        saved_environ = dict(os.environ)
        self.sink.start()
        # Metrics are off in this process (the drill counts for itself): say nothing about it.
        warnings.filterwarnings("ignore", message="No application metrics to publish")
        # On the console, the handlers' own lines would bury the schedule and the verdict; in
        # a test session they stay (a logger's level outlives the environment that set it).
        quiet = {"POWERTOOLS_METRICS_DISABLED": "true"}
        if self.quiet_handlers:
            quiet["POWERTOOLS_LOG_LEVEL"] = "ERROR"
        self.dev = Devstack(server=server, handler_env=quiet)
        try:
            self.dev.start(stack_name=f"spotline-chaos-{config.seed}")
            env = configure_notifications(self.dev, self.sink.url, self.signing_key)
            # The handler's own lines are in the sink and the job table; keep the console
            # for the schedule and the verdict.
            self.router = DeadLetterRouter(self.dev, handler_env=env).start()
            self.channels = [c.name for c in self.router.module.config.channels]
            if config.aws_fault_rate > 0:
                self.proxy = self.dev.fault_proxy(seed=config.seed)
                self._aws_faults_on()
            self.slots = [Slot(i + 1, ImdsMock().start()) for i in range(config.workers)]
            for slot in self.slots:
                self._start(slot)
            self._submit()
            self.log(f"  submitted {len(self.planned)} jobs; faults begin")
            self._drive(started)
            self._finish_checks()
        finally:
            self.report.elapsed_s = time.monotonic() - started
            self._teardown()
            os.environ.clear()
            os.environ.update(saved_environ)
        return self.report

    def _submit(self) -> None:
        assert self.dev is not None
        callback = self.sink.url.replace("http://", "https://") + "/callback"
        for n, kind in enumerate(job_mix(self.config.jobs, self.rng)):
            request = job_request(kind, n, self.rng, callback)
            status, body = self.dev.submit(request)
            if status != 202:
                self.report.violations.append(f"submit {kind} #{n}: HTTP {status} {body}")
                continue
            self.planned[body["job_id"]] = Planned(body["job_id"], kind, request)
        self.report.jobs = len(self.planned)

    def _drive(self, started: float) -> None:
        config = self.config
        next_fault = time.monotonic() + self.rng.expovariate(1 / config.fault_every_s)
        deadline = started + config.timeout_s
        last_check = 0.0
        while time.monotonic() < deadline:
            now = time.monotonic()
            faulting = now - started < config.duration_s
            if faulting and now >= next_fault:
                self.inject()
                next_fault = now + self.rng.expovariate(1 / config.fault_every_s)
            if not faulting:
                self._aws_faults_off()
            self.housekeeping()
            if now - last_check >= 1.0:
                last_check = now
                if self.finished():
                    self.log(f"  t+{self._t():5.1f}s  every job settled, queues empty")
                    break
            time.sleep(0.2)
        else:
            self.report.violations.append(
                f"timeout: jobs not settled after {config.timeout_s:.0f}s"
            )
        # The DLQ router deletes a batch after the handler returns: give it its moment.
        assert self.dev is not None and self.router is not None
        settle = time.monotonic() + 10
        while time.monotonic() < settle and self.dev.dlq.approximate_counts() != (0, 0):
            time.sleep(0.2)
        self._aws_faults_off()
        self._follow_hits()

    # -- checks --------------------------------------------------------------------------------

    def _finish_checks(self) -> None:
        assert self.dev is not None and self.router is not None
        report, dev = self.report, self.dev
        violation = report.violations.append
        records: dict[str, JobRecord] = {}
        for job_id, plan in self.planned.items():
            record = dev.job(job_id)
            if record is None:
                report.lost_jobs += 1
                violation(f"{job_id[:8]} ({plan.kind}): no job record")
                continue
            records[job_id] = record
            report.outcomes[str(record.status)] += 1
            report.by_kind.setdefault(plan.kind, Counter())[str(record.status)] += 1
            report.interruptions += record.interruptions
            if record.status in (JobStatus.RUNNING, JobStatus.QUEUED):
                report.stuck_jobs += 1
                violation(f"{job_id[:8]} ({plan.kind}): stuck {record.status}")
            elif record.status not in (JobStatus.SUCCEEDED, JobStatus.DEAD_LETTERED):
                report.lost_jobs += 1
                violation(f"{job_id[:8]} ({plan.kind}): ended {record.status}")
        for name, queue in (("jobs", dev.queue), ("DLQ", dev.dlq)):
            visible, in_flight = queue.approximate_counts()
            if (visible, in_flight) != (0, 0):
                violation(f"{name} queue not empty: {visible} visible, {in_flight} in flight")
        self._check_effects(records)
        self._check_attempts(records)
        self._check_deaths(records)
        self._check_told(records)
        if self.router.stats.errors:
            violation(f"DLQ router errors: {self.router.stats.errors[:3]}")
        report.redeliveries = self._redeliveries()
        for hit in self.pending:
            violation(f"{hit.job_id[:8]} hit by {hit.fault} never ran again")

    def _check_effects(self, records: dict[str, JobRecord]) -> None:
        assert self.dev is not None
        dev, violation = self.dev, self.report.violations.append
        keys: Counter[str] = Counter()
        paginator = dev.client("s3").get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=dev.bucket, Prefix="results/"):
            for item in page.get("Contents", []):
                keys[item["Key"]] += 1
        for job_id, record in records.items():
            # One object per attempt (results/{job_id}/result-{attempt}.json): the record names
            # the one whose completion was recorded; a refused attempt removes its own.
            written = [k for k in keys if k.startswith(f"results/{job_id}/")]
            if record.status != JobStatus.SUCCEEDED:
                if written:
                    self.report.duplicate_effects += 1
                    violation(f"{job_id[:8]}: {record.status} but has a result object")
                continue
            key = (record.result_uri or "").removeprefix(f"s3://{dev.bucket}/")
            others = [k for k in written if k != key]
            if keys[key] != 1 or others:
                self.report.duplicate_effects += 1
                violation(f"{job_id[:8]}: {keys[key]} result objects (+{len(others)} others)")
                continue
            if not key.startswith(f"results/{job_id}/result-"):
                violation(f"{job_id[:8]}: result_uri {record.result_uri}")
            if self.planned[job_id].kind == "sleep":
                self._check_steps(job_id, record)

    def _check_steps(self, job_id: str, record: JobRecord) -> None:
        """Every step in the final chain ran once; the work lost to each hard kill is at most
        one checkpoint interval (and a graceful interruption loses none of it)."""
        assert self.dev is not None and record.result_uri
        violation = self.report.violations.append
        result = self.dev.read_result(record.result_uri)
        ran = result.get("ran", [])
        if sorted(ran) != list(range(int(result.get("steps", -1)))):
            duplicated = sorted(s for s, n in Counter(ran).items() if n > 1)
            violation(
                f"{job_id[:8]}: steps ran {len(ran)} for {result.get('steps')}, "
                f"redone {duplicated[:10]}"
            )
        # A checkpoint that AWS failed to store leaves the one before it to resume from.
        missed = self._log_counts("checkpoint not stored; the job goes on")[job_id]
        bound = CHECKPOINT_EVERY_S * (1 + missed) + LOSS_SLACK_S
        for hit in self.report.hits:
            lost = hit.lost_s
            if hit.job_id == job_id and lost is not None and lost > bound:
                violation(
                    f"{job_id[:8]}: {lost:.2f}s redone after a {hit.fault} "
                    f"(checkpoint every {CHECKPOINT_EVERY_S}s)"
                )

    def _check_attempts(self, records: dict[str, JobRecord]) -> None:
        """A job's attempts are what it earned: its own failures, and a TIMEOUT where the drill
        stopped its child. AWS faults and dead workers never count."""
        timeouts = self._timeouts()
        for job_id, record in records.items():
            kind = self.planned[job_id].kind
            earned = min(MAX_ATTEMPTS, EARNED_ATTEMPTS[kind] + timeouts[job_id])
            if record.attempts > earned:
                self.report.infra_faults_counted_as_attempts += record.attempts - earned
                self.report.violations.append(
                    f"{job_id[:8]} ({kind}): {record.attempts} attempts, earned {earned}"
                )

    def _timeouts(self) -> Counter[str]:
        """Attempts that ended TIMEOUT, per job, from every worker's "job finished" lines."""
        return self._log_counts("job finished", error_kind=str(ErrorKind.TIMEOUT))

    def _log_counts(self, message: str, **keys: str) -> Counter[str]:
        """Per job id: the workers' log lines with this message (and these key values)."""
        assert self.dev is not None
        found: Counter[str] = Counter()
        for path in Path(self.dev.workdir).glob("*.log"):
            for line in path.read_text(errors="replace").splitlines():
                if f'"{message}"' not in line:
                    continue
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    if entry.get("message") == message and all(
                        entry.get(k) == v for k, v in keys.items()
                    ):
                        found[str(entry.get("job_id"))] += 1
        return found

    def _check_deaths(self, records: dict[str, JobRecord]) -> None:
        violation = self.report.violations.append
        for job_id, record in records.items():
            kind = self.planned[job_id].kind
            _, expected, error_kind = MIX[kind]
            if record.status != expected and record.status in (
                JobStatus.SUCCEEDED,
                JobStatus.DEAD_LETTERED,
            ):
                error = record.last_error
                why = f"{error.kind}: {error.message[:80]}" if error else "no error"
                violation(f"{job_id[:8]} ({kind}) {record.status}, expected {expected}: {why}")
                continue
            if record.status == JobStatus.DEAD_LETTERED and error_kind is not None:
                got = record.last_error.kind if record.last_error else None
                if got != error_kind:
                    violation(f"{job_id[:8]} ({kind}) dead-lettered as {got}, not {error_kind}")

    def _check_told(self, records: dict[str, JobRecord]) -> None:
        violation = self.report.violations.append
        alerts = {c: self.sink.on(f"/{c}") for c in self.channels}
        notices = [n.json() for n in self.sink.on("/callback")]
        told: dict[str, Counter[str]] = {c: Counter() for c in self.channels}
        for channel, received in alerts.items():
            for message in received:
                text = message.body.decode("utf-8", errors="replace")
                for job_id in self.planned:
                    if job_id in text:
                        told[channel][job_id] += 1
        noticed = Counter(str(n.get("job_id")) for n in notices)
        if not self.channels:
            violation("no alert channels configured")
        for job_id in self.planned:
            dead = records.get(job_id) is not None and records[job_id].status == (
                JobStatus.DEAD_LETTERED
            )
            wants_notice = bool(self.planned[job_id].request.get("notify"))
            for channel in self.channels:
                count = told[channel][job_id]
                if count != (1 if dead else 0):
                    violation(f"{job_id[:8]}: {count} {channel} alert(s), dead={dead}")
            expected = 1 if dead and wants_notice else 0
            if noticed[job_id] != expected:
                violation(f"{job_id[:8]}: {noticed[job_id]} user notice(s), expected {expected}")

    def _redeliveries(self) -> int:
        """Deliveries beyond the first, from every worker's log ("job started" lines)."""
        assert self.dev is not None
        starts: Counter[str] = Counter()
        for path in Path(self.dev.workdir).glob("*.log"):
            for line in path.read_text(errors="replace").splitlines():
                if '"job started"' not in line:
                    continue
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if entry.get("job_id") in self.planned:
                    starts[entry["job_id"]] += 1
        return sum(max(0, n - 1) for n in starts.values())

    def _teardown(self) -> None:
        if self.router is not None:
            self.router.stop()
        if self.dev is not None:
            self.dev.stop()
        for slot in self.slots:
            slot.imds.stop()
        self.sink.stop()


# -- presentation ----------------------------------------------------------------------------


def render(report: ChaosReport) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    outcomes = Table(title=f"chaos drill, seed {report.seed}: jobs by kind and outcome")
    outcomes.add_column("kind")
    statuses = sorted({s for c in report.by_kind.values() for s in c})
    for status in statuses:
        outcomes.add_column(status, justify="right")
    for kind, counts in sorted(report.by_kind.items()):
        outcomes.add_row(kind, *(str(counts.get(s, 0)) for s in statuses))
    outcomes.add_row("all", *(str(report.outcomes.get(s, 0)) for s in statuses), style="bold")
    console.print(outcomes)

    figures = report.figures()
    faults = Table(title="faults and their cost")
    faults.add_column("what")
    faults.add_column("count", justify="right")
    for kind, count in sorted(report.faults.items()):
        faults.add_row(f"fault: {kind}", str(count))
    for label, key in (
        ("jobs running when hit", "jobs_hit"),
        ("redeliveries", "redeliveries"),
        ("interruptions (recorded)", "interruptions"),
        ("work redone, s", "work_redone_s"),
        ("  same kills without checkpoints, s", "work_redone_without_checkpoints_s"),
        ("redone per hit / checkpoint interval", "redone_to_interval_ratio"),
        ("fault -> running again, median s", "fault_to_running_median_s"),
        ("fault -> running again, p95 s", "fault_to_running_p95_s"),
        ("jobs lost", "jobs_lost"),
        ("duplicate effects", "duplicate_effects"),
        ("stuck jobs", "stuck_jobs"),
        ("worker exits unplanned", "worker_exits_unplanned"),
        ("duplicate deliveries sent", "duplicates_sent"),
        ("AWS faults injected", "infra_faults_injected"),
        ("AWS faults counted as attempts", "infra_faults_counted_as_attempts"),
        ("elapsed, s", "elapsed_s"),
    ):
        faults.add_row(label, str(figures[key]))
    console.print(faults)
    slow = sorted(
        (h for h in report.hits if h.back_after_s is not None), key=lambda h: -(h.back_after_s or 0)
    )[:3]
    for hit in slow:
        console.print(
            f"slowest recovery: {hit.job_id[:8]} ({hit.kind}) hit by {hit.fault}, "
            f"running again after {hit.back_after_s:.1f}s"
        )
    if report.violations:
        console.print(f"[bold red]{len(report.violations)} violation(s):[/]")
        for line in report.violations:
            console.print(f"  [red]x[/] {line}")
    else:
        console.print("[bold green]no violations: nothing lost, nothing done twice[/]")


def analysis_child(worker: WorkerProcess | None) -> psutil.Process | None:
    """The worker's analysis child (multiprocessing's spawn), not its resource tracker."""
    if worker is None or not worker.alive():
        return None
    try:
        for child in psutil.Process(worker.pid).children():
            command = " ".join(child.cmdline())
            if "spawn_main" in command and "resource_tracker" not in command:
                return child
    except psutil.Error:
        return None
    return None


def new_seed() -> int:
    return secrets.randbelow(1_000_000)


def run(config: ChaosConfig) -> int:
    report = Chaos(config, quiet_handlers=True).run()
    render(report)
    return 0 if report.ok else 1
