"""What the standby's "is my worker busy?" reads: the sparse RunningOnIndex Query versus the
full-table Scan it replaced, on job tables of growing size.

A table of N jobs (finished jobs of realistic size: request, timestamps, result URI, worker),
of which a few are RUNNING on the standby and a few on a spot worker. Both read paths run
against moto (in process) on the same table:

- spotline: ``Workload.in_flight`` (Query on RunningOnIndex, KEYS_ONLY, Select=COUNT);
- baseline: the Scan it replaced (``status = RUNNING AND begins_with(worker, instance)``).

Items read are DynamoDB's ScannedCount. Read units are computed from the items' sizes by
DynamoDB's rules (eventually consistent: 0.5 RCU per 4 KB, summed per 1 MB page, at least one
unit per page): moto does not meter them. Wall time is moto's, so only the ratio means much.
Run: ``.venv/bin/python benchmarks/standby_index.py [--jobs 1000 10000 25000]``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT / "functions"), str(REPO_ROOT)]

import boto3  # noqa: E402
from moto import mock_aws  # noqa: E402

from devstack.cfn import provision  # noqa: E402
from spot_events.fleet import Workload  # noqa: E402
from spotline.contract import JobStatus  # noqa: E402
from spotline.jobstore import JobStore, utc_now  # noqa: E402

STANDBY = "i-0123456789abcdef0"
SPOT = "i-0fedcba987654321f"
RUNNING_ON_STANDBY = 3
RUNNING_ON_SPOT = 5
PAGE_BYTES = 1024 * 1024
UNIT_BYTES = 4096


def item_bytes(item: dict[str, Any]) -> int:
    """DynamoDB's item size: attribute names plus values (strings by UTF-8 length)."""

    def value(typed: dict[str, Any]) -> int:
        (kind, raw), *_ = typed.items()
        if kind == "S":
            return len(raw.encode())
        if kind == "N":
            return math.ceil(len(raw.lstrip("-").replace(".", "")) / 2) + 1
        if kind in ("BOOL", "NULL"):
            return 1
        if kind == "M":
            return 3 + sum(len(k.encode()) + value(v) + 1 for k, v in raw.items())
        if kind == "L":
            return 3 + sum(value(v) + 1 for v in raw)
        raise ValueError(kind)

    return sum(len(name.encode()) + value(typed) for name, typed in item.items())


def read_units(sizes: list[int]) -> tuple[float, int]:
    """(RCUs, pages) for reading items of these sizes, eventually consistent, 1 MB pages."""
    units, pages, page = 0.0, 0, 0
    for size in [*sizes, None]:
        if size is None or page + size > PAGE_BYTES:
            if page or not pages:
                units += max(0.5, math.ceil(page / UNIT_BYTES) * 0.5)
                pages += 1
            page = 0
        if size is not None:
            page += size
    return units, pages


def old_scan(client: Any, table: str, instance_id: str) -> tuple[int, int]:
    """The read the standby made before the index: (RUNNING jobs counted, items read)."""
    count = read = 0
    for page in client.get_paginator("scan").paginate(
        TableName=table,
        Select="COUNT",
        FilterExpression="#status = :running AND begins_with(#worker, :instance)",
        ExpressionAttributeNames={"#status": "status", "#worker": "worker"},
        ExpressionAttributeValues={
            ":running": {"S": str(JobStatus.RUNNING)},
            ":instance": {"S": instance_id},
        },
    ):
        count += int(page["Count"])
        read += int(page["ScannedCount"])
    return count, read


def fill(client: Any, table: str, jobs: int) -> None:
    finished = jobs - RUNNING_ON_STANDBY - RUNNING_ON_SPOT
    now = utc_now()
    request = json.dumps({"analyzer": "text_embed", "input": {"texts": ["x" * 120] * 2}})
    for start in range(0, finished, 25):
        batch = []
        for number in range(start, min(start + 25, finished)):
            job_id = f"{number:08d}-1c1a-4c56-9d53-3e2d9c1b7a11"
            item = {
                "job_id": {"S": job_id},
                "status": {"S": str(JobStatus.SUCCEEDED)},
                "request": {"S": request},
                "attempts": {"N": "0"},
                "interruptions": {"N": "0"},
                "sent": {"BOOL": True},
                "worker": {"S": SPOT},
                "result_uri": {"S": f"s3://spotline-data/results/{job_id}.json"},
                **{key: {"S": now} for key in ("created_at", "updated_at", "started_at")},
                "finished_at": {"S": now},
            }
            batch.append({"PutRequest": {"Item": item}})
        client.batch_write_item(RequestItems={table: batch})
    store = JobStore(client, table)
    for number in range(RUNNING_ON_STANDBY + RUNNING_ON_SPOT):
        job_id = f"running-{number}"
        store.create(job_id, {"analyzer": "echo", "input": 1})
        worker = STANDBY if number < RUNNING_ON_STANDBY else SPOT
        store.claim_queued(job_id, f"{worker}/m/{number}", worker)


def measure(jobs: int) -> dict[str, Any]:
    with mock_aws():
        stack = provision(boto3.Session(region_name="us-east-1"), stack_name="bench")
        client = boto3.client("dynamodb", region_name="us-east-1")
        table = stack.ref("JobsTable")
        fill(client, table, jobs)
        sizes = [
            item_bytes(i)
            for p in client.get_paginator("scan").paginate(TableName=table)
            for i in p["Items"]
        ]
        workload = Workload(None, JobStore(client, table))
        workload.in_flight("i-00000000")  # warm: the paginator's model is loaded once
        query_reads: list[int] = []
        client.meta.events.register(
            "after-call.dynamodb.Query",
            lambda parsed, **_: query_reads.append(int(parsed["ScannedCount"])),
        )
        started = time.perf_counter()
        found = workload.in_flight(STANDBY)
        query_s = time.perf_counter() - started
        started = time.perf_counter()
        scanned, scan_read = old_scan(client, table, STANDBY)
        scan_s = time.perf_counter() - started
    assert found == scanned == RUNNING_ON_STANDBY, (found, scanned)
    # KEYS_ONLY: an index item is the table key, the index key and 100 bytes of overhead.
    index_item = len("job_id") + 41 + len("running_on") + len(STANDBY) + 100
    query_units, query_pages = read_units([index_item] * sum(query_reads))
    scan_units, scan_pages = read_units(sizes)
    return {
        "jobs": jobs,
        "in_flight": found,
        "query_items_read": sum(query_reads),
        "scan_items_read": scan_read,
        "query_rcu": query_units,
        "scan_rcu": scan_units,
        "query_pages": query_pages,
        "scan_pages": scan_pages,
        "table_mb": round(sum(sizes) / PAGE_BYTES, 2),
        "query_ms": round(1000 * query_s, 2),
        "scan_ms": round(1000 * scan_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--jobs",
        type=int,
        nargs="+",
        default=[1_000, 10_000, 25_000],
        help="table sizes to measure, in jobs (default: %(default)s)",
    )
    args = parser.parse_args()
    rows = [measure(jobs) for jobs in args.jobs]
    header = (
        f"{'jobs':>8} {'table MB':>9} {'scan items':>11} {'query items':>12} "
        f"{'scan RCU':>9} {'query RCU':>10} {'scan pages':>11} {'scan ms':>9} {'query ms':>9}"
    )
    print(f"standby's in-flight check, {RUNNING_ON_STANDBY} jobs RUNNING on the standby")
    print(header)
    for r in rows:
        print(
            f"{r['jobs']:>8} {r['table_mb']:>9} {r['scan_items_read']:>11} "
            f"{r['query_items_read']:>12} {r['scan_rcu']:>9} {r['query_rcu']:>10} "
            f"{r['scan_pages']:>11} {r['scan_ms']:>9} {r['query_ms']:>9}"
        )
    largest = rows[-1]
    figures = {
        "jobs": largest["jobs"],
        "scan_items_read": largest["scan_items_read"],
        "query_items_read": largest["query_items_read"],
        "scan_rcu": largest["scan_rcu"],
        "query_rcu": largest["query_rcu"],
        "items_read_ratio": round(largest["scan_items_read"] / largest["query_items_read"], 1),
        "rcu_ratio": round(largest["scan_rcu"] / largest["query_rcu"], 1),
        "wall_time_ratio": round(largest["scan_ms"] / max(largest["query_ms"], 0.01), 1),
        "rows": rows,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
