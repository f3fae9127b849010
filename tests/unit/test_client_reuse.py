"""The worker's AWS clients are made once: no job, prefetched or not, creates one.

A client per job would cost a TLS handshake and a credentials lookup per call, and throw away
the connection pool that lets botocore reuse HTTP connections; the quality bar says clients are
created once, never per record. Here every way of making a client raises once the worker
exists, and a backlog of jobs still runs to SUCCEEDED through every path of the worker (the
long poll, prefetch, the finisher threads, batched deletes).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import botocore.session
import pytest

from devstack.cfn import Stack
from devstack.motoserver import wait_until
from gpu_worker.consumer import Worker
from spotline.contract import JobStatus
from spotline.jobstore import JobStore
from spotline.queue import JobQueue
from tests.unit.conftest import stack_worker_config
from tests.unit.test_prefetch import send_jobs

JOBS = 12


@pytest.fixture
def worker(stack: Stack) -> Iterator[Worker]:
    config = stack_worker_config(
        stack,
        worker_id="reuse",
        wait_s=0,
        visibility_window_s=30,
        metrics_sink="off",
        prefetch=4,
    )
    worker = Worker(
        config, sqs=boto3.client("sqs"), dynamodb=boto3.client("dynamodb"), s3=boto3.client("s3")
    )
    try:
        yield worker
    finally:
        worker.close_intake()
        worker.supervisor.close()


def test_a_backlog_runs_without_creating_a_single_client(
    worker: Worker, job_store: JobStore, queue: JobQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_ids = send_jobs(queue, job_store, JOBS)
    made: list[str] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        made.append(str(args[1] if len(args) > 1 else kwargs.get("service_name")))
        raise AssertionError("an AWS client was created while jobs ran")

    monkeypatch.setattr(botocore.session.Session, "create_client", refuse)
    worker.start_intake()

    def all_succeeded() -> bool:
        worker.poll_once()
        records = [job_store.get(job_id) for job_id in job_ids]
        return all(r is not None and r.status == JobStatus.SUCCEEDED for r in records)

    wait_until(all_succeeded, timeout=60, interval=0, what="the backlog to succeed")
    worker.close_intake()  # the last batched deletes go out
    assert made == []
    assert queue.approximate_counts() == (0, 0)
    assert worker.jobs_handled >= JOBS
