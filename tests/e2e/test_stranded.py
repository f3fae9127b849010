"""A job enqueue stored but never sent (it stopped between the two, the client never retried)
is sent by the sweep and run by a real worker; and a stack without drills refuses them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError

from devstack.motoserver import MotoServer, wait_until
from devstack.stack import Devstack
from devstack.workers import worker_env
from spotline.contract import (
    JobStatus,
    analyzer_names,
    drill_analyzers,
)
from spotline.queue import JobQueue

pytestmark = pytest.mark.e2e


class UnreachableSqs:
    """SQS as a network failure shows it to enqueue: the send never arrives."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def send_message(self, **kwargs: Any) -> Any:
        raise EndpointConnectionError(endpoint_url="https://sqs.us-east-1.amazonaws.com")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_a_job_stored_but_never_sent_is_swept_and_run_by_a_live_worker(
    devstack: Devstack, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = devstack.start_worker()
    pid = worker.pid
    queue = JobQueue(UnreachableSqs(devstack.client("sqs")), devstack.queue.url)
    monkeypatch.setattr(devstack.enqueue, "job_queue", lambda: queue)
    status, body = devstack.submit(
        {"analyzer": "echo", "input": {"lost": True}}, idempotency_key="k"
    )
    assert status == 503, body
    monkeypatch.undo()  # the client never retries; SQS is reachable again for the sweep
    job_id = devstack.job_id_for("k")
    record = devstack.job(job_id)
    assert record is not None and record.status == JobStatus.QUEUED and not record.sent
    assert devstack.queue_depths()["jobs"] == (0, 0)  # nothing would ever run it

    assert devstack.sweep() == {"sent": [job_id], "cleared": [], "failed": {}}

    wait_until(
        lambda: devstack.job(job_id).status == JobStatus.SUCCEEDED, timeout=30, what="swept job"
    )
    assert devstack.read_result(devstack.job(job_id).result_uri) == {"lost": True}
    assert devstack.job(job_id).sent
    assert devstack.sweep()["sent"] == []  # once
    assert worker.alive() and worker.pid == pid


def test_a_stack_without_drill_analyzers_refuses_them_naming_the_accepted_ones(
    moto_server: MotoServer, tmp_path: Path
) -> None:
    with Devstack(
        server=moto_server, workdir=tmp_path, parameters={"EnableDrillAnalyzers": "false"}
    ) as dev:
        status, body = dev.submit({"analyzer": "memory_hog", "input": None})
        assert status == 400, body
        (error,) = body["errors"]
        assert error["path"] == "$.analyzer"
        accepted = error["message"].split("accepted:", 1)[1]
        assert {name.strip() for name in accepted.split(",")} == {
            name for name in analyzer_names() if name not in drill_analyzers()
        }
        assert dev.queue_depths()["jobs"] == (0, 0)
        assert dev.submit({"analyzer": "echo", "input": 1})[0] == 202


def test_devstack_enables_drills_for_enqueue_and_its_workers(devstack: Devstack) -> None:
    env = worker_env(devstack.require_stack, devstack.server.env())
    assert (env["WORKER_ENABLE_DRILLS"], env["WORKER_MAX_RUNTIME_S"]) == ("true", "21600")
    assert devstack.submit({"analyzer": "fail", "input": None})[0] == 202
