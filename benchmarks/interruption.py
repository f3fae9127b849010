"""What a preemption costs, measured on devstack (moto server, the IMDS mock, real workers).

1. Notice -> job visible to another consumer: the spot notice appears in IMDS; how long until
   the job's fresh message can be received by someone else. Goal: <= 2 s with the default
   2 s poll. Baseline: a worker that does not watch IMDS (this project before issue #5): the host
   is reclaimed at the notice's deadline and the message returns when its visibility lapses.
   The baseline runs with a compressed deadline and window (on EC2 both are 120 s).
2. SIGKILL -> redelivery: the worker (and its host) dies mid-job; how long until another
   consumer receives the message. Goal: <= one heartbeat window. Baseline: no heartbeat, so the
   visibility timeout must cover the longest job (here the job's own length).
3. Work lost per preemption (seconds of analysis redone by the next holder) with checkpoints
   every N s versus without.

Usage: .venv/bin/python benchmarks/interruption.py [--trials 5] [--baseline-trials 3]
The last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Run as a script from anywhere (its usage line): the checkout's packages first.
REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "functions"), str(REPO)]

from botocore.exceptions import ClientError  # noqa: E402

from devstack.demo import QUIET_HANDLERS  # noqa: E402
from devstack.imds import ImdsMock  # noqa: E402
from devstack.motoserver import wait_until  # noqa: E402
from devstack.stack import Devstack  # noqa: E402
from devstack.workers import WorkerProcess  # noqa: E402
from spotline.contract import JobStatus  # noqa: E402

STEP_S = 0.1
CHECKPOINT_EVERY_S = 1.0
DEFAULT_POLL_S = 2.0  # WORKER_IMDS_POLL_S's default: the spotline runs leave it unset
HEARTBEAT_WINDOW_S = 4
BASELINE_DEADLINE_S = 5.0  # compressed two-minute notice for the baseline
BASELINE_WINDOW_S = 4  # compressed visibility window for the baseline
BASELINE_JOB_S = 12.0  # without a heartbeat the window must cover the whole job


@dataclass
class Trial:
    seconds: float  # the headline figure of the trial
    run_s: float = 0.0  # analysis time on the first worker before it was taken away
    saved_s: float = 0.0  # analysis time preserved in the checkpoint
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def lost_s(self) -> float:
        return max(0.0, self.run_s - self.saved_s)


class Bench:
    def __init__(self, dev: Devstack) -> None:
        self.dev = dev
        self.count = 0

    def worker(self, **env: str) -> WorkerProcess:
        self.count += 1
        return self.dev.start_worker(f"bench-{self.count}", **env)

    def submit(self, seconds: float, **params: Any) -> str:
        status, body = self.dev.submit(
            {
                "analyzer": "sleep",
                "input": None,
                "params": {"seconds": seconds, "step_s": STEP_S, **params},
            }
        )
        assert status == 202, body
        return str(body["job_id"])

    def wait_running(self, job_id: str, worker: WorkerProcess) -> float:
        """Monotonic time at which ``worker`` was seen running the job."""

        def running() -> bool:
            record = self.dev.job(job_id)
            return (
                record is not None
                and record.status == JobStatus.RUNNING
                and record.worker == worker.name
            )

        wait_until(running, timeout=30, interval=0.01, what="job running")
        return time.monotonic()

    def receive(self, job_id: str, timeout_s: float) -> float:
        """As another consumer: poll until the job's message arrives; monotonic time.

        Short polls every 50 ms, not a long poll: moto's long poll only notices a message
        whose visibility lapsed when its wait ends (real SQS answers at once), which would
        round every figure up to the next whole second."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for message in self.dev.queue.receive(wait_s=0, visibility_s=300):
                if job_id in message.body:
                    received = time.monotonic()
                    self.dev.queue.delete(message.receipt_handle)
                    return received
            time.sleep(0.05)  # bounded by the deadline above
        raise TimeoutError(f"job {job_id} never came back")

    def saved_s(self, job_id: str) -> float:
        try:
            body = (
                self.dev.client("s3")
                .get_object(Bucket=self.dev.bucket, Key=f"checkpoints/{job_id}")["Body"]
                .read()
            )
        except ClientError:
            return 0.0
        return int(json.loads(body).get("steps_done", 0)) * STEP_S

    # -- 1. notice -> visible ------------------------------------------------------------------

    def notice_spotline(self, imds: ImdsMock) -> Trial:
        imds.reset()
        worker = self.worker(WORKER_IMDS_ENDPOINT=imds.url, WORKER_VISIBILITY_WINDOW_S="30")
        job_id = self.submit(600, checkpoint_every_s=CHECKPOINT_EVERY_S)
        started = self.wait_running(job_id, worker)
        time.sleep(random.uniform(1.0, 1.0 + DEFAULT_POLL_S))  # any phase of the poll
        wall_noticed = imds.schedule_notice("terminate", deadline_s=120)
        noticed = time.monotonic() - (time.time() - wall_noticed)
        received = self.receive(job_id, timeout_s=30)
        assert worker.process is not None
        worker.process.wait(timeout=30)
        return Trial(
            received - noticed,
            run_s=noticed - started,
            saved_s=self.saved_s(job_id),
            extra={"exit_code": worker.process.returncode},
        )

    def notice_baseline(self) -> Trial:
        worker = self.worker(
            WORKER_IMDS_ENDPOINT="off", WORKER_VISIBILITY_WINDOW_S=str(BASELINE_WINDOW_S)
        )
        job_id = self.submit(600)
        self.wait_running(job_id, worker)
        time.sleep(random.uniform(1.0, 1.0 + DEFAULT_POLL_S))
        noticed = time.monotonic()  # nobody is watching IMDS
        time.sleep(BASELINE_DEADLINE_S)
        worker.kill()  # the deadline: the instance is reclaimed
        received = self.receive(job_id, timeout_s=60)
        return Trial(received - noticed)

    # -- 2. SIGKILL -> redelivery --------------------------------------------------------------

    def kill(self, window_s: int, job_s: float, **params: Any) -> Trial:
        worker = self.worker(WORKER_IMDS_ENDPOINT="off", WORKER_VISIBILITY_WINDOW_S=str(window_s))
        job_id = self.submit(job_s, **params)
        started = self.wait_running(job_id, worker)
        time.sleep(random.uniform(2.0, 5.0))  # killed at any point of its run
        worker.kill()
        killed = time.monotonic()
        saved = self.saved_s(job_id)
        received = self.receive(job_id, timeout_s=window_s + job_s + 30)
        return Trial(received - killed, run_s=killed - started, saved_s=saved)


def median(trials: list[Trial], attribute: str = "seconds") -> float:
    return statistics.median(getattr(t, attribute) for t in trials)


def mean(trials: list[Trial], attribute: str) -> float:
    return statistics.fmean(getattr(t, attribute) for t in trials)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--trials", type=int, default=5, help="interrupted jobs measured (default: %(default)s)"
    )
    parser.add_argument(
        "--baseline-trials",
        type=int,
        default=3,
        help="uninterrupted jobs measured for comparison (default: %(default)s)",
    )
    args = parser.parse_args()
    random.seed(5)
    started = time.monotonic()
    with Devstack(handler_env=QUIET_HANDLERS) as dev, ImdsMock() as imds:
        bench = Bench(dev)
        notice = [bench.notice_spotline(imds) for _ in range(args.trials)]
        notice_base = [bench.notice_baseline() for _ in range(args.baseline_trials)]
        kill = [
            bench.kill(HEARTBEAT_WINDOW_S, 600, checkpoint_every_s=CHECKPOINT_EVERY_S)
            for _ in range(args.trials)
        ]
        # Baseline: no heartbeat (the window outlives the job) and no checkpoints.
        kill_base = [
            bench.kill(int(BASELINE_JOB_S), BASELINE_JOB_S) for _ in range(args.baseline_trials)
        ]
    figures = {
        "notice_to_visible_median_s": round(median(notice), 3),
        "notice_to_visible_max_s": round(max(t.seconds for t in notice), 3),
        "notice_to_visible_goal_s": 2.0,
        "notice_worker_exit_codes": sorted({t.extra["exit_code"] for t in notice}),
        "notice_baseline_median_s": round(median(notice_base), 3),
        "notice_baseline_deadline_s": BASELINE_DEADLINE_S,
        "notice_baseline_window_s": BASELINE_WINDOW_S,
        "kill_to_redelivery_median_s": round(median(kill), 3),
        "kill_to_redelivery_max_s": round(max(t.seconds for t in kill), 3),
        "heartbeat_window_s": HEARTBEAT_WINDOW_S,
        "kill_baseline_median_s": round(median(kill_base), 3),
        "kill_baseline_window_s": BASELINE_JOB_S,
        "checkpoint_every_s": CHECKPOINT_EVERY_S,
        "work_lost_with_checkpoints_mean_s": round(mean(kill, "lost_s"), 3),
        "work_lost_with_checkpoints_max_s": round(max(t.lost_s for t in kill), 3),
        "work_lost_without_checkpoints_mean_s": round(mean(kill_base, "lost_s"), 3),
        "work_lost_on_notice_mean_s": round(mean(notice, "lost_s"), 3),
        "trials": args.trials,
        "baseline_trials": args.baseline_trials,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    figures["notice_ratio"] = round(
        figures["notice_baseline_median_s"] / figures["notice_to_visible_median_s"], 2
    )
    figures["kill_ratio"] = round(
        figures["kill_baseline_median_s"] / figures["kill_to_redelivery_median_s"], 2
    )
    figures["work_lost_ratio"] = round(
        figures["work_lost_without_checkpoints_mean_s"]
        / max(figures["work_lost_with_checkpoints_mean_s"], STEP_S),
        2,
    )
    print_table(figures)
    print(json.dumps(figures, sort_keys=True))
    return 0


def print_table(f: dict[str, Any]) -> None:
    rows = [
        (
            "notice in IMDS -> job visible to another consumer (median)",
            f"{f['notice_to_visible_median_s']:.2f} s (poll {DEFAULT_POLL_S:g} s, goal <= 2 s)",
            f"{f['notice_baseline_median_s']:.2f} s (no IMDS watch; reclaimed at a "
            f"{BASELINE_DEADLINE_S:g} s deadline, {BASELINE_WINDOW_S} s window; "
            "on EC2 120 s + up to 120 s)",
            f"{f['notice_ratio']:.1f}x",
        ),
        (
            "SIGKILL -> redelivery (median)",
            f"{f['kill_to_redelivery_median_s']:.2f} s (heartbeat window {HEARTBEAT_WINDOW_S} s)",
            f"{f['kill_baseline_median_s']:.2f} s (no heartbeat: window = job length "
            f"{BASELINE_JOB_S:g} s)",
            f"{f['kill_ratio']:.1f}x",
        ),
        (
            "analysis redone per hard preemption (mean)",
            f"{f['work_lost_with_checkpoints_mean_s']:.2f} s (checkpoint every "
            f"{CHECKPOINT_EVERY_S:g} s; max {f['work_lost_with_checkpoints_max_s']:.2f} s)",
            f"{f['work_lost_without_checkpoints_mean_s']:.2f} s (no checkpoints)",
            f"{f['work_lost_ratio']:.1f}x",
        ),
        (
            "analysis redone per spot notice (mean, upper bound)",
            f"{f['work_lost_on_notice_mean_s']:.2f} s (checkpoint on should_stop)",
            "-",
            "",
        ),
    ]
    widths = [
        max(len(r[i]) for r in [("figure", "spotline", "baseline", "ratio"), *rows])
        for i in range(4)
    ]
    header = ("figure", "spotline", "baseline", "ratio")
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    print(
        f"\n{f['trials']} spotline trials, {f['baseline_trials']} baseline trials per figure; "
        f"worker exit codes after a notice: {f['notice_worker_exit_codes']}; "
        f"{f['elapsed_s']:.0f} s in all"
    )


if __name__ == "__main__":
    sys.exit(main())
