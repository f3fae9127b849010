"""The real worker's prefetch on a backlog: held messages and the job prepared ahead go back at
once on shutdown, never as attempts, and every job of the burst still runs to SUCCEEDED exactly
once."""

from __future__ import annotations

import json
import signal
from collections import Counter

import pytest

from devstack.motoserver import wait_until
from devstack.stack import Devstack
from devstack.workers import WorkerProcess
from spotline.contract import JobStatus
from tests.e2e.conftest import log_lines

pytestmark = pytest.mark.e2e


def started_jobs(*workers: WorkerProcess) -> Counter[str]:
    counts: Counter[str] = Counter()
    for worker in workers:
        for line in log_lines(worker.log_path):
            if '"job started"' in line:
                counts[json.loads(line)["job_id"]] += 1
    return counts


def test_sigterm_on_a_backlog_hands_held_messages_back_at_once(devstack: Devstack) -> None:
    first = devstack.start_worker("first", WORKER_IMDS_ENDPOINT="off", WORKER_PREFETCH="3")
    _, warm = devstack.submit({"analyzer": "echo", "input": {"warm": True}})
    wait_until(lambda: devstack.job(warm["job_id"]).status == JobStatus.SUCCEEDED, timeout=20)
    job_ids = []
    for n in range(6):  # short jobs: the worker prefetches behind them
        status, body = devstack.submit(
            {"analyzer": "sleep", "input": {"n": n}, "params": {"seconds": 0.4, "step_s": 0.1}}
        )
        assert status == 202, body
        job_ids.append(body["job_id"])
    # One running, up to three held: more in flight than the one job that runs.
    wait_until(lambda: devstack.queue_depths()["jobs"][1] >= 3, timeout=10, what="held messages")
    # The next job is claimed ahead: RUNNING under the lease, shown as not started.
    wait_until(
        lambda: any(devstack.job(j).prepared for j in job_ids), timeout=10, what="a prepared job"
    )

    first.signal(signal.SIGTERM)
    assert first.process is not None and first.process.wait(timeout=20) == 0
    records = {job_id: devstack.job(job_id) for job_id in job_ids}
    waiting = [r for r in records.values() if r.status != JobStatus.SUCCEEDED]
    assert waiting, "the burst was not over when the worker stopped"
    for record in waiting:
        assert record.status == JobStatus.QUEUED and record.attempts == 0 and not record.owner_token
        assert record.prepared_at is None, "given back: no longer claimed ahead"
    given_back = [line for line in log_lines(first.log_path) if "given back, never started" in line]
    assert given_back, "the prepared job went back at once, not after its window"
    released = [json.loads(line) for line in log_lines(first.log_path) if "released" in line]
    assert released and released[0]["released"] >= 1
    # Visible again now: nothing waits out the window it was received with.
    assert devstack.queue_depths()["jobs"] == (len(waiting), 0)

    second = devstack.start_worker("second", WORKER_IMDS_ENDPOINT="off")
    wait_until(
        lambda: all(devstack.job(j).status == JobStatus.SUCCEEDED for j in job_ids),
        timeout=30,
        what="the rest of the burst",
    )
    wait_until(lambda: devstack.queue_depths()["jobs"] == (0, 0), timeout=5, what="all acked")
    starts = started_jobs(first, second)
    interrupted = {j for j in job_ids if devstack.job(j).interruptions}
    assert all(starts[j] == (2 if j in interrupted else 1) for j in job_ids), starts
    assert all(devstack.job(j).attempts == 0 for j in job_ids)
