"""Dead letters end to end: real worker, moto server, the DLQ routed to the real handler."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.cfn import REPO_ROOT
from devstack.deadletters import DeadLetterRouter, configure_notifications
from devstack.motoserver import MotoServer, wait_until
from devstack.sink import WebhookSink
from devstack.stack import Devstack
from spotline.contract import ErrorKind, JobStatus
from spotline.notified import CALLBACK, delivered_for
from spotline.queue import JobQueue
from spotline.standard_webhooks import generate_key_pair, verify
from tests.e2e.conftest import operator_redrive

pytestmark = pytest.mark.e2e

KEY, PUBLIC_KEY = generate_key_pair()


@pytest.fixture
def sink() -> Iterator[WebhookSink]:
    with WebhookSink() as server:
        yield server


def spotline_cli(dev: Devstack, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m spotline_ops.cli`` as an operator runs it, pointed at devstack."""
    names = ["--endpoint-url", dev.server.endpoint_url, "--stack-name", dev.require_stack.name]
    python_path = os.pathsep.join(str(REPO_ROOT / home) for home in ("tools", "functions"))
    env = {**os.environ, "PYTHONPATH": python_path, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "spotline_ops.cli", *names, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_worker_dead_letter_is_alerted_notified_and_redriven_by_the_cli(
    devstack: Devstack, sink: WebhookSink
) -> None:
    env = configure_notifications(devstack, sink.url, KEY)
    devstack.start_worker()
    key = "inputs/arrives-late.json"
    request = {
        "analyzer": "echo",
        "input_uri": f"s3://{devstack.bucket}/{key}",
        "notify": {"callback_url": sink.url.replace("http://", "https://") + "/callback"},
    }
    with DeadLetterRouter(devstack, handler_env=env):
        status, body = devstack.submit(request)
        assert status == 202
        job_id = body["job_id"]

        def notified() -> bool:
            record = devstack.job(job_id)
            return {"slack", "discord", CALLBACK} <= delivered_for(record).keys()

        wait_until(notified, timeout=30, what="alerts and notice for the dead letter")
        record = devstack.job(job_id)
        assert record.status == JobStatus.DEAD_LETTERED
        assert record.last_error.kind == ErrorKind.INVALID_INPUT
        assert len(sink.on("/slack")) == 1 and len(sink.on("/discord")) == 1
        (notice,) = sink.on("/callback")
        assert notice.json()["status"] == "DEAD_LETTERED"
        assert verify(PUBLIC_KEY, notice.headers, notice.body)
        wait_until(lambda: devstack.dlq.approximate_counts() == (0, 0), timeout=10, what="DLQ")

        listed = spotline_cli(devstack, "dlq", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        (row,) = json.loads(listed.stdout)["jobs"]
        assert row["job_id"] == job_id and row["error_kind"] == "INVALID_INPUT"

        # The operator fixes the input, then redrives the job.
        devstack.client("s3").put_object(Bucket=devstack.bucket, Key=key, Body=b'{"late": 1}')
        code = operator_redrive(devstack, job_id, "--reset-attempts")
        assert code == 0
        wait_until(
            lambda: devstack.job(job_id).status == JobStatus.SUCCEEDED, timeout=30, what="rerun"
        )
    assert devstack.read_result(devstack.job(job_id).result_uri) == {"late": 1}
    assert len(sink.on("/slack")) == 1 and len(sink.on("/callback")) == 1


def test_a_dead_letter_that_can_never_be_alerted_moves_to_notification_failures(
    moto_server: MotoServer, sink: WebhookSink, tmp_path: Path
) -> None:
    sink.script = {"/slack": [500]}
    dev = Devstack(
        server=moto_server, workdir=tmp_path, parameters={"NotificationMaxReceiveCount": 2}
    )
    dev.start(stack_name="e2e-notification-failures")
    try:
        env = configure_notifications(dev, sink.url, KEY)
        failures = JobQueue(dev.client("sqs"), dev.require_stack.ref("NotificationFailuresQueue"))
        dev.dlq.send_body("not json at all")
        router = DeadLetterRouter(dev, handler_env=env, visibility_s=1)
        router.module.service().alerts.client.backoff_s = 0  # same retries, no sleeps
        with router:
            wait_until(
                lambda: failures.approximate_counts()[0] == 1,
                timeout=30,
                what="message in the notification-failures queue",
            )
            assert router.stats.failed_records == 2 and not router.stats.errors
        assert dev.dlq.approximate_counts() == (0, 0)
        assert len(sink.on("/discord")) == 1  # delivered once, never repeated by the retry
    finally:
        dev.stop()
