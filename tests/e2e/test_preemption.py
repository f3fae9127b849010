"""Preemption end to end: moto server, the IMDS mock, real worker processes.

A preemption costs at most one checkpoint interval of work and never counts as a failure.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from devstack.imds import REBALANCE_PATH, SPOT_PATH, ImdsMock
from devstack.motoserver import free_port, wait_until
from devstack.stack import Devstack
from devstack.workers import WorkerProcess
from spotline.contract import ErrorKind, JobStatus
from tests.e2e.conftest import log_lines

pytestmark = pytest.mark.e2e

WINDOW_S = 4  # a short heartbeat window keeps hard-crash redelivery fast


@pytest.fixture
def imds() -> Iterator[ImdsMock]:
    with ImdsMock() as mock:
        yield mock


def spot_worker(dev: Devstack, name: str, imds: ImdsMock, **env: str) -> WorkerProcess:
    return dev.start_worker(
        name,
        WORKER_IMDS_ENDPOINT=imds.url,
        WORKER_IMDS_POLL_S="0.2",
        WORKER_VISIBILITY_WINDOW_S=str(WINDOW_S),
        **env,
    )


def plain_worker(dev: Devstack, name: str, **env: str) -> WorkerProcess:
    return dev.start_worker(
        name, WORKER_IMDS_ENDPOINT="off", WORKER_VISIBILITY_WINDOW_S=str(WINDOW_S), **env
    )


def submit_sleep(dev: Devstack, **params: Any) -> str:
    status, body = dev.submit({"analyzer": "sleep", "input": None, "params": params})
    assert status == 202, body
    return str(body["job_id"])


def events(worker: WorkerProcess, message: str) -> list[dict[str, Any]]:
    found = []
    for line in log_lines(worker.log_path):
        if f'"{message}"' in line:
            found.append(json.loads(line))
    return found


def status_of(dev: Devstack, job_id: str) -> JobStatus:
    record = dev.job(job_id)
    assert record is not None
    return record.status


def saved_checkpoint(dev: Devstack, job_id: str) -> dict | None:
    try:
        s3 = dev.client("s3")
        body = s3.get_object(Bucket=dev.bucket, Key=f"checkpoints/{job_id}")["Body"].read()
    except ClientError:
        return None
    return json.loads(body)


def wait_running_with_checkpoint(
    dev: Devstack, job_id: str, *, past_step: int = 0, timeout: float = 20
) -> dict:
    """RUNNING, with a periodic checkpoint beyond ``past_step`` written."""

    def checkpoint() -> dict | None:
        if status_of(dev, job_id) != JobStatus.RUNNING:
            return None
        saved = saved_checkpoint(dev, job_id)
        return saved if saved is not None and saved["steps_done"] > past_step else None

    return wait_until(checkpoint, timeout=timeout, what="a running job's checkpoint")


def checkpoint_exists(dev: Devstack, job_id: str) -> bool:
    try:
        dev.client("s3").head_object(Bucket=dev.bucket, Key=f"checkpoints/{job_id}")
    except ClientError:
        return False
    return True


def test_spot_notice_mid_job_checkpoints_and_another_worker_resumes_it_once(
    devstack: Devstack, imds: ImdsMock
) -> None:
    first = spot_worker(devstack, "spot-a", imds)
    job_id = submit_sleep(devstack, seconds=4, step_s=0.1, checkpoint_every_s=0.5)
    wait_running_with_checkpoint(devstack, job_id)

    noticed_at = imds.schedule_notice("terminate", deadline_s=120)
    assert first.process is not None and first.process.wait(timeout=15) == 0
    exited_after_s = time.time() - noticed_at
    record = devstack.job(job_id)
    assert (record.status, record.interruptions, record.attempts) == (JobStatus.QUEUED, 1, 0)
    assert record.last_error.kind == ErrorKind.INTERRUPTED
    assert "imds-spot terminate" in record.last_error.message
    saved = saved_checkpoint(devstack, job_id)
    assert exited_after_s < 5, "the worker left well inside the two-minute notice"

    second = plain_worker(devstack, "spot-b")
    wait_until(lambda: status_of(devstack, job_id) == JobStatus.SUCCEEDED, timeout=20)
    result = devstack.read_result(devstack.job(job_id).result_uri)
    assert result["resumed_from"] == saved["steps_done"] > 0
    assert sorted(result["ran"]) == list(range(40)), "a step before the checkpoint was redone"
    assert len(events(first, "job started")) == len(events(second, "job started")) == 1
    assert not checkpoint_exists(devstack, job_id), "checkpoints are deleted on success"
    assert devstack.queue_depths() == {"jobs": (0, 0), "dlq": (0, 0)}


def interrupt_repeatedly(
    dev: Devstack, job_id: str, workers: dict[str, tuple[WorkerProcess, ImdsMock]], times: int
) -> None:
    """Give a notice to whichever worker runs the job, ``times`` times."""
    for round_number in range(1, times + 1):

        def holder() -> str | None:
            record = dev.job(job_id)
            if record.status == JobStatus.RUNNING and record.worker in workers:
                return record.worker
            return None

        name = wait_until(holder, timeout=20, what=f"job running (round {round_number})")
        worker, mock = workers.pop(name)
        mock.schedule_notice()
        assert worker.process is not None and worker.process.wait(timeout=15) == 0
        record = dev.job(job_id)
        if record.status == JobStatus.DEAD_LETTERED:
            return
        assert record.interruptions == round_number


def test_five_interruptions_never_dead_letter_the_job(devstack: Devstack) -> None:
    # The template's maxReceiveCount is 3: only fresh copies keep the job off the DLQ.
    mocks = [ImdsMock().start() for _ in range(5)]
    try:
        workers = {
            f"spot-{n}": (spot_worker(devstack, f"spot-{n}", mock), mock)
            for n, mock in enumerate(mocks)
        }
        job_id = submit_sleep(devstack, seconds=30, step_s=0.1, checkpoint_every_s=0.5)
        interrupt_repeatedly(devstack, job_id, workers, times=5)
        record = devstack.job(job_id)
        assert (record.status, record.interruptions, record.attempts) == (JobStatus.QUEUED, 5, 0)
        assert devstack.queue_depths()["dlq"] == (0, 0)
        (message,) = devstack.queue.receive(wait_s=2, visibility_s=30)
        assert message.receive_count == 1, "each interruption re-sends a fresh copy"
        assert json.loads(message.body)["interruptions"] == 5
    finally:
        for mock in mocks:
            mock.stop()


def test_interruptions_past_the_cap_dead_letter_the_job_as_interrupted(
    devstack: Devstack,
) -> None:
    mocks = [ImdsMock().start() for _ in range(2)]
    try:
        workers = {
            f"spot-{n}": (
                spot_worker(devstack, f"spot-{n}", mock, WORKER_MAX_INTERRUPTIONS="1"),
                mock,
            )
            for n, mock in enumerate(mocks)
        }
        job_id = submit_sleep(devstack, seconds=30, step_s=0.1)
        interrupt_repeatedly(devstack, job_id, workers, times=2)
        record = devstack.job(job_id)
        assert record.status == JobStatus.DEAD_LETTERED
        assert record.last_error.kind == ErrorKind.INTERRUPTED
        assert "interrupted 2 times (cap 1)" in record.last_error.message
        (message,) = devstack.dlq.receive(wait_s=2)
        assert message.message_attributes["error_kind"]["StringValue"] == ErrorKind.INTERRUPTED
    finally:
        for mock in mocks:
            mock.stop()


def test_sigterm_to_a_deaf_analyzer_kills_it_after_the_grace_and_the_job_resumes(
    devstack: Devstack,
) -> None:
    first = plain_worker(devstack, "deaf", WORKER_CHECKPOINT_GRACE_S="1")
    job_id = submit_sleep(devstack, seconds=3, step_s=0.1, checkpoint_every_s=0.3, ignore_stop=True)
    wait_running_with_checkpoint(devstack, job_id)
    signalled = time.monotonic()
    first.signal(signal.SIGTERM)
    assert first.process is not None and first.process.wait(timeout=15) == 0
    assert time.monotonic() - signalled < 6
    record = devstack.job(job_id)
    assert (record.status, record.last_error.kind) == (JobStatus.QUEUED, ErrorKind.INTERRUPTED)
    assert "grace" in record.last_error.message and "signal" in record.last_error.message
    plain_worker(devstack, "finisher")
    wait_until(lambda: status_of(devstack, job_id) == JobStatus.SUCCEEDED, timeout=20)
    result = devstack.read_result(devstack.job(job_id).result_uri)
    assert result["resumed_from"] > 0
    assert sorted(result["ran"]) == list(range(30))


def test_idle_worker_leaves_at_once_on_sigterm_or_notice_not_after_its_long_poll(
    devstack: Devstack, imds: ImdsMock
) -> None:
    by_signal = plain_worker(devstack, "idle-signal", WORKER_WAIT_S="20")
    # Working through the notice would keep it polling until the cutoff (below).
    by_notice = spot_worker(
        devstack, "idle-notice", imds, WORKER_WAIT_S="20", WORKER_WORK_THROUGH_NOTICE="off"
    )
    for worker in (by_signal, by_notice):
        wait_until(lambda w=worker: events(w, "worker starting"), timeout=20)
    wait_until(lambda: imds.stats()["counts"], timeout=10, what="IMDS polled")
    started = time.monotonic()
    by_signal.signal(signal.SIGTERM)
    imds.schedule_notice()
    assert by_signal.process.wait(timeout=10) == 0
    assert by_notice.process.wait(timeout=10) == 0
    assert time.monotonic() - started < 5, "a 20 s long poll must not delay the exit"


def test_a_notice_worked_through_ends_at_its_cutoff_not_after_the_long_poll(
    devstack: Devstack, imds: ImdsMock
) -> None:
    worker = spot_worker(
        devstack, "idle-cutoff", imds, WORKER_WAIT_S="20", WORKER_CHECKPOINT_GRACE_S="1"
    )
    wait_until(lambda: events(worker, "worker starting"), timeout=20)
    wait_until(lambda: imds.stats()["counts"], timeout=10, what="IMDS polled")
    noticed_at = imds.schedule_notice(deadline_s=9)  # cutoff: 9 - 1 grace - 5 reserve = 3 s
    wait_until(lambda: events(worker, "stopping"), timeout=10, what="the cutoff")
    assert worker.process.wait(timeout=10) == 0
    assert 2 < time.time() - noticed_at < 8, "left at the cutoff, inside the notice"


def test_sigkill_mid_job_redelivers_within_one_window_and_resumes_from_the_checkpoint(
    devstack: Devstack,
) -> None:
    first = plain_worker(devstack, "crash")
    job_id = submit_sleep(devstack, seconds=4, step_s=0.1, checkpoint_every_s=0.5)
    first_saved = wait_running_with_checkpoint(devstack, job_id)
    wait_running_with_checkpoint(devstack, job_id, past_step=first_saved["steps_done"])
    first.kill()  # SIGKILL to the whole process group, as when the host vanishes
    killed = time.monotonic()
    saved = saved_checkpoint(devstack, job_id)
    second = plain_worker(devstack, "survivor")
    wait_until(lambda: events(second, "job started"), timeout=WINDOW_S + 15)
    redelivered_after_s = time.monotonic() - killed
    assert redelivered_after_s <= WINDOW_S + 3, "the message came back within one window"
    wait_until(lambda: status_of(devstack, job_id) == JobStatus.SUCCEEDED, timeout=20)
    result = devstack.read_result(devstack.job(job_id).result_uri)
    assert result["resumed_from"] == saved["steps_done"] > 0
    assert sorted(result["ran"]) == list(range(40))


def test_without_imds_the_worker_runs_normally_and_says_so_once(devstack: Devstack) -> None:
    worker = devstack.start_worker(
        "laptop", WORKER_IMDS_ENDPOINT=f"http://127.0.0.1:{free_port()}", WORKER_IMDS_POLL_S="0.1"
    )
    job_id = submit_sleep(devstack, seconds=1.5, step_s=0.1)
    wait_until(lambda: status_of(devstack, job_id) == JobStatus.SUCCEEDED, timeout=20)
    assert worker.alive()
    assert (
        len(events(worker, "metadata service not found; its notices are off until it answers")) == 1
    )
    assert not [line for line in log_lines(worker.log_path) if '"level":"WARNING"' in line]


def test_imds_token_is_refreshed_and_replaced_after_expiry(
    devstack: Devstack, imds: ImdsMock
) -> None:
    worker = spot_worker(devstack, "token", imds, WORKER_IMDS_TOKEN_TTL_S="1")
    token_puts = "PUT /latest/api/token 200"
    wait_until(lambda: imds.stats()["counts"].get(token_puts, 0) >= 3, timeout=20)
    counts = imds.stats()["counts"]
    assert counts.get(f"GET {SPOT_PATH} 401", 0) == 0, "refreshed before it expired"
    imds.expire_tokens()
    job_id = submit_sleep(devstack, seconds=20, step_s=0.1)
    wait_until(lambda: status_of(devstack, job_id) == JobStatus.RUNNING, timeout=20)
    imds.schedule_notice()
    assert worker.process.wait(timeout=15) == 0
    assert devstack.job(job_id).last_error.kind == ErrorKind.INTERRUPTED
    counts = imds.stats()["counts"]
    assert sum(n for key, n in counts.items() if key.endswith(" 401")) >= 1
    assert not events(worker, "ignoring unexpected metadata answer"), "a 401 is handled quietly"


def test_imds_garbage_is_logged_ignored_and_the_worker_lives_on(
    devstack: Devstack, imds: ImdsMock
) -> None:
    imds.serve_garbage(SPOT_PATH, body=b"<html>captive portal</html>")
    imds.serve_garbage(REBALANCE_PATH, status=500, body=b"oops")
    worker = spot_worker(devstack, "garbage", imds)
    job_id = submit_sleep(devstack, seconds=1.5, step_s=0.1)
    wait_until(lambda: status_of(devstack, job_id) == JobStatus.SUCCEEDED, timeout=20)
    assert worker.alive()
    complaints = events(worker, "ignoring unexpected metadata answer")
    assert sorted(c["status"] for c in complaints) == [200, 500], "each logged once"
    assert devstack.job(job_id).interruptions == 0
    imds.reset()  # IMDS is healthy again: the same monitors still see a real notice
    second = submit_sleep(devstack, seconds=20, step_s=0.1)
    wait_until(lambda: status_of(devstack, second) == JobStatus.RUNNING, timeout=20)
    imds.schedule_notice()
    assert worker.process.wait(timeout=15) == 0
    assert devstack.job(second).last_error.kind == ErrorKind.INTERRUPTED


def test_rebalance_drains_the_worker_without_interrupting_its_job(
    devstack: Devstack, imds: ImdsMock
) -> None:
    worker = spot_worker(devstack, "rebalance", imds)
    running = submit_sleep(devstack, seconds=2, step_s=0.1)
    wait_until(lambda: status_of(devstack, running) == JobStatus.RUNNING, timeout=20)
    imds.recommend_rebalance()
    wait_until(lambda: events(worker, "interruption"), timeout=10)
    waiting = submit_sleep(devstack, seconds=1, step_s=0.1)
    wait_until(lambda: status_of(devstack, running) == JobStatus.SUCCEEDED, timeout=20)
    assert devstack.job(running).interruptions == 0
    assert worker.alive() and status_of(devstack, waiting) == JobStatus.QUEUED
    imds.schedule_notice()
    assert worker.process.wait(timeout=15) == 0
    assert status_of(devstack, waiting) == JobStatus.QUEUED
    assert devstack.job(waiting).attempts == 0


def test_checkpoints_in_a_shared_directory_carry_the_job_across_workers(
    devstack: Devstack, tmp_path: Path
) -> None:
    shared = tmp_path / "efs"  # an EFS mount both hosts see
    first = plain_worker(devstack, "dir-a", WORKER_CHECKPOINT_DIR=str(shared))
    job_id = submit_sleep(devstack, seconds=3, step_s=0.1, checkpoint_every_s=0.3)
    checkpoint_file = shared / f"{job_id}.ckpt"
    wait_until(checkpoint_file.exists, timeout=20, what="checkpoint file")
    first.signal(signal.SIGTERM)
    assert first.process is not None and first.process.wait(timeout=15) == 0
    assert not checkpoint_exists(devstack, job_id), "nothing went to S3"
    plain_worker(devstack, "dir-b", WORKER_CHECKPOINT_DIR=str(shared))
    wait_until(lambda: status_of(devstack, job_id) == JobStatus.SUCCEEDED, timeout=20)
    result = devstack.read_result(devstack.job(job_id).result_uri)
    assert result["resumed_from"] > 0 and sorted(result["ran"]) == list(range(30))
    assert list(shared.iterdir()) == [], "deleted on success, no temp files left"
