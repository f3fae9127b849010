"""Device duty cycle: how busy the worker keeps a GPU when every AWS call costs network time.

What a spotline user pays for is the GPU, and the seconds it sits idle between two jobs while
the worker talks to AWS. Here the GPU is the ``device`` drill analyzer: it holds a simulated
device for D ms per job (the CPU asleep, as a process waiting on a kernel) and logs, inside
the analysis child, when each job's device time starts and ends. Every AWS call of both sides
goes through a local proxy (devstack's FaultProxy) that adds the same L ms before forwarding
it to moto server, with the queue on one moto server and the table and bucket on another, as
in AWS where they are different services.

Two sides per cell (D, L), one after the other on the same stack, each from a queue that holds
all its jobs:

- **spotline**: the real ``python -m gpu_worker`` process, started as devstack starts it;
- **naive**: a serial consumer that keeps the job contract and nothing more, in a process of its
  own: receive 1 -> claim (conditional UpdateItem, with the lease) -> run on the device ->
  result to S3 -> complete (conditional UpdateItem) -> delete, one call at a time.

Figures per side, from the device log alone, between the first job's device start and the last
job's device end (process start-up counts on neither side): jobs/s, the device's busy fraction
(device time / wall time) and the idle gaps between one job's device end and the next one's
start (median, p95); ratios spotline / naive. The last line is one JSON object of them.

    .venv/bin/python benchmarks/duty_cycle.py [--quick] [--plot duty.png]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "functions"), str(REPO)]

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402

# What a fresh queue copies from the job queue: throughput.py's list, one place.
from throughput import SETTABLE as QUEUE_SETTINGS  # noqa: E402

from devstack.faults import FaultProxy  # noqa: E402
from devstack.motoserver import MotoServer, free_port, wait_until  # noqa: E402
from devstack.plotting import pyplot  # noqa: E402
from devstack.stack import Devstack  # noqa: E402
from enqueue.submission import submit  # noqa: E402
from gpu_worker.analyzers import Job  # noqa: E402
from gpu_worker.checkpoint import ResultStore  # noqa: E402
from spotline.contract import JobMessage, JobStatus, RequestPolicy, validate_request  # noqa: E402
from spotline.jobstore import JobStore, attempt_id  # noqa: E402
from spotline.queue import JobQueue  # noqa: E402
from spotline_drills import DEVICE_LOG_ENV, Device  # noqa: E402

DEVICE_MS = (20, 100, 1000)
LATENCY_MS = (0, 10, 30)
QUICK_CELLS = ((20, 10), (100, 10))
QUICK_MAX_JOBS = 160
QUIET = {"POWERTOOLS_LOG_LEVEL": "WARNING", "WORKER_METRICS": "off", "WORKER_IMDS_ENDPOINT": "off"}
VISIBILITY_S = 120  # the template's default window: both sides receive with it
SIDES = ("spotline", "naive")


# -- the figures -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    job_id: str
    start: float
    end: float


@dataclass(frozen=True)
class Duty:
    """One side of one cell, from its device log."""

    jobs: int
    jobs_per_s: float
    busy_fraction: float
    gap_median_ms: float
    gap_p95_ms: float
    gap_max_ms: float
    # What a user pays for: device time idle per job, in ms (wall - busy) / jobs. Unlike the
    # busy fraction it does not depend on D: it is what the worker adds to every job.
    idle_ms_per_job: float


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def duty(intervals: list[Interval]) -> Duty:
    """Busy fraction, rate and idle gaps over [first device start, last device end]."""
    if not intervals:
        raise ValueError("no device time was logged")
    ordered = sorted(intervals, key=lambda i: i.start)
    wall = ordered[-1].end - ordered[0].start
    busy = sum(i.end - i.start for i in ordered)
    gaps = [max(0.0, b.start - a.end) * 1000 for a, b in itertools.pairwise(ordered)]
    return Duty(
        jobs=len(ordered),
        jobs_per_s=len(ordered) / wall if wall > 0 else 0.0,
        busy_fraction=min(1.0, busy / wall) if wall > 0 else 1.0,
        gap_median_ms=statistics.median(gaps) if gaps else 0.0,
        gap_p95_ms=percentile(gaps, 95),
        gap_max_ms=max(gaps, default=0.0),
        idle_ms_per_job=1000 * max(0.0, wall - busy) / len(ordered),
    )


def read_device_log(path: Path, job_ids: list[str]) -> list[Interval]:
    """The device intervals of ``job_ids``: each must have run exactly once."""
    wanted = set(job_ids)
    seen: dict[str, Interval] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        if entry["job_id"] not in wanted:
            continue
        if entry["job_id"] in seen:
            raise RuntimeError(f"job {entry['job_id']} ran on the device twice")
        seen[entry["job_id"]] = Interval(entry["job_id"], entry["start"], entry["end"])
    if len(seen) != len(wanted):
        raise RuntimeError(f"{len(wanted) - len(seen)} of {len(wanted)} jobs never ran")
    return list(seen.values())


# -- AWS, slowed down --------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoints:
    """Where each side's clients send their calls: the queue's proxy and the tables' proxy."""

    queue: str
    tables: str
    queue_url: str
    table: str
    bucket: str


class SlowAws:
    """Two moto servers (queue; table and bucket), the same stack on each, and one latency
    proxy in front of each. ``latency(ms)`` sets the delay every call gets, on both."""

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self.queue_server = MotoServer()
        self.tables_server = MotoServer()
        self.proxies: list[FaultProxy] = []

    def __enter__(self) -> SlowAws:
        quiet = {"POWERTOOLS_LOG_LEVEL": "WARNING"}
        self.queue_server.start()
        self.tables_server.start()
        # Each start points this process's AWS_ENDPOINT_URL at its server: the queue's last,
        # so that the stack's other clients (and its workers' defaults) reach it.
        self.tables = Devstack(server=self.tables_server, workdir=self._workdir, handler_env=quiet)
        self.tables.start(stack_name="duty")
        self.dev = Devstack(server=self.queue_server, workdir=self._workdir, handler_env=quiet)
        self.dev.start(stack_name="duty")
        self.proxies = [
            FaultProxy(self.queue_server.endpoint_url).start(),
            FaultProxy(self.tables_server.endpoint_url).start(),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for proxy in self.proxies:
            proxy.stop()
        self.dev.stop()
        self.tables.stop()
        self.queue_server.stop()
        self.tables_server.stop()

    def latency(self, ms: float) -> None:
        for proxy in self.proxies:
            proxy.clear()
            if ms > 0:
                proxy.inject("*", "*", fault=f"slow:{ms / 1000}", times=None)

    def endpoints(self, queue_url: str | None = None) -> Endpoints:
        stack = self.dev.require_stack
        return Endpoints(
            queue=self.proxies[0].endpoint_url,
            tables=self.proxies[1].endpoint_url,
            queue_url=queue_url or stack.ref("JobsQueue"),
            table=stack.ref("JobsTable"),
            bucket=stack.ref("DataBucket"),
        )

    def round_trip_ms(self, calls: int = 10) -> dict[str, float]:
        """Median wall ms of a cheap call through each proxy: the latency as clients see it."""
        ends = self.endpoints()
        sqs = boto3.client("sqs", endpoint_url=ends.queue, config=client_config())
        dynamodb = boto3.client("dynamodb", endpoint_url=ends.tables, config=client_config())
        out = {}
        for name, call in (
            ("sqs", lambda: sqs.get_queue_url(QueueName=ends.queue_url.rsplit("/", 1)[-1])),
            ("dynamodb", lambda: dynamodb.get_item(TableName=ends.table, Key=_NO_SUCH_JOB)),
        ):
            call()  # a connection, once
            times = []
            for _ in range(calls):
                started = time.perf_counter()
                call()
                times.append(1000 * (time.perf_counter() - started))
            out[name] = round(statistics.median(times), 2)
        return out

    def fresh_queue(self, name: str) -> str:
        """A queue with the job queue's settings, for one side of one cell: a receive still in
        flight when a worker stopped (a long poll cut short by SIGTERM reaches moto through the
        proxy after the client left) takes nothing from the next side."""
        sqs = self.dev.client("sqs")
        attributes = sqs.get_queue_attributes(
            QueueUrl=self.dev.require_stack.ref("JobsQueue"), AttributeNames=["All"]
        )["Attributes"]
        settings = {k: v for k, v in attributes.items() if k in QUEUE_SETTINGS}
        return str(sqs.create_queue(QueueName=name, Attributes=settings)["QueueUrl"])

    def submit(self, queue_url: str, jobs: int, device_ms: int, tag: str) -> list[str]:
        """``jobs`` device jobs, straight to moto (setting up costs no side anything)."""
        queue = JobQueue(self.dev.client("sqs"), queue_url)
        return [
            submit(
                {"analyzer": "device", "input": {"tag": tag, "n": n}, "params": {"ms": device_ms}},
                store=self.tables.store,
                queue=queue,
                max_message_bytes=262144,
            ).job_id
            for n in range(jobs)
        ]

    def check_succeeded(self, queue_url: str, job_ids: list[str]) -> None:
        store = self.tables.store
        queue = JobQueue(self.dev.client("sqs"), queue_url)
        records = [store.get(job_id) for job_id in job_ids]
        failed = [r for r in records if r is None or r.status != JobStatus.SUCCEEDED]
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(job_ids)} jobs did not succeed")
        wait_until(
            lambda: queue.approximate_counts() == (0, 0),
            timeout=30,
            interval=0.1,
            what="the queue to drain",
        )


_NO_SUCH_JOB = {"job_id": {"S": "duty-cycle-probe"}}


def client_config() -> Config:
    """The worker's own client settings (gpu_worker/__main__.py), so neither side is favoured."""
    return Config(
        connect_timeout=5,
        read_timeout=30,
        retries={"total_max_attempts": 5, "mode": "standard"},
        max_pool_connections=10,
    )


# -- the naive side ----------------------------------------------------------------------------


def naive_consumer(ends: Endpoints, jobs: int, device_log: str) -> None:
    """Receive 1 -> claim -> run -> result -> complete -> delete, one call at a time, until
    ``jobs`` messages are done. Runs in a process of its own (spawned)."""
    os.environ[DEVICE_LOG_ENV] = device_log
    config = client_config()
    queue = JobQueue(boto3.client("sqs", endpoint_url=ends.queue, config=config), ends.queue_url)
    store = JobStore(boto3.client("dynamodb", endpoint_url=ends.tables, config=config), ends.table)
    results = ResultStore(boto3.client("s3", endpoint_url=ends.tables, config=config), ends.bucket)
    policy = RequestPolicy(bucket=ends.bucket, drills_enabled=True)
    device = Device()
    device.load()
    done = 0
    while done < jobs:
        for message in queue.receive(max_messages=1, wait_s=1, visibility_s=VISIBILITY_S):
            job_message = JobMessage.from_json(message.body)
            request = validate_request(job_message.request, policy)
            token = f"naive/{message.message_id}/{uuid.uuid4().hex[:12]}"
            store.claim_queued(
                job_message.job_id,
                token,
                "naive",
                lease_s=VISIBILITY_S,
                message_id=message.message_id,
            )
            params = request.get("params") or {}
            job = Job(job_message.job_id, "device", request.get("input"), params)
            output = device.analyze(job, None)  # type: ignore[arg-type]  # it asks ctx nothing
            uri = results.put(job.job_id, json.dumps(output), attempt_id(token))
            store.complete_quietly(job.job_id, token, uri)
            queue.delete(message.receipt_handle)
            done += 1


def run_naive(
    aws: SlowAws, queue_url: str, job_ids: list[str], device_log: Path, timeout_s: float
) -> None:
    process = multiprocessing.get_context("spawn").Process(
        target=naive_consumer,
        args=(aws.endpoints(queue_url), len(job_ids), str(device_log)),
        name="naive-consumer",
    )
    process.start()
    process.join(timeout_s)
    if process.is_alive():
        process.kill()
        process.join(10)
        raise RuntimeError(f"the naive consumer did not finish in {timeout_s:g}s")
    if process.exitcode != 0:
        raise RuntimeError(f"the naive consumer exited with {process.exitcode}")


# -- the spotline side -------------------------------------------------------------------------


def _handled(port: int) -> int:
    """Jobs the worker handled so far, from its health endpoint (0 while it is not up)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as reply:
            return int(json.load(reply).get("jobs_handled", 0))
    except (OSError, ValueError):
        return 0


def run_worker(
    aws: SlowAws,
    queue_url: str,
    job_ids: list[str],
    device_log: Path,
    timeout_s: float,
    name: str,
    env: dict[str, str],
) -> None:
    """The real worker process, as devstack starts it, behind the latency proxies."""
    ends = aws.endpoints(queue_url)
    port = free_port()
    worker = aws.dev.start_worker(
        name,
        **QUIET,
        WORKER_HEALTH_PORT=str(port),
        WORKER_QUEUE_URL=queue_url,
        AWS_ENDPOINT_URL=ends.queue,
        AWS_ENDPOINT_URL_DYNAMODB=ends.tables,
        AWS_ENDPOINT_URL_S3=ends.tables,
        WORKER_PRELOAD="device",
        **{DEVICE_LOG_ENV: str(device_log)},
        **env,
    )
    try:
        # Progress from the worker's own /healthz, which costs moto nothing.
        wait_until(
            lambda: _handled(port) >= len(job_ids),
            timeout=timeout_s,
            interval=0.05,
            what=f"{name} to run every job",
        )
    finally:
        worker.stop()
        aws.dev.workers.remove(worker)


# -- one cell, the table, the plot -------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    device_ms: int
    latency_ms: int
    round_trip_ms: dict[str, float]
    sides: dict[str, Duty]

    def ratio(self, field: str) -> float:
        naive = getattr(self.sides["naive"], field)
        return getattr(self.sides["spotline"], field) / naive if naive else 0.0


def jobs_for(device_ms: int, args: argparse.Namespace) -> int:
    if args.jobs:
        return int(args.jobs)
    return max(args.min_jobs, min(args.max_jobs, math.ceil(1000 * args.seconds / device_ms)))


def run_cell(
    aws: SlowAws, device_ms: int, latency_ms: int, jobs: int, workdir: Path, env: dict[str, str]
) -> Cell:
    aws.latency(latency_ms)
    round_trip = aws.round_trip_ms()
    # Generous: the naive side pays several round trips per job, and the machine is shared.
    timeout_s = 60 + jobs * (device_ms + 40 * latency_ms + 200) / 1000
    sides: dict[str, Duty] = {}
    for side in SIDES:
        tag = f"{side}-d{device_ms}-l{latency_ms}"
        queue_url = aws.fresh_queue(f"duty-{tag}")
        job_ids = aws.submit(queue_url, jobs, device_ms, tag)
        log = workdir / f"device-{tag}.jsonl"
        if side == "naive":
            run_naive(aws, queue_url, job_ids, log, timeout_s)
        else:
            run_worker(aws, queue_url, job_ids, log, timeout_s, f"worker-{tag}", env)
        aws.check_succeeded(queue_url, job_ids)
        sides[side] = duty(read_device_log(log, job_ids))
        print(
            f"  d={device_ms} ms l={latency_ms} ms {side:<8} {jobs} jobs: "
            f"busy {sides[side].busy_fraction:.3f}, gap median {sides[side].gap_median_ms:.1f} ms",
            file=sys.stderr,
        )
    return Cell(device_ms, latency_ms, round_trip, sides)


def figures(cells: list[Cell]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for cell in cells:
        key = f"d{cell.device_ms}_l{cell.latency_ms}"
        for side, measured in cell.sides.items():
            suffix = key if side == "spotline" else f"naive_{key}"
            out[f"jobs_per_s_{suffix}"] = round(measured.jobs_per_s, 2)
            out[f"busy_fraction_{suffix}"] = round(measured.busy_fraction, 4)
            out[f"idle_gap_median_ms_{suffix}"] = round(measured.gap_median_ms, 2)
            out[f"idle_gap_p95_ms_{suffix}"] = round(measured.gap_p95_ms, 2)
            out[f"idle_ms_per_job_{suffix}"] = round(measured.idle_ms_per_job, 2)
        out[f"busy_ratio_{key}"] = round(cell.ratio("busy_fraction"), 3)
        out[f"jobs_ratio_{key}"] = round(cell.ratio("jobs_per_s"), 3)
        out[f"round_trip_ms_{key}"] = cell.round_trip_ms
    out["load_average_1m"] = round(os.getloadavg()[0], 2)
    out["cpus"] = os.cpu_count()
    return out


def print_table(cells: list[Cell]) -> None:
    header = (
        f"{'D ms':>5} {'L ms':>5} {'call ms (sqs/ddb)':>18}  {'side':<9}{'jobs':>5} {'jobs/s':>7} "
        f"{'busy':>6} {'gap med ms':>11} {'gap p95 ms':>11} {'gap max ms':>11} {'idle ms/job':>12}"
    )
    print(header)
    print("-" * len(header))
    for cell in cells:
        calls = f"{cell.round_trip_ms['sqs']:.1f}/{cell.round_trip_ms['dynamodb']:.1f}"
        for index, side in enumerate(SIDES):
            measured = cell.sides[side]
            lead = (
                f"{cell.device_ms:>5} {cell.latency_ms:>5} {calls:>18}" if index == 0 else " " * 30
            )
            print(
                f"{lead}  {side:<9}{measured.jobs:>5} {measured.jobs_per_s:>7.2f} "
                f"{measured.busy_fraction:>6.3f} {measured.gap_median_ms:>11.1f} "
                f"{measured.gap_p95_ms:>11.1f} {measured.gap_max_ms:>11.1f} "
                f"{measured.idle_ms_per_job:>12.1f}"
            )
        print(
            f"{'':>30}  spotline / naive: jobs/s {cell.ratio('jobs_per_s'):.2f}x, "
            f"busy {cell.ratio('busy_fraction'):.2f}x"
        )


def plot(cells: list[Cell], path: str) -> None:
    plt = pyplot()

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for latency in sorted({c.latency_ms for c in cells}):
        row = sorted((c for c in cells if c.latency_ms == latency), key=lambda c: c.device_ms)
        xs = [c.device_ms for c in row]
        for side, style in (("spotline", "-o"), ("naive", "--s")):
            ys = [c.sides[side].busy_fraction for c in row]
            axes.plot(xs, ys, style, label=f"{side}, +{latency} ms per call")
    axes.set_xscale("log")
    axes.set_xlabel("device time per job D (ms)")
    axes.set_ylabel("device busy fraction")
    axes.set_ylim(0, 1.02)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    axes.set_title("GPU duty cycle: spotline worker vs naive serial consumer")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    print(f"plot written to {path}", file=sys.stderr)


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not {text!r}")
    return key, value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--device-ms",
        type=_int_list,
        default=list(DEVICE_MS),
        help="device time per job D, in ms (comma list)",
    )
    parser.add_argument(
        "--latency-ms",
        type=_int_list,
        default=list(LATENCY_MS),
        help="latency added to every AWS call of both sides L, in ms (comma list)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="only the L=10 ms cells for D=20 and D=100 ms, at most --quick-max-jobs jobs per "
        "side (under three minutes); overrides --device-ms and --latency-ms",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=8.0,
        help="device time per side and cell: jobs = seconds / D, within --min-jobs/--max-jobs",
    )
    parser.add_argument(
        "--quick-max-jobs",
        type=int,
        default=QUICK_MAX_JOBS,
        help="with --quick, most jobs per side and cell (the naive side's D=20 ms cell is the "
        "longest: a few round trips per job)",
    )
    parser.add_argument("--min-jobs", type=int, default=20, help="fewest jobs per side and cell")
    parser.add_argument("--max-jobs", type=int, default=300, help="most jobs per side and cell")
    parser.add_argument(
        "--jobs", type=int, default=0, help="jobs per side and cell, whatever D (0: by --seconds)"
    )
    parser.add_argument(
        "--worker-env",
        type=_env_pair,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the worker process (e.g. WORKER_PREFETCH=0); repeatable",
    )
    parser.add_argument(
        "--keep",
        metavar="DIR",
        help="keep the device logs (device-SIDE-dD-lL.jsonl) and worker logs in DIR",
    )
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw the busy fraction against D (needs matplotlib: make bench)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.cells = list(QUICK_CELLS)
        args.max_jobs = min(args.max_jobs, args.quick_max_jobs)
    else:
        args.cells = [(d, lat) for lat in args.latency_ms for d in args.device_ms]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = dict(args.worker_env)
    cells: list[Cell] = []
    with tempfile.TemporaryDirectory(prefix="duty-cycle-") as tmp:
        workdir = Path(args.keep or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        with SlowAws(workdir) as aws:
            for device_ms, latency_ms in args.cells:
                cells.append(
                    run_cell(aws, device_ms, latency_ms, jobs_for(device_ms, args), workdir, env)
                )
    print_table(cells)
    if args.plot:
        plot(cells, args.plot)
    print(json.dumps(figures(cells)))
    return 0


if __name__ == "__main__":  # spawned processes (the naive side) re-import this module
    sys.exit(main())
