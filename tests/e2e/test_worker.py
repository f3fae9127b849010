from __future__ import annotations

import json
import signal

import pytest

from devstack.motoserver import wait_until
from devstack.stack import Devstack
from spotline.contract import ErrorKind, JobMessage, JobStatus
from tests.e2e.conftest import log_lines

pytestmark = pytest.mark.e2e


def started_count(dev: Devstack, job_id: str) -> int:
    count = 0
    for worker in dev.workers:
        for line in log_lines(worker.log_path):
            if '"job started"' in line and job_id in line:
                count += 1
    return count


def test_twenty_echo_jobs_all_succeed_with_results_equal_to_inputs(devstack: Devstack) -> None:
    devstack.start_worker()
    inputs = {}
    for index in range(20):
        payload = {"index": index, "text": f"sentence {index}", "score": index / 3}
        status, body = devstack.submit({"analyzer": "echo", "input": payload})
        assert status == 202
        inputs[body["job_id"]] = payload

    def all_succeeded() -> bool:
        return all(devstack.job(j).status == JobStatus.SUCCEEDED for j in inputs)

    wait_until(all_succeeded, timeout=60, what="20 echo jobs")
    for job_id, payload in inputs.items():
        record = devstack.job(job_id)
        # One object per attempt: the record names the attempt whose completion it recorded.
        assert record.result_uri.startswith(f"s3://{devstack.bucket}/results/{job_id}/result-")
        assert record.result_uri.endswith(".json")
        assert devstack.read_result(record.result_uri) == payload
        assert record.attempts == 0
    wait_until(lambda: devstack.queue_depths()["jobs"] == (0, 0), timeout=10, what="empty queue")
    assert devstack.queue_depths()["dlq"] == (0, 0)


def test_job_longer_than_the_visibility_window_succeeds_exactly_once(devstack: Devstack) -> None:
    worker = devstack.start_worker(WORKER_VISIBILITY_WINDOW_S="3")
    status, body = devstack.submit(
        {"analyzer": "sleep", "input": None, "params": {"seconds": 7, "step_s": 0.5}}
    )
    assert status == 202
    job_id = body["job_id"]
    wait_until(
        lambda: devstack.job(job_id).status == JobStatus.SUCCEEDED, timeout=40, what="sleep job"
    )
    result = devstack.read_result(devstack.job(job_id).result_uri)
    assert result["ran"] == list(range(14)) and result["resumed_from"] == 0
    assert started_count(devstack, job_id) == 1, "the message was received more than once"
    heartbeats = [
        json.loads(line)["heartbeats"]
        for line in log_lines(worker.log_path)
        if '"job finished"' in line and job_id in line
    ]
    assert heartbeats and heartbeats[0] >= 2


def test_duplicate_delivery_of_a_succeeded_job_is_acknowledged_not_rerun(
    devstack: Devstack,
) -> None:
    devstack.start_worker()
    _, body = devstack.submit({"analyzer": "echo", "input": {"once": True}})
    job_id = body["job_id"]
    wait_until(lambda: devstack.job(job_id).status == JobStatus.SUCCEEDED, timeout=30)
    record = devstack.job(job_id)
    devstack.queue.send(JobMessage(job_id, record.request))  # at-least-once: a second copy
    wait_until(lambda: devstack.queue_depths()["jobs"] == (0, 0), timeout=20, what="ack")
    assert started_count(devstack, job_id) == 1
    assert devstack.job(job_id).updated_at == record.updated_at


def test_invalid_message_goes_to_the_dlq_as_invalid_input(devstack: Devstack) -> None:
    devstack.start_worker()
    devstack.queue.send_body("this is not a job")
    wait_until(lambda: devstack.queue_depths()["dlq"][0] == 1, timeout=20, what="dlq message")
    (message,) = devstack.dlq.receive(wait_s=1)
    assert message.body == "this is not a job"
    assert message.message_attributes["error_kind"]["StringValue"] == ErrorKind.INVALID_INPUT
    assert devstack.queue_depths()["jobs"] == (0, 0)


def test_sigterm_mid_job_checkpoints_requeues_and_another_worker_finishes(
    devstack: Devstack,
) -> None:
    first = devstack.start_worker("first")
    _, body = devstack.submit(
        {
            "analyzer": "sleep",
            "input": None,
            "params": {"seconds": 6, "step_s": 0.2, "checkpoint_every_s": 0.4},
        }
    )
    job_id = body["job_id"]
    wait_until(lambda: started_count(devstack, job_id) == 1, timeout=20, what="job start")
    wait_until(lambda: devstack.job(job_id).status == JobStatus.RUNNING, timeout=10)
    # Progress first (a periodic checkpoint), so there is work for the resume to keep.
    s3 = devstack.client("s3")
    wait_until(
        lambda: s3.list_objects_v2(Bucket=devstack.bucket, Prefix=f"checkpoints/{job_id}")[
            "KeyCount"
        ],
        timeout=10,
    )
    first.signal(signal.SIGTERM)
    assert first.process.wait(timeout=30) == 0
    record = devstack.job(job_id)
    assert (record.status, record.interruptions, record.attempts) == (JobStatus.QUEUED, 1, 0)
    assert record.last_error.kind == ErrorKind.INTERRUPTED
    devstack.start_worker("second")
    wait_until(lambda: devstack.job(job_id).status == JobStatus.SUCCEEDED, timeout=30)
    result = devstack.read_result(devstack.job(job_id).result_uri)
    assert result["resumed_from"] > 0
    assert sorted(result["ran"]) == list(range(30)), "a step before the checkpoint was redone"
