"""Cost of one poison message: spotline versus the seeds' naive set-up, same queue settings.

From the poison job's first receive to its arrival in the DLQ: wall time, CPU-seconds burned
(the analysis process tree, restarts included) and analysis-seconds (the time an analysis was
running: on a GPU host, GPU-seconds).

- spotline: the real ``python -m gpu_worker`` with its memory guard at 85 % of the container
  limit; OOM -> attempts+1, ChangeMessageVisibility backoff (10 s, 20 s: the defaults), dead-
  lettered by the worker at attempt 3 with the reason.
- naive (the seeds): a consumer that runs the analysis in-process inside a "container" with
  ``mem_limit``; at the limit the container is killed (SIGKILL, as the cgroup OOM killer does)
  and restarted (``restart: unless-stopped``); the message comes back only after the visibility
  timeout; SQS redrives it after ``maxReceiveCount`` receives, with no reason attached.

Both run against moto server with the same queue (VisibilityTimeout, maxReceiveCount 3, from
template.yaml's parameters) and the same ``memory_hog`` job. Run:
``.venv/bin/python benchmarks/poison.py [--visibility-s 30]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT / "functions"), str(REPO_ROOT)]

from devstack.motoserver import MotoServer, free_port, wait_until  # noqa: E402
from devstack.stack import Devstack  # noqa: E402
from gpu_worker.memory import job_limit_bytes, tree_rss_bytes  # noqa: E402

MIB = 1024 * 1024
MAX_RECEIVE_COUNT = 3
# The enqueue handler runs in this process: keep its logs and EMF off the report.
QUIET_HANDLERS = {"POWERTOOLS_LOG_LEVEL": "WARNING", "POWERTOOLS_METRICS_DISABLED": "true"}
CONTAINER_LIMIT = 320 * MIB


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process, its reaped children and its live descendants."""
    try:
        root = psutil.Process(pid)
        times = root.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in root.children(recursive=True):
            try:
                child_times = child.cpu_times()
                total += child_times.user + child_times.system
            except psutil.Error:
                continue
        return total
    except psutil.Error:
        return 0.0


def hog_request(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "analyzer": "memory_hog",
        "input": None,
        "params": {"bytes_per_step": args.step_mib * MIB, "step_s": args.step_s},
    }


def dlq_arrived(dev: Devstack) -> bool:
    visible, in_flight = dev.dlq.approximate_counts()
    return visible + in_flight > 0


# -- spotline -------------------------------------------------------------------------------


def run_spotline(server: MotoServer, args: argparse.Namespace) -> dict[str, Any]:
    parameters = {
        "MaxReceiveCount": MAX_RECEIVE_COUNT,
        "VisibilityTimeoutSeconds": args.visibility_s,
    }
    dev = Devstack(server=server, parameters=parameters, handler_env=QUIET_HANDLERS).start(
        stack_name="bench-spotline"
    )
    try:
        port = free_port()
        worker = dev.start_worker(
            "spotline",
            WORKER_JOB_MEMORY_LIMIT=str(job_limit_bytes("", CONTAINER_LIMIT)),
            WORKER_VISIBILITY_WINDOW_S=str(args.visibility_s),
            WORKER_MAX_ATTEMPTS=str(MAX_RECEIVE_COUNT),
            WORKER_BACKOFF_BASE_S="10",
            WORKER_BACKOFF_MAX_S="900",
            WORKER_HEALTH_PORT=str(port),
            WORKER_METRICS="off",
        )
        wait_until(
            lambda: '"health server listening"' in worker.log_path.read_text(errors="replace"),
            timeout=60,
            what="spotline worker up",
        )
        time.sleep(1.0)  # let start-up CPU settle: only the poison job is measured
        cpu_before = tree_cpu_s(worker.pid)
        started = time.monotonic()
        status, body = dev.submit(hog_request(args))
        assert status == 202, body
        wait_until(lambda: dlq_arrived(dev), timeout=600, interval=0.02, what="DLQ")
        wall_s = time.monotonic() - started
        cpu_s = tree_cpu_s(worker.pid) - cpu_before
        record = dev.job(body["job_id"])
        analysis_s = sum(
            json.loads(line)["duration_s"]
            for line in worker.log_path.read_text(errors="replace").splitlines()
            if '"job finished"' in line
        )
        assert record is not None and record.last_error is not None
        return {
            "wall_s": round(wall_s, 2),
            "cpu_s": round(cpu_s, 2),
            "analysis_s": round(analysis_s, 2),
            "attempts": record.attempts,
            "status": str(record.status),
            "reason": str(record.last_error.kind),
            "peak_mib": round((record.last_error.peak_memory_bytes or 0) / MIB),
            "worker_restarts": 0 if worker.alive() else 1,
        }
    finally:
        dev.stop()


# -- naive ------------------------------------------------------------------------------------


def naive_consumer(queue_url: str, receive_log: str) -> None:
    """The seeds' consumer: receive, analyse in-process, delete on success. Nothing else."""
    import boto3

    from gpu_worker.analyzers import Job
    from spotline_drills import MemoryHog

    class NoContext:
        def should_stop(self) -> bool:
            return False

        def checkpoint(self, state: Any) -> None:
            return None

        def restore(self) -> None:
            return None

        def progress(self, **fields: Any) -> None:
            return None

    sqs = boto3.client("sqs")
    analyzer = MemoryHog()
    analyzer.load()
    while True:
        response = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=1)
        for message in response.get("Messages", []):
            with open(receive_log, "a", encoding="utf-8") as log:
                log.write(f"{time.time()}\n")
            body = json.loads(message["Body"])
            request = body["request"]
            job = Job(body["job_id"], request["analyzer"], None, request.get("params") or {})
            analyzer.analyze(job, NoContext())
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])


def run_naive(server: MotoServer, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    parameters = {
        "MaxReceiveCount": MAX_RECEIVE_COUNT,
        "VisibilityTimeoutSeconds": args.visibility_s,
    }
    dev = Devstack(
        server=server, parameters=parameters, workdir=workdir, handler_env=QUIET_HANDLERS
    ).start(stack_name="bench-naive")
    receive_log = workdir / "naive-receives.txt"
    receive_log.write_text("")
    env = {
        **os.environ,
        **server.env(),
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "functions"), str(REPO_ROOT)]),
    }
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--naive-consumer",
        dev.queue.url,
        str(receive_log),
    ]

    def container() -> subprocess.Popen[bytes]:
        return subprocess.Popen(command, env=env, cwd=REPO_ROOT)

    process = container()
    try:
        time.sleep(3.0)  # the consumer is up and polling; its start-up is not the job's cost
        cpu_before = tree_cpu_s(process.pid)
        cpu_spent = 0.0
        analysis_s = 0.0
        kills = 0
        started = time.monotonic()
        status, body = dev.submit(hog_request(args))
        assert status == 202, body
        while not dlq_arrived(dev):
            if time.monotonic() - started > 900:
                raise TimeoutError("naive run did not reach the DLQ")
            if tree_rss_bytes(process.pid) >= CONTAINER_LIMIT:
                # The cgroup OOM killer takes the whole container; docker restarts it.
                cpu_spent += tree_cpu_s(process.pid) - cpu_before
                process.kill()
                process.wait()
                receives = receive_log.read_text().split()
                analysis_s += time.time() - float(receives[-1])
                kills += 1
                process = container()
                cpu_before = 0.0
            time.sleep(0.005)  # the sampling period of the simulated cgroup limit
        wall_s = time.monotonic() - started
        cpu_spent += tree_cpu_s(process.pid) - cpu_before
        record = dev.job(body["job_id"])
        (message,) = dev.dlq.receive(wait_s=1, visibility_s=60)
        return {
            "wall_s": round(wall_s, 2),
            "cpu_s": round(cpu_spent, 2),
            "analysis_s": round(analysis_s, 2),
            "attempts": len(receive_log.read_text().split()),
            "status": str(record.status) if record else "missing",
            "reason": message.message_attributes.get("error_kind", {}).get("StringValue") or "none",
            "peak_mib": round(CONTAINER_LIMIT / MIB),
            "worker_restarts": kills,
        }
    finally:
        process.kill()
        process.wait()
        dev.stop()


# -- report -----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visibility-s", type=int, default=30, help="queue VisibilityTimeout")
    parser.add_argument("--step-mib", type=int, default=16, help="hog allocation per step")
    parser.add_argument("--step-s", type=float, default=0.05, help="hog pause per step")
    parser.add_argument(
        "--naive-consumer",
        nargs=2,
        metavar=("QUEUE_URL", "RECEIVE_LOG"),
        help="internal: run as the naive consumer the benchmark starts (not for direct use)",
    )
    args = parser.parse_args()
    if args.naive_consumer:
        naive_consumer(*args.naive_consumer)
        return 0
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"spotline-bench-poison-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    with MotoServer() as server:
        spotline = run_spotline(server, args)
        naive = run_naive(server, args, workdir)
    # The naive set-up waits one visibility timeout per receive; spotline's time does not
    # depend on it. Projected to the template's default window (120 s):
    projected_naive_wall = naive["wall_s"] + MAX_RECEIVE_COUNT * (120 - args.visibility_s)
    rows = [
        ("wall time, first receive -> DLQ (s)", "wall_s"),
        ("CPU-seconds burned (s)", "cpu_s"),
        ("analysis-seconds (GPU-seconds on a GPU host)", "analysis_s"),
        ("analysis attempts", "attempts"),
        ("job status after", "status"),
        ("reason recorded", "reason"),
        ("peak memory (MiB)", "peak_mib"),
        ("container/worker restarts", "worker_restarts"),
    ]
    print(
        f"poison job: memory_hog {args.step_mib} MiB / {args.step_s} s; container limit "
        f"{CONTAINER_LIMIT // MIB} MiB; VisibilityTimeout {args.visibility_s} s; "
        f"maxReceiveCount {MAX_RECEIVE_COUNT}"
    )
    print(f"{'':46} {'spotline':>14} {'naive (seeds)':>14}")
    for label, key in rows:
        print(f"{label:46} {spotline[key]!s:>14} {naive[key]!s:>14}")
    print(
        f"{'projected wall at VisibilityTimeout 120 s (s)':46} "
        f"{spotline['wall_s']!s:>14} {round(projected_naive_wall, 1)!s:>14}"
    )
    figures = {
        "visibility_timeout_s": args.visibility_s,
        "max_receive_count": MAX_RECEIVE_COUNT,
        "container_limit_mib": CONTAINER_LIMIT // MIB,
        "spotline": spotline,
        "naive": naive,
        "wall_ratio": round(naive["wall_s"] / spotline["wall_s"], 2),
        "cpu_ratio": round(naive["cpu_s"] / max(spotline["cpu_s"], 0.01), 2),
        "analysis_ratio": round(naive["analysis_s"] / max(spotline["analysis_s"], 0.01), 2),
        "projected_wall_ratio_at_120s": round(projected_naive_wall / spotline["wall_s"], 2),
    }
    print(json.dumps(figures, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
