"""AWS failing on every step of a job's life, against a real ``python -m gpu_worker`` (issue 16).

The worker talks to moto server through devstack's FaultProxy, which answers chosen calls as
AWS does when it is throttling, erroring (5xx) or dropping the connection. botocore's own retries
are off (``WORKER_AWS_MAX_ATTEMPTS=1``) so every injected fault reaches the worker. Whatever step
it hits (claim, input, result, completion, ack, release, requeue, dead-lettering), the job ends as
it would have without the fault, no attempt is counted for it, and the worker's pid never changes.
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass, field
from typing import Any

import pytest

from devstack.faults import FaultProxy
from devstack.motoserver import wait_until
from devstack.stack import Devstack
from devstack.workers import WorkerProcess
from spotline.contract import ErrorKind, JobStatus

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Fault:
    service: str
    operation: str
    kind: str = "500"
    times: int = 1
    key_contains: str | None = None


@dataclass(frozen=True)
class Case:
    request: dict[str, Any]
    faults: tuple[Fault, ...]
    status: JobStatus
    attempts: int  # the attempts the job itself earned: never one for a fault
    error_kind: ErrorKind | None = None
    input_object: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)


ECHO = {"analyzer": "echo", "input": {"fault": "tolerated"}}
SLOW = {"analyzer": "sleep", "input": None, "params": {"seconds": 4, "step_s": 0.1}}
RETRIED_ONCE = {"analyzer": "fail", "input": None, "params": {"fail_attempts": 1}}
PERMANENT = {"analyzer": "fail", "input": None, "params": {"error": "permanent"}}

CASES = {
    # -- success: claim -> input -> run -> result -> completion -> ack --
    "claim throttled": Case(
        ECHO, (Fault("dynamodb", "UpdateItem", "throttle", 2, "QUEUED"),), JobStatus.SUCCEEDED, 0
    ),
    "record read fails": Case(
        ECHO,
        (
            Fault("dynamodb", "UpdateItem", "500", 1, "QUEUED"),
            Fault("dynamodb", "GetItem", "reset", 1),
        ),
        JobStatus.SUCCEEDED,
        0,
    ),
    "input read 503": Case(
        {"analyzer": "echo", "input_uri": "INPUT"},
        (Fault("s3", "GetObject", "503", 2, "inputs/"),),
        JobStatus.SUCCEEDED,
        0,
        input_object=True,
    ),
    "result write 500": Case(
        ECHO, (Fault("s3", "PutObject", "500", 2, "results/"),), JobStatus.SUCCEEDED, 0
    ),
    "result write connection reset": Case(
        ECHO, (Fault("s3", "PutObject", "reset", 1, "results/"),), JobStatus.SUCCEEDED, 0
    ),
    "completion throttled": Case(
        ECHO,
        (Fault("dynamodb", "UpdateItem", "throttle", 2, "SUCCEEDED"),),
        JobStatus.SUCCEEDED,
        0,
    ),
    "ack fails": Case(ECHO, (Fault("sqs", "DeleteMessage", "500", 2),), JobStatus.SUCCEEDED, 0),
    "heartbeat and lease renewal fail": Case(
        SLOW,
        (
            Fault("sqs", "ChangeMessageVisibility", "500", 2),
            Fault("dynamodb", "UpdateItem", "throttle", 2, "lease_expires_at"),
        ),
        JobStatus.SUCCEEDED,
        0,
        extra_env={"WORKER_VISIBILITY_WINDOW_S": "6"},
    ),
    "checkpoint upload fails": Case(
        {"analyzer": "sleep", "input": None, "params": {"seconds": 1.5, "checkpoint_every_s": 0.3}},
        (Fault("s3", "PutObject", "503", 3, "checkpoints/"),),
        JobStatus.SUCCEEDED,
        0,
    ),
    # -- retry: a real failure, its release hit by a fault --
    "retry release fails": Case(
        RETRIED_ONCE,
        (Fault("dynamodb", "UpdateItem", "500", 1, "last_error"),),
        JobStatus.SUCCEEDED,
        1,
    ),
    "retry backoff release fails": Case(
        RETRIED_ONCE,
        (Fault("sqs", "ChangeMessageVisibility", "throttle", 1),),
        JobStatus.SUCCEEDED,
        1,
    ),
    # -- dead-lettering: record -> DLQ send -> mark -> delete --
    "dead-letter record fails": Case(
        PERMANENT,
        (Fault("dynamodb", "UpdateItem", "500", 1, "DEAD_LETTERED"),),
        JobStatus.DEAD_LETTERED,
        1,
        ErrorKind.ANALYZER_ERROR,
    ),
    "DLQ send fails": Case(
        PERMANENT,
        (Fault("sqs", "SendMessage", "500", 2, "error_kind"),),
        JobStatus.DEAD_LETTERED,
        1,
        ErrorKind.ANALYZER_ERROR,
    ),
    "DLQ mark fails": Case(
        PERMANENT,
        (Fault("dynamodb", "UpdateItem", "reset", 1, "dlq_sent_for"),),
        JobStatus.DEAD_LETTERED,
        1,
        ErrorKind.ANALYZER_ERROR,
    ),
}


def fault_lines(worker: WorkerProcess) -> list[dict[str, Any]]:
    found = []
    for line in worker.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        if "AWS fault" in line and line.startswith("{"):
            found.append(json.loads(line))
    return found


@pytest.fixture
def proxy(devstack: Devstack) -> FaultProxy:
    return devstack.fault_proxy()


def faulty_worker(devstack: Devstack, proxy: FaultProxy, **env: str) -> WorkerProcess:
    return devstack.start_worker(
        AWS_ENDPOINT_URL=proxy.endpoint_url,
        WORKER_AWS_MAX_ATTEMPTS="1",
        WORKER_ENABLE_DRILLS="true",
        WORKER_PREFETCH="0",
        **env,
    )


@pytest.mark.parametrize("name", list(CASES))
def test_an_aws_fault_on_any_step_costs_no_attempt_and_no_worker(
    devstack: Devstack, proxy: FaultProxy, name: str
) -> None:
    case = CASES[name]
    worker = faulty_worker(devstack, proxy, **case.extra_env)
    pid = worker.pid
    request = dict(case.request)
    if case.input_object:
        key = "inputs/fault.json"
        devstack.client("s3").put_object(Bucket=devstack.bucket, Key=key, Body=b'{"from": "s3"}')
        request["input_uri"] = f"s3://{devstack.bucket}/{key}"
    for fault in case.faults:
        proxy.inject(
            fault.service,
            fault.operation,
            fault=fault.kind,
            times=fault.times,
            key_contains=fault.key_contains,
        )
    status, body = devstack.submit(request)
    assert status == 202
    job_id = body["job_id"]

    wait_until(
        lambda: (
            devstack.job(job_id).status == case.status and devstack.queue_depths()["jobs"] == (0, 0)
        ),
        timeout=60,
        what=f"{name}: {case.status}",
        detail=lambda: (devstack.job(job_id), devstack.queue_depths(), proxy.injected()),
    )

    record = devstack.job(job_id)
    assert proxy.injected() >= 1, "the fault was injected"
    assert record.attempts == case.attempts, "a fault was counted as the job's attempt"
    if case.error_kind is not None:
        assert record.last_error.kind == case.error_kind
    if case.status == JobStatus.SUCCEEDED:
        result = devstack.read_result(record.result_uri)
        if case.input_object:
            assert result == {"from": "s3"}
        listed = devstack.client("s3").list_objects_v2(
            Bucket=devstack.bucket, Prefix=f"results/{job_id}/"
        )
        assert len(listed.get("Contents", [])) == 1, "one result object"
    else:
        wait_until(lambda: devstack.queue_depths()["dlq"][0] >= 1, timeout=20, what="DLQ copy")
    assert worker.alive() and worker.pid == pid
    assert fault_lines(worker) or name.startswith(("heartbeat", "checkpoint")), (
        "the worker said what happened"
    )


def test_an_interrupted_job_whose_requeue_fails_is_released_and_finished_elsewhere(
    devstack: Devstack, proxy: FaultProxy
) -> None:
    leaving = faulty_worker(devstack, proxy)
    request = {
        "analyzer": "sleep",
        "input": None,
        "params": {"seconds": 3, "checkpoint_every_s": 0.2},
    }
    status, body = devstack.submit(request)
    assert status == 202
    job_id = body["job_id"]
    wait_until(lambda: devstack.job(job_id).status == JobStatus.RUNNING, timeout=30, what="running")
    proxy.inject("sqs", "SendMessage", fault="500", times=1)  # the fresh copy's send
    leaving.signal(signal.SIGTERM)
    wait_until(lambda: not leaving.alive(), timeout=40, what="the interrupted worker leaves")
    assert leaving.process is not None and leaving.process.returncode == 0, "a planned exit"

    staying = faulty_worker(devstack, proxy)
    wait_until(
        lambda: devstack.job(job_id).status == JobStatus.SUCCEEDED, timeout=60, what="finished"
    )
    record = devstack.job(job_id)
    assert record.attempts == 0 and record.interruptions == 1
    assert proxy.injected("sqs", "SendMessage") == 1
    assert staying.alive()


def test_persistent_aws_faults_degrade_health_and_never_dead_letter(
    devstack: Devstack, proxy: FaultProxy
) -> None:
    worker = faulty_worker(devstack, proxy, WORKER_DEGRADED_AFTER_FAULTS="2")
    pid = worker.pid
    proxy.inject("s3", "PutObject", fault="503", times=None, key_contains="results/")
    status, body = devstack.submit(ECHO)
    assert status == 202
    job_id = body["job_id"]

    wait_until(lambda: len(fault_lines(worker)) >= 3, timeout=60, what="three faults in a row")
    record = devstack.job(job_id)
    assert record.status == JobStatus.QUEUED or record.status == JobStatus.RUNNING
    assert record.attempts == 0
    assert devstack.queue_depths()["dlq"] == (0, 0)
    assert fault_lines(worker)[-1]["degraded"] is True

    proxy.clear()  # AWS answers again
    wait_until(
        lambda: devstack.job(job_id).status == JobStatus.SUCCEEDED, timeout=60, what="recovery"
    )
    assert devstack.job(job_id).attempts == 0
    assert worker.alive() and worker.pid == pid
