"""Working through a spot notice, end to end: moto server, the IMDS mock, real workers.

Under a notice a worker keeps taking the jobs that end before the notice's cutoff (deadline less
the checkpoint grace and the exit reserve) and gives the rest back unstarted at once, never as
an attempt; at the cutoff it leaves.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from devstack.imds import ImdsMock
from devstack.motoserver import wait_until
from devstack.stack import Devstack
from devstack.workers import WorkerProcess
from spotline.contract import JobStatus
from tests.e2e.conftest import log_lines

pytestmark = pytest.mark.e2e

DEADLINE_S = 30.0
GRACE_S = 2.0
CUTOFF_S = DEADLINE_S - GRACE_S - 5.0  # stop_policy.EXIT_RESERVE_S


@pytest.fixture
def imds() -> Iterator[ImdsMock]:
    with ImdsMock() as mock:
        yield mock


def logged(worker: WorkerProcess, message: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log_lines(worker.log_path) if f'"{message}"' in line]


def submit(dev: Devstack, **request: Any) -> str:
    status, body = dev.submit({"analyzer": "sleep", "input": None, **request})
    assert status == 202, body
    return str(body["job_id"])


def record_of(dev: Devstack, job_id: str) -> Any:
    record = dev.job(job_id)
    assert record is not None
    return record


def test_under_a_notice_a_short_job_is_run_and_a_long_one_given_back_uncounted(
    devstack: Devstack, imds: ImdsMock
) -> None:
    noticed = devstack.start_worker(
        "noticed",
        WORKER_IMDS_ENDPOINT=imds.url,
        WORKER_IMDS_POLL_S="0.2",
        WORKER_CHECKPOINT_GRACE_S=str(GRACE_S),
        WORKER_WORK_THROUGH_NOTICE="on",
    )
    wait_until(lambda: imds.stats()["counts"], timeout=20, what="IMDS polled")
    noticed_at = imds.schedule_notice("terminate", deadline_s=DEADLINE_S)
    wait_until(
        lambda: logged(
            noticed, "working through the notice: taking only jobs that end before the cutoff"
        ),
        timeout=10,
        what="the notice worked through",
    )

    # A job whose limit (5 s) ends before the cutoff is taken and finishes under the notice.
    short = submit(devstack, params={"seconds": 1, "step_s": 0.1}, max_runtime_s=5)
    wait_until(
        lambda: record_of(devstack, short).status == JobStatus.SUCCEEDED,
        timeout=15,
        what="the short job finished under the notice",
    )
    assert record_of(devstack, short).worker == "noticed"
    assert time.time() < noticed_at + CUTOFF_S

    # A job under the stack's cap (hours) cannot end in time: given back at once, unclaimed.
    long = submit(devstack, params={"seconds": 1, "step_s": 0.1})
    declines = wait_until(
        lambda: [
            line
            for line in logged(
                noticed, "job does not fit the notice's time left; given back unstarted"
            )
            if line.get("job_id") == long
        ],
        timeout=10,
        what="the long job declined",
    )
    assert declines[0]["visible_in_s"] == 0, "the first decline gives it back at once"
    record = record_of(devstack, long)
    assert (record.status, record.attempts, record.interruptions) == (JobStatus.QUEUED, 0, 0)
    started = [line.get("job_id") for line in logged(noticed, "job started")]
    assert started == [short], "the long job never started on the noticed worker"

    # At the cutoff the noticed worker leaves, inside the notice; another worker runs the job.
    assert noticed.process is not None
    assert noticed.process.wait(timeout=DEADLINE_S) == 0
    assert time.time() < noticed_at + DEADLINE_S
    devstack.start_worker("standby", WORKER_IMDS_ENDPOINT="off")
    wait_until(
        lambda: record_of(devstack, long).status == JobStatus.SUCCEEDED,
        timeout=DEADLINE_S + 10,
        what="the long job run by the next worker",
    )
    record = record_of(devstack, long)
    assert (record.worker, record.attempts, record.interruptions) == ("standby", 0, 0)
