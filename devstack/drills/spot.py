"""Preemption drills: a spot notice through the IMDS mock, and a hard crash (kill -9).

Each drill starts its own worker (so the demo's worker-a lives on), gives it a long
checkpointing job, takes the worker away mid-job and checks that another worker finishes the
job from its checkpoint, with no step before it redone.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import boto3
from botocore.exceptions import ClientError

from devstack.drills.base import Check, Drill, Expectation
from devstack.imds import ImdsMock
from devstack.motoserver import wait_until
from devstack.stack import Devstack
from devstack.workers import WorkerProcess
from spotline.contract import ErrorKind, JobStatus
from spotline.jobstore import JobRecord, JobStore

STEP_S = 0.25
CHECKPOINT_EVERY_S = 1.0


class _View:
    """Clients of its own for a drill's background thread (boto3 sessions are not thread-safe)."""

    def __init__(self, dev: Devstack) -> None:
        session = boto3.Session(region_name="us-east-1")
        endpoint = dev.server.endpoint_url
        self.s3 = session.client("s3", endpoint_url=endpoint)
        self.store = JobStore(
            session.client("dynamodb", endpoint_url=endpoint), dev.require_stack.ref("JobsTable")
        )
        self.bucket = dev.bucket

    def steps_saved(self, job_id: str) -> int:
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=f"checkpoints/{job_id}")[
                "Body"
            ].read()
        except ClientError:
            return 0
        state = json.loads(body)
        return int(state.get("steps_done", 0)) if isinstance(state, dict) else 0


def drive_in_background(
    name: str, drive: Callable[[], None], on_error: Callable[[str], None]
) -> None:
    """Run a drill's fault schedule on its own thread, so a slow demo loop (a busy machine)
    never delays the fault or the measurement of what followed it."""

    def run() -> None:
        try:
            drive()
        except TimeoutError as exc:
            on_error(str(exc))

    threading.Thread(target=run, name=name, daemon=True).start()


def has_polled(worker: WorkerProcess) -> bool:
    """True once ``worker`` has polled the queue (its health endpoint, on the port it logged)."""
    ports = [
        line.get("port")
        for line in _json_lines(worker.log_path.read_text(encoding="utf-8", errors="replace"))
        if line.get("message") == "health server listening"
    ]
    if not ports:
        return False
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[-1]}/healthz", timeout=2) as reply:
            body = json.loads(reply.read())
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return bool(isinstance(body, dict) and body.get("last_successful_poll_at"))


def _json_lines(text: str) -> list[dict]:
    lines = []
    for raw in text.splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict):
            lines.append(line)
    return lines


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


class _TakeoverDrill(Drill):
    """A drill that takes its worker away mid-job and expects another to finish the job."""

    job_label = "sleep"
    job_id: str | None
    worker: WorkerProcess | None
    problem: str

    def _record_problem(self, problem: str) -> None:
        self.problem = problem

    def submit(self, dev: Devstack) -> list[Expectation]:
        if self.job_id is None:
            return []
        worker = self.worker.name if self.worker else ""
        return [
            Expectation(
                self.job_id,
                self.job_label,
                JobStatus.SUCCEEDED,
                lambda d, r: resumed_without_redoing(d, r, worker),
            )
        ]


class SpotNotice(_TakeoverDrill):
    """spot-a gets a spot notice mid-job: it checkpoints, re-sends the job and exits 0; a
    replacement (spot-b) comes up and the job is finished from the checkpoint."""

    name = "spot notice"
    job_label = "sleep, spot notice"
    seconds = 6.0

    def __init__(self) -> None:
        self.imds = ImdsMock()
        self.worker: WorkerProcess | None = None
        self.job_id: str | None = None
        self.problem = ""
        self.noticed_at: float | None = None
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
        if self.job_id is not None and not self.problem:
            job_id = self.job_id
            view = _View(dev)
            drive_in_background(
                "spot-notice", lambda: self._drive(view, job_id), self._record_problem
            )

    def _drive(self, view: _View, job_id: str) -> None:
        # Let it make progress first: the notice should cost nothing of it.
        wait_until(lambda: view.steps_saved(job_id) >= 4, timeout=30, what="spot-a's checkpoint")
        noticed_at = self.imds.schedule_notice("terminate", deadline_s=120)
        self.noticed_at = noticed_at

        def released() -> bool:
            record = view.store.get(job_id)
            return record is not None and record.interruptions >= 1

        wait_until(released, timeout=30, what="the job released after the notice")
        self.released_after_s = time.time() - noticed_at

    def tick(self, dev: Devstack, elapsed_s: float) -> None:
        if self.job_id is None or self.worker is None:
            return
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
        if self.problem:
            return [Check("spot drill: notice delivered and job released", False, self.problem)]
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


class HardCrash(_TakeoverDrill):
    """kill -9 crash-a mid-job: its message reappears after one heartbeat window and another
    worker resumes from the last checkpoint (losing at most one checkpoint interval)."""

    name = "hard crash"
    job_label = "sleep, kill -9"
    # Long enough that crash-a is still mid-job once its successor is up on a loaded machine.
    seconds = 8.0
    window_s = 4

    def __init__(self) -> None:
        self.worker: WorkerProcess | None = None
        self.successor: WorkerProcess | None = None
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
        if self.job_id is not None and not self.problem:
            # The capacity that takes over, already polling when crash-a dies: the check times
            # SQS's redelivery, not how long a new worker process takes to start on a busy
            # machine (several seconds on 2 loaded cores, beyond the window: a flaky check).
            successor = dev.start_worker(
                "crash-b", WORKER_IMDS_ENDPOINT="off", WORKER_VISIBILITY_WINDOW_S="6"
            )
            self.successor = successor
            job_id, worker, view = self.job_id, self.worker, _View(dev)
            drive_in_background(
                "hard-crash",
                lambda: self._drive(view, job_id, worker, successor),
                self._record_problem,
            )

    def _drive(
        self, view: _View, job_id: str, worker: WorkerProcess, successor: WorkerProcess
    ) -> None:
        wait_until(lambda: view.steps_saved(job_id) >= 4, timeout=30, what="crash-a's checkpoint")
        wait_until(lambda: has_polled(successor), timeout=30, what="crash-b polling")
        record = view.store.get(job_id)
        if record is None or record.status != JobStatus.RUNNING:
            raise TimeoutError("crash-a finished its job before crash-b was up: nothing to kill")
        worker.kill()  # SIGKILL to supervisor and child: the host is gone
        killed_at = time.monotonic()
        self.killed_at = killed_at
        self.saved_steps = view.steps_saved(job_id)

        def taken_over() -> bool:
            record = view.store.get(job_id)
            return record is not None and record.worker not in (None, worker.name)

        wait_until(taken_over, timeout=60, what="another worker to take the job over")
        self.redelivered_after_s = time.monotonic() - killed_at

    def done(self, dev: Devstack) -> bool:
        return self.job_id is None or self.redelivered_after_s is not None

    def checks(self, dev: Devstack, records: dict[str, JobRecord]) -> list[Check]:
        if self.job_id is None:
            return [Check("crash drill: job started on crash-a", False, self.problem)]
        if self.problem:
            return [Check("crash drill: kill -9 and takeover", False, self.problem)]
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
