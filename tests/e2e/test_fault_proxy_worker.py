"""A real worker behind devstack's FaultProxy: it works through it, and botocore's retries
ride over AWS faults the proxy injects."""

from __future__ import annotations

import pytest

from devstack.motoserver import wait_until
from devstack.stack import Devstack
from spotline.contract import JobStatus

pytestmark = pytest.mark.e2e


def run_echo_job(devstack: Devstack) -> str:
    status, body = devstack.submit({"analyzer": "echo", "input": {"x": 1}})
    assert status == 202
    job_id = str(body["job_id"])
    wait_until(
        lambda: devstack.job(job_id).status == JobStatus.SUCCEEDED,
        timeout=60,
        what="echo job through the proxy",
        detail=lambda: devstack.job(job_id),
    )
    return job_id


def test_worker_behind_the_proxy_runs_an_echo_job(devstack: Devstack) -> None:
    proxy = devstack.fault_proxy()
    devstack.start_worker(AWS_ENDPOINT_URL=proxy.endpoint_url)

    job_id = run_echo_job(devstack)

    assert devstack.read_result(devstack.job(job_id).result_uri) == {"x": 1}
    # Every call of the job went through the proxy, none of them faulted. The worker deletes
    # in batches, after the record says SUCCEEDED.
    wait_until(lambda: proxy.seen("sqs", "DeleteMessageBatch") == 1, timeout=10, what="delete")
    assert proxy.seen("sqs", "ReceiveMessage") >= 1
    assert proxy.seen("dynamodb", "*") >= 1
    assert proxy.seen("s3", "PutObject") >= 1
    assert proxy.injected() == 0


def test_worker_rides_over_a_throttle_and_a_500(devstack: Devstack) -> None:
    proxy = devstack.fault_proxy()
    proxy.inject("sqs", "ReceiveMessage", fault="throttle")
    proxy.inject("s3", "PutObject", fault="500", key_contains="results/")
    devstack.start_worker(AWS_ENDPOINT_URL=proxy.endpoint_url)

    run_echo_job(devstack)

    assert proxy.injected("sqs", "ReceiveMessage") == 1
    assert proxy.injected("s3", "PutObject") == 1
