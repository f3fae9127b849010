"""Preemption drills: a spot notice through the IMDS mock, and a hard crash (kill -9).

Each drill starts its own worker (so the demo's worker-a lives on), gives it a long
checkpointing job, takes the worker away mid-job and checks that another worker finishes the
job from its checkpoint, with no step before it redone.
"""

from __future__ import annotations

import json
import time
from typing import Any

from botocore.exceptions import ClientError

from devstack.drills.base import Check, Drill, Expectation
from devstack.imds import ImdsMock
from devstack.motoserver import wait_until
from devstack.stack import Devstack
from devstack.workers import WorkerProcess
from pipeline.contract import ErrorKind, JobStatus
from pipeline.jobstore import JobRecord

STEP_S = 0.25
CHECKPOINT_EVERY_S = 1.0


def saved_checkpoint(dev: Devstack, job_id: str) -> dict[str, Any] | None:
    try:
        body = (
            dev.client("s3")
            .get_object(Bucket=dev.bucket, Key=f"checkpoints/{job_id}")["Body"]
            .read()
        )
    except ClientError:
        return None
    state = json.loads(body)
    return state if isinstance(state, dict) else None


def start_claimed_job(
    dev: Devstack, worker: WorkerProcess, seconds: float, label: str
) -> tuple[str | None, str]:
    """Submit a long sleep job and wait until ``worker`` runs it (it is the only idle one)."""
    status, body = dev.submit(
        {
            "analyzer": "sleep",
            "input": {"label": label},
            "params": {"seconds": seconds, "step_s": STEP_S, "checkpoint_every_s": 1},
        }
    )
    if status != 202:
        return None, f"submit: HTTP {status}"
    job_id = str(body["job_id"])

    def claimed() -> bool:
        record = dev.job(job_id)
        return record is not None and record.worker == worker.name

    try:
        wait_until(claimed, timeout=20, what=f"{worker.name} to start its job")
    except TimeoutError:
        return job_id, f"{worker.name} never started the job"
    return job_id, ""


def resumed_without_redoing(dev: Devstack, record: JobRecord, taken_from: str) -> str | None:
    """The job finished elsewhere, from a checkpoint, with every step run exactly once."""
    if record.result_uri is None:
        return "no result_uri"
    result = dev.read_result(record.result_uri)
    if record.worker == taken_from:
        return f"finished by {taken_from}, which was taken away"
    if result["resumed_from"] <= 0:
        return "did not resume from a checkpoint"
    if sorted(result["ran"]) != list(range(result["steps"])):
        return f"steps {result['ran']} (expected each of {result['steps']} once)"
    return None


class SpotNotice(Drill):
    """spot-a gets a spot notice mid-job: it checkpoints, re-sends the job and exits 0; a
    replacement (spot-b) comes up and the job is finished from the checkpoint."""

    name = "spot notice"
    seconds = 6.0

    def __init__(self) -> None:
        self.imds = ImdsMock()
        self.worker: WorkerProcess | None = None
        self.job_id: str | None = None
        self.problem = ""
        self.noticed_at: float | None = None
        self.notice_step = 0
        self.released_after_s: float | None = None
        self.exit_code: int | None = None
        self.replacement_started = False

    def setup(self, dev: Devstack) -> None:
        self.imds.start()
        self.worker = dev.start_worker(
            "spot-a",
            WORKER_IMDS_ENDPOINT=self.imds.url,
            WORKER_IMDS_POLL_S="0.5",
            WORKER_VISIBILITY_WINDOW_S="6",
        )
        self.job_id, self.problem = start_claimed_job(dev, self.worker, self.seconds, "spot")

    def submit(self, dev: Devstack) -> list[Expectation]:
        if self.job_id is None:
            return []
        worker = self.worker.name if self.worker else ""
        return [
            Expectation(
                self.job_id,
                "sleep, spot notice",
                JobStatus.SUCCEEDED,
                lambda d, r: resumed_without_redoing(d, r, worker),
            )
        ]

    def tick(self, dev: Devstack, elapsed_s: float) -> None:
        if self.job_id is None or self.worker is None:
            return
        if self.noticed_at is None:
            saved = saved_checkpoint(dev, self.job_id)
            # Let it make progress first: the notice should cost nothing of it.
            if saved is not None and saved.get("steps_done", 0) >= 6:
                self.noticed_at = self.imds.schedule_notice("terminate", deadline_s=120)
            return
        if self.released_after_s is None:
            record = dev.job(self.job_id)
            if record is not None and record.interruptions >= 1:
                self.released_after_s = time.time() - self.noticed_at
        if self.exit_code is None and not self.worker.alive():
            assert self.worker.process is not None
            self.exit_code = self.worker.process.returncode
        if self.exit_code is not None and not self.replacement_started:
            # As the ASG would: a replacement instance comes up.
            dev.start_worker("spot-b", WORKER_VISIBILITY_WINDOW_S="6")
            self.replacement_started = True

    def done(self, dev: Devstack) -> bool:
        return self.job_id is None or self.replacement_started

    def checks(self, dev: Devstack, records: dict[str, JobRecord]) -> list[Check]:
        if self.job_id is None:
            return [Check("spot drill: job started on spot-a", False, self.problem)]
        record = records.get(self.job_id)
        checks = [
            Check(
                "spot notice -> job released",
                self.released_after_s is not None and self.released_after_s < 5,
                f"back on the queue {self.released_after_s or 0:.1f}s after the notice",
            ),
            Check(
                "spot-a checkpointed and exited 0", self.exit_code == 0, f"exit {self.exit_code}"
            ),
        ]
        if record is not None and record.result_uri and record.status == JobStatus.SUCCEEDED:
            result = dev.read_result(record.result_uri)
            saved_s = result["resumed_from"] * STEP_S
            counted = (record.interruptions, record.attempts)
            checks.append(
                Check(
                    "interruption is not a failure",
                    counted == (1, 0)
                    and record.last_error is not None
                    and record.last_error.kind == ErrorKind.INTERRUPTED,
                    f"interruptions={counted[0]} attempts={counted[1]}",
                )
            )
            checks.append(
                Check(
                    "work saved by the checkpoint",
                    result["resumed_from"] > 0,
                    f"{record.worker} resumed at step {result['resumed_from']} of "
                    f"{result['steps']}: {saved_s:.2f}s of analysis not redone",
                )
            )
        return checks

    def teardown(self, dev: Devstack) -> None:
        self.imds.stop()


class HardCrash(Drill):
    """kill -9 crash-a mid-job: its message reappears after one heartbeat window and another
    worker resumes from the last checkpoint (losing at most one checkpoint interval)."""

    name = "hard crash"
    seconds = 5.0
    window_s = 4

    def __init__(self) -> None:
        self.worker: WorkerProcess | None = None
        self.job_id: str | None = None
        self.problem = ""
        self.killed_at: float | None = None
        self.saved_steps = 0
        self.redelivered_after_s: float | None = None

    def setup(self, dev: Devstack) -> None:
        self.worker = dev.start_worker(
            "crash-a",
            WORKER_IMDS_ENDPOINT="off",
            WORKER_VISIBILITY_WINDOW_S=str(self.window_s),
        )
        self.job_id, self.problem = start_claimed_job(dev, self.worker, self.seconds, "crash")

    def submit(self, dev: Devstack) -> list[Expectation]:
        if self.job_id is None:
            return []
        worker = self.worker.name if self.worker else ""
        return [
            Expectation(
                self.job_id,
                "sleep, kill -9",
                JobStatus.SUCCEEDED,
                lambda d, r: resumed_without_redoing(d, r, worker),
            )
        ]

    def tick(self, dev: Devstack, elapsed_s: float) -> None:
        if self.job_id is None or self.worker is None:
            return
        if self.killed_at is None:
            saved = saved_checkpoint(dev, self.job_id)
            if saved is not None and saved.get("steps_done", 0) >= 4:
                self.worker.kill()  # SIGKILL to supervisor and child: the host is gone
                self.killed_at = time.monotonic()
                after = saved_checkpoint(dev, self.job_id) or {}
                self.saved_steps = int(after.get("steps_done", 0))
            return
        if self.redelivered_after_s is None:
            record = dev.job(self.job_id)
            if record is not None and record.worker not in (None, self.worker.name):
                self.redelivered_after_s = time.monotonic() - self.killed_at

    def done(self, dev: Devstack) -> bool:
        return self.job_id is None or self.redelivered_after_s is not None

    def checks(self, dev: Devstack, records: dict[str, JobRecord]) -> list[Check]:
        if self.job_id is None:
            return [Check("crash drill: job started on crash-a", False, self.problem)]
        after = self.redelivered_after_s
        checks = [
            Check(
                "kill -9 -> redelivered within one window",
                after is not None and after <= self.window_s + 2,
                f"taken over {after or 0:.1f}s after the kill (window {self.window_s}s)",
            )
        ]
        record = records.get(self.job_id)
        if record is not None and record.result_uri and record.status == JobStatus.SUCCEEDED:
            result = dev.read_result(record.result_uri)
            checks.append(
                Check(
                    "resumed from the last checkpoint",
                    result["resumed_from"] == self.saved_steps > 0,
                    f"{record.worker} resumed at step {result['resumed_from']} "
                    f"(checkpoint at the kill: {self.saved_steps}); at most "
                    f"{CHECKPOINT_EVERY_S:g}s of analysis redone",
                )
            )
        return checks
