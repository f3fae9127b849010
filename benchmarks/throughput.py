"""Worker throughput: no-op jobs/s of the real worker process vs. a bare boto3 loop.

Both run against the same moto server in the same run, in interleaved rounds (median taken).
The bare loop is the floor of any SQS consumer: receive 1 -> delete 1, one call at a time. The
worker does everything a job needs on top (claim with a conditional write, run it in the
analysis child, result to S3, complete with a conditional write, delete) and hides what it can
behind the running job when there is a backlog (prefetch, background finishing, batched
deletes). Rates are taken between the first and the last completion, so process start-up (the
spawn of the analysis child) counts on neither side. Each side starts from a queue of
``--jobs`` messages (moto's ReceiveMessage costs grow with the queue's length: same for both).

A third side, the contract loop, is the fastest serial client that keeps the job contract and
does nothing else (receive 1 -> claim -> result to S3 -> complete -> delete 1, the worker's own
store calls): moto charges any consumer that much for the contract, so the worker's own overhead
is what it costs beyond that loop.

A fourth side runs the same worker with its DynamoDB and S3 calls sent to a second moto server
(the same stack deployed there; ``AWS_ENDPOINT_URL_DYNAMODB``/``_S3``), as in AWS, where the
table and the bucket are other services than the queue: the queue's server then carries the same
calls per job for the worker as for the bare loop, and what is left between the two is the
worker's own overhead (its wait on each claim before the job starts, above all) and the
machine's CPUs. Each side's share of the machine's CPUs is shown.

Also measured, to explain the ratio: the moto server's CPU per job on each side, and the worker's
AWS calls per job by type (an in-process worker with counting clients, same code).

    .venv/bin/python benchmarks/throughput.py [--jobs 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "functions"), str(REPO)]

import boto3  # noqa: E402
import psutil  # noqa: E402
from botocore.config import Config  # noqa: E402

from devstack.motoserver import MotoServer, free_port, wait_until  # noqa: E402
from devstack.stack import Devstack  # noqa: E402
from devstack.workers import worker_env  # noqa: E402
from enqueue.submission import submit  # noqa: E402
from gpu_worker.checkpoint import ResultStore  # noqa: E402
from gpu_worker.config import WorkerConfig  # noqa: E402
from gpu_worker.consumer import Worker, logger  # noqa: E402
from gpu_worker.health import logger as health_logger  # noqa: E402
from spotline.contract import JobStatus  # noqa: E402
from spotline.jobstore import JobStore  # noqa: E402

# The worker's own client settings (gpu_worker/__main__.py), so neither side is favoured.
CLIENT_CONFIG = Config(
    connect_timeout=5,
    read_timeout=30,
    retries={"max_attempts": 5, "mode": "adaptive"},
    max_pool_connections=10,
)
# The job queue's own settings, so the bare loop's queue costs moto what the worker's does.
SETTABLE = {
    "DelaySeconds",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "RedrivePolicy",
    "SqsManagedSseEnabled",
    "VisibilityTimeout",
}
QUIET = {"POWERTOOLS_LOG_LEVEL": "WARNING", "WORKER_METRICS": "off", "WORKER_IMDS_ENDPOINT": "off"}


class Measured(NamedTuple):
    """One side of one round."""

    jobs_per_s: float
    moto_cpu_ms: float  # per job, the moto server the queue is on
    client_cpu_ms: float  # per job, the consumer's own processes
    machine_busy: float  # share of all the machine's CPUs busy while it ran
    tables_moto_cpu_ms: float = 0.0  # per job, a second moto server with DynamoDB and S3


def rate(times: list[float]) -> float:
    """Completions per second between the first and the last completion."""
    times = sorted(times)
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0


class CpuMeter:
    """CPU seconds used by a process and its children (the moto server)."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)

    def seconds(self) -> float:
        total = 0.0
        for process in [self._process, *self._process.children(recursive=True)]:
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total


class MachineMeter:
    """Share of the machine's CPUs busy (all processes) since the last ``start``."""

    def start(self) -> None:
        self._before = psutil.cpu_times()

    def busy(self) -> float:
        after = psutil.cpu_times()
        spent = {f: getattr(after, f) - getattr(self._before, f) for f in after._fields}
        total = sum(spent.values())
        idle = spent.get("idle", 0.0) + spent.get("iowait", 0.0)
        return (total - idle) / total if total > 0 else 0.0


def _queue_like_the_job_queue(sqs: Any, dev: Devstack, name: str) -> str:
    attributes = sqs.get_queue_attributes(QueueUrl=dev.queue.url, AttributeNames=["All"])
    settings = {k: v for k, v in attributes["Attributes"].items() if k in SETTABLE}
    return str(sqs.create_queue(QueueName=name, Attributes=settings)["QueueUrl"])


def _receive_one(sqs: Any, url: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = sqs.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=1,
        WaitTimeSeconds=1,
        VisibilityTimeout=120,
        MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
        MessageAttributeNames=["All"],
    ).get("Messages", [])
    return messages


def _serial(
    sqs: Any, url: str, jobs: int, meter: CpuMeter, handle: Callable[[dict[str, Any]], None]
) -> Measured:
    """Receive 1 -> ``handle`` -> delete 1 until ``jobs`` messages are done, one at a time."""
    done: list[float] = []
    machine = MachineMeter()
    machine.start()
    cpu_before, client_before = meter.seconds(), time.process_time()
    while len(done) < jobs:
        for message in _receive_one(sqs, url):
            handle(message)
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            done.append(time.monotonic())
    client_ms = 1000 * (time.process_time() - client_before) / jobs
    cpu_ms = 1000 * (meter.seconds() - cpu_before) / jobs
    return Measured(rate(done), cpu_ms, client_ms, machine.busy())


def bare_loop(dev: Devstack, jobs: int, name: str, meter: CpuMeter) -> Measured:
    """Receive 1 -> delete 1, on a queue like the job queue."""
    sqs = boto3.client("sqs", config=CLIENT_CONFIG)
    url = _queue_like_the_job_queue(sqs, dev, name)
    body = json.dumps({"job_id": "x" * 36, "request": {"analyzer": "echo", "input": {"n": 1}}})
    for start in range(0, jobs, 10):
        entries = [{"Id": str(i), "MessageBody": body} for i in range(min(10, jobs - start))]
        sqs.send_message_batch(QueueUrl=url, Entries=entries)
    return _serial(sqs, url, jobs, meter, lambda message: None)


def contract_loop(dev: Devstack, jobs: int, name: str, meter: CpuMeter) -> Measured:
    """The fastest serial client that keeps the job contract: receive 1 -> claim (conditional
    UpdateItem) -> result to S3 -> complete (conditional UpdateItem) -> delete 1, with the
    worker's own JobStore and ResultStore calls and no analysis at all. What moto charges
    for the contract's calls is the same for any consumer; the worker's own overhead is what
    it costs above this loop."""
    sqs = boto3.client("sqs", config=CLIENT_CONFIG)
    store = JobStore(
        boto3.client("dynamodb", config=CLIENT_CONFIG), dev.require_stack.ref("JobsTable")
    )
    results = ResultStore(boto3.client("s3", config=CLIENT_CONFIG), dev.bucket)
    url = _queue_like_the_job_queue(sqs, dev, name)
    job_ids = [f"{name}-{index}" for index in range(jobs)]
    for job_id in job_ids:
        store.create(job_id, {"analyzer": "echo", "input": {"n": 1}})
    for start in range(0, jobs, 10):
        entries = [
            {"Id": str(i), "MessageBody": json.dumps({"job_id": job_id})}
            for i, job_id in enumerate(job_ids[start : start + 10])
        ]
        sqs.send_message_batch(QueueUrl=url, Entries=entries)

    def keep_the_contract(message: dict[str, Any]) -> None:
        job_id = json.loads(message["Body"])["job_id"]
        owner = f"{name}:{message['MessageId']}"
        store.claim_queued(job_id, owner, name)
        uri = results.put(job_id, json.dumps({"n": 1}), message["MessageId"])
        store.complete_quietly(job_id, owner, uri)

    measured = _serial(sqs, url, jobs, meter, keep_the_contract)
    check_succeeded(dev, job_ids)
    return measured


def _handled(port: int) -> int:
    """Jobs the worker handled so far, from its health endpoint (0 while it is not up)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as reply:
            return int(json.load(reply).get("jobs_handled", 0))
    except (OSError, ValueError):
        return 0


def _timestamp(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def submit_jobs(dev: Devstack, jobs: int, store: JobStore | None = None) -> list[str]:
    return [
        submit(
            {"analyzer": "echo", "input": {"n": i}},
            store=store or dev.store,
            queue=dev.queue,
            max_message_bytes=262144,
        ).job_id
        for i in range(jobs)
    ]


def check_succeeded(dev: Devstack, job_ids: list[str], store: JobStore | None = None) -> list[Any]:
    records = [(store or dev.store).get(job_id) for job_id in job_ids]
    failed = [r for r in records if r is None or r.status != JobStatus.SUCCEEDED]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(job_ids)} jobs did not succeed")
    return records


def worker_rate(
    dev: Devstack,
    jobs: int,
    name: str,
    meter: CpuMeter,
    tables: tuple[Devstack, CpuMeter] | None = None,
    **env: str,
) -> Measured:
    """A real worker process on ``jobs`` no-op (echo) jobs; its client CPU is the supervisor's
    and the analysis child's. With ``tables``, its DynamoDB and S3 calls go to that second
    moto server (the same stack deployed there) and only its SQS calls to ``dev``'s."""
    store = tables[0].store if tables else None
    if tables:
        endpoint = tables[0].server.endpoint_url
        env = {**env, "AWS_ENDPOINT_URL_DYNAMODB": endpoint, "AWS_ENDPOINT_URL_S3": endpoint}
    job_ids = submit_jobs(dev, jobs, store)
    # Progress comes from the worker's own /healthz, which costs moto nothing: a probe of the
    # queue (GetQueueAttributes scans it) would take moto CPU from the worker's share, and the
    # bare loop runs with no probe at all.
    port = free_port()
    machine = MachineMeter()
    cpu_before = meter.seconds()
    tables_before = tables[1].seconds() if tables else 0.0
    worker = dev.start_worker(name, **QUIET, WORKER_HEALTH_PORT=str(port), **env)
    own = CpuMeter(worker.pid)
    worker_cpu = 0.0
    try:
        # Its start-up (imports, spawning the analysis child) is not a job's cost.
        wait_until(
            lambda: _handled(port) > 0,
            timeout=60,
            interval=0.02,
            what=f"{name} to start its first job",
        )
        started_cpu = own.seconds()
        machine.start()
        wait_until(
            lambda: _handled(port) >= jobs,
            timeout=max(60.0, jobs / 5),
            interval=0.05,
            what=f"{name} to run every job",
        )
        # Handled is not yet recorded: the last few may still be finishing or unacknowledged.
        wait_until(
            lambda: dev.queue.approximate_counts() == (0, 0),
            timeout=30,
            interval=0.1,
            what=f"{name} to drain the queue",
        )
        worker_cpu = own.seconds() - started_cpu
        busy = machine.busy()
    finally:
        worker.stop()
        dev.workers.remove(worker)
    cpu_ms = 1000 * (meter.seconds() - cpu_before) / jobs
    tables_ms = 1000 * (tables[1].seconds() - tables_before) / jobs if tables else 0.0
    records = check_succeeded(dev, job_ids, store)
    return Measured(
        rate([_timestamp(r.finished_at) for r in records]),
        cpu_ms,
        1000 * worker_cpu / jobs,
        busy,
        tables_ms,
    )


def calls_per_job(dev: Devstack, jobs: int, **env: str) -> dict[str, float]:
    """The worker's AWS calls per job, by operation: the same Worker code in this process,
    with clients that count what they send."""
    counts: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def count(model: Any, **_: Any) -> None:
        with lock:
            counts[model.name] += 1

    clients = {}
    for service in ("sqs", "dynamodb", "s3"):
        client = boto3.client(service, config=CLIENT_CONFIG)
        client.meta.events.register("before-call", lambda model, **kw: count(model))
        clients[service] = client
    logger.setLevel("WARNING")  # this process's worker logs as quietly as the others
    health_logger.setLevel("WARNING")
    saved = dict(os.environ)
    os.environ.update(worker_env(dev.require_stack, dev.server.env(), **QUIET, **env))
    os.environ["WORKER_ID"] = "counting-worker"
    try:
        config = WorkerConfig.from_env()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    worker = Worker(config, sqs=clients["sqs"], dynamodb=clients["dynamodb"], s3=clients["s3"])
    job_ids = submit_jobs(dev, jobs)
    thread = threading.Thread(target=worker.run, name="counting-worker", daemon=True)
    thread.start()
    try:
        wait_until(
            lambda: dev.queue.approximate_counts() == (0, 0),
            timeout=max(60.0, jobs / 5),
            interval=1.0,
            what="the counting worker to drain the queue",
        )
    finally:
        worker.request_stop("benchmark done")
        thread.join(timeout=30)
    check_succeeded(dev, job_ids)
    # Idle long polls after the queue ran dry are not a job's cost.
    return {name: round(n / jobs, 2) for name, n in sorted(counts.items())}


def call_costs(dev: Devstack, meter: CpuMeter, depth: int, calls: int = 40) -> dict[str, Any]:
    """Moto CPU and wall ms of one call, by operation, with the queue ``depth`` messages deep
    (moto scans the whole queue on every receive and delete: its costs grow with the depth)."""
    sqs = boto3.client("sqs", config=CLIENT_CONFIG)
    store = JobStore(
        boto3.client("dynamodb", config=CLIENT_CONFIG), dev.require_stack.ref("JobsTable")
    )
    s3 = boto3.client("s3", config=CLIENT_CONFIG)
    url = sqs.create_queue(QueueName="costs", Attributes={"VisibilityTimeout": "120"})["QueueUrl"]
    body = json.dumps({"job_id": "x" * 36, "request": {"analyzer": "echo", "input": {"n": 1}}})
    for _ in range(0, depth + 2 * calls, 10):
        entries = [{"Id": str(i), "MessageBody": body} for i in range(10)]
        sqs.send_message_batch(QueueUrl=url, Entries=entries)
    # Records only: their messages must not reach the job queue the workers drain.
    job_ids = [f"costs-{index}" for index in range(calls)]
    for job_id in job_ids:
        store.create(job_id, {"analyzer": "echo", "input": {"n": 1}})
    received: list[dict[str, Any]] = []
    out: dict[str, Any] = {}

    def measure(name: str, call: Any, count: int = calls) -> None:
        cpu, wall = meter.seconds(), time.perf_counter()
        for index in range(count):
            call(index)
        out[name] = {
            "moto_cpu_ms": round(1000 * (meter.seconds() - cpu) / count, 2),
            "wall_ms": round(1000 * (time.perf_counter() - wall) / count, 2),
        }

    def receive(_: int) -> None:
        received.extend(
            sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=1,
                VisibilityTimeout=120,
                MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
                MessageAttributeNames=["All"],
            )["Messages"]
        )

    measure("ReceiveMessage", receive, 2 * calls)
    measure(
        "DeleteMessage",
        lambda i: sqs.delete_message(QueueUrl=url, ReceiptHandle=received[i]["ReceiptHandle"]),
    )
    batch = received[calls:]
    measure(
        "DeleteMessageBatch of 10",
        lambda i: sqs.delete_message_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]}
                for n, m in enumerate(batch[10 * i : 10 * i + 10])
            ],
        ),
        calls // 10,
    )
    measure("UpdateItem (claim)", lambda i: store.claim_queued(job_ids[i], f"t{i}", "costs"))
    measure(
        "PutObject (result)",
        lambda i: s3.put_object(
            Bucket=dev.bucket,
            Key=f"results/{job_ids[i]}.json",
            Body=b"{}",
            ContentType="application/json",
        ),
    )
    measure(
        "UpdateItem (complete)",
        lambda i: store.complete_quietly(job_ids[i], f"t{i}", f"s3://{dev.bucket}/results/x"),
    )
    sqs.delete_queue(QueueUrl=url)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--jobs", type=int, default=300, help="jobs per round (default: %(default)s)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds per side; medians (default: %(default)s)"
    )
    args = parser.parse_args()

    series: dict[str, list[float]] = collections.defaultdict(list)
    with MotoServer() as server, MotoServer() as second:
        # The same stack on a second moto server: the split side's table and bucket. Started
        # first (and stopped last): each start points this process's AWS_ENDPOINT_URL at its
        # server, and every other side's clients must reach the first.
        own_tables = Devstack(server=second, handler_env={"POWERTOOLS_LOG_LEVEL": "WARNING"})
        own_tables.start(stack_name="bench")
        dev = Devstack(server=server, handler_env={"POWERTOOLS_LOG_LEVEL": "WARNING"})
        dev.start(stack_name="bench")
        assert server._process is not None and second._process is not None
        meter = CpuMeter(server._process.pid)
        tables = (own_tables, CpuMeter(second._process.pid))
        try:
            # Interleaved rounds: drift of a shared machine hits both sides alike.
            for index in range(args.rounds):
                for key, measured in (
                    ("bare", bare_loop(dev, args.jobs, f"bare-{index}", meter)),
                    ("contract", contract_loop(dev, args.jobs, f"contract-{index}", meter)),
                    ("worker", worker_rate(dev, args.jobs, f"worker-{index}", meter)),
                    (
                        "plain",
                        worker_rate(dev, args.jobs, f"plain-{index}", meter, WORKER_PREFETCH="0"),
                    ),
                    ("split", worker_rate(dev, args.jobs, f"split-{index}", meter, tables)),
                ):
                    series[key].append(measured.jobs_per_s)
                    series[key + "_cpu"].append(measured.moto_cpu_ms)
                    series[key + "_client_cpu"].append(measured.client_cpu_ms)
                    series[key + "_busy"].append(measured.machine_busy)
                    series[key + "_tables_cpu"].append(measured.tables_moto_cpu_ms)
                print(
                    f"round {index + 1}: bare {series['bare'][-1]:.1f}/s, "
                    f"contract loop {series['contract'][-1]:.1f}/s, "
                    f"worker {series['worker'][-1]:.1f}/s, "
                    f"prefetch off {series['plain'][-1]:.1f}/s, "
                    f"tables apart {series['split'][-1]:.1f}/s",
                    file=sys.stderr,
                )
            costs = call_costs(dev, meter, depth=args.jobs // 2)
            calls = calls_per_job(dev, min(args.jobs, 100))
            calls_plain = calls_per_job(dev, min(args.jobs, 100), WORKER_PREFETCH="0")
        finally:
            dev.stop()
            own_tables.stop()

    median = {key: statistics.median(values) for key, values in series.items()}
    figures: dict[str, Any] = {
        "jobs": args.jobs,
        "rounds": args.rounds,
        "bare_loop_jobs_per_s": round(median["bare"], 1),
        "worker_jobs_per_s": round(median["worker"], 1),
        "worker_prefetch_off_jobs_per_s": round(median["plain"], 1),
        "contract_loop_jobs_per_s": round(median["contract"], 1),
        "worker_vs_bare_ratio": round(median["worker"] / median["bare"], 3),
        "worker_vs_contract_loop_ratio": round(median["worker"] / median["contract"], 3),
        "contract_loop_vs_bare_ratio": round(median["contract"] / median["bare"], 3),
        # While moto is the bottleneck, jobs/s go as 1 / (moto CPU per job): no consumer that
        # makes the contract's calls can beat the bare loop by more than this.
        "moto_cpu_ceiling_ratio": round(median["bare_cpu"] / median["contract_cpu"], 3),
        "prefetch_off_vs_bare_ratio": round(median["plain"] / median["bare"], 3),
        # DynamoDB and S3 on a second moto server (separate services, as in AWS): the queue's
        # server then carries the same calls on both sides; what remains is the worker's wait
        # on each claim before its job starts, and the machine's CPUs (machine_busy_*).
        "worker_tables_apart_jobs_per_s": round(median["split"], 1),
        "worker_tables_apart_vs_bare_ratio": round(median["split"] / median["bare"], 3),
        "moto_cpu_ms_per_job_tables_apart_queue": round(median["split_cpu"], 2),
        "moto_cpu_ms_per_job_tables_apart_tables": round(median["split_tables_cpu"], 2),
        "client_cpu_ms_per_job_tables_apart": round(median["split_client_cpu"], 2),
        "machine_busy_bare": round(median["bare_busy"], 3),
        "machine_busy_contract_loop": round(median["contract_busy"], 3),
        "machine_busy_worker": round(median["worker_busy"], 3),
        "machine_busy_prefetch_off": round(median["plain_busy"], 3),
        "machine_busy_tables_apart": round(median["split_busy"], 3),
        "moto_cpu_ms_per_job_bare": round(median["bare_cpu"], 2),
        "moto_cpu_ms_per_job_contract_loop": round(median["contract_cpu"], 2),
        "moto_cpu_ms_per_job_worker": round(median["worker_cpu"], 2),
        "moto_cpu_ms_per_job_prefetch_off": round(median["plain_cpu"], 2),
        "client_cpu_ms_per_job_bare": round(median["bare_client_cpu"], 2),
        "client_cpu_ms_per_job_contract_loop": round(median["contract_client_cpu"], 2),
        "client_cpu_ms_per_job_worker": round(median["worker_client_cpu"], 2),
        "client_cpu_ms_per_job_prefetch_off": round(median["plain_client_cpu"], 2),
        "worker_calls_per_job": calls,
        "call_costs_at_half_depth": costs,
        "worker_prefetch_off_calls_per_job": calls_plain,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }
    print(
        f"{'side':<24} {'jobs/s (rounds)':<20} {'median':>7} {'moto CPU ms/job':>16} "
        f"{'client CPU ms/job':>18} {'machine busy':>13}"
    )
    print("-" * 103)
    for key, label in (
        ("bare", "bare boto3 loop"),
        ("contract", "contract loop"),
        ("worker", "worker"),
        ("plain", "worker, prefetch 0"),
        ("split", "worker, tables apart"),
    ):
        rounds = ", ".join(f"{x:.1f}" for x in series[key])
        moto = f"{median[key + '_cpu']:.2f}"
        if key == "split":
            moto += f" + {median['split_tables_cpu']:.2f}"
        print(
            f"{label:<24} {rounds:<20} {median[key]:>7.1f} {moto:>16} "
            f"{median[key + '_client_cpu']:>18.2f} {median[key + '_busy']:>12.0%}"
        )
    print(f"worker / bare loop: {figures['worker_vs_bare_ratio']:.3f} (goal >= 0.9)")
    print(
        f"worker / contract loop: {figures['worker_vs_contract_loop_ratio']:.3f}; "
        f"contract loop / bare loop: {figures['contract_loop_vs_bare_ratio']:.3f}; "
        f"moto CPU per job, bare / contract loop: {figures['moto_cpu_ceiling_ratio']:.3f} "
        "(the most any consumer that keeps the contract can reach while moto is the bottleneck)"
    )
    print(
        "worker with DynamoDB and S3 on a second moto server / bare loop: "
        f"{figures['worker_tables_apart_vs_bare_ratio']:.3f} (the queue's server then carries "
        f"the same calls for both; the machine's {os.cpu_count()} CPUs were "
        f"{figures['machine_busy_tables_apart']:.0%} busy)"
    )
    print("AWS calls per job, worker:", calls)
    print("AWS calls per job, worker with WORKER_PREFETCH=0:", calls_plain)
    print("bare loop: ReceiveMessage 1, DeleteMessage 1")
    print(
        f"{'one call, queue ~' + str(args.jobs // 2) + ' deep':<26}{'operation':<26} "
        f"{'moto CPU ms':>12} {'wall ms':>9}"
    )
    for name, cost in costs.items():
        print(f"{'':<26}{name:<26} {cost['moto_cpu_ms']:>12.2f} {cost['wall_ms']:>9.2f}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":  # the analysis child is spawned: it re-imports this module
    sys.exit(main())
