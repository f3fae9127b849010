"""A real worker with WORKER_PRELOAD: the model loads before the first receive, off every
job's clock; the same job on a worker without it times out on the load."""

from __future__ import annotations

import json

import pytest

from devstack.motoserver import wait_until
from devstack.stack import Devstack
from spotline.contract import JobStatus
from spotline_drills import LOAD_SECONDS_ENV
from tests.e2e.conftest import log_lines

pytestmark = pytest.mark.e2e

LOAD_S = "3"
# Shorter than the load: it can only succeed where the model was loaded before the job.
JOB = {"analyzer": "slow_load", "input": {"n": 1}, "max_runtime_s": 2}


def test_preloading_worker_runs_a_job_shorter_than_its_models_load(devstack: Devstack) -> None:
    worker = devstack.start_worker(
        "preload",
        WORKER_PRELOAD="slow_load",
        WORKER_IMDS_ENDPOINT="off",
        **{LOAD_SECONDS_ENV: LOAD_S},
    )
    status, body = devstack.submit(JOB)
    assert status == 202, body
    job_id = body["job_id"]
    wait_until(
        lambda: devstack.job(job_id).status == JobStatus.SUCCEEDED,
        timeout=45,
        what="the job on the preloaded model",
        detail=lambda: devstack.job(job_id),
    )
    record = devstack.job(job_id)
    assert record is not None and record.attempts == 0 and record.result_uri
    assert devstack.read_result(record.result_uri)["loaded_in_s"] >= float(LOAD_S)
    lines = [json.loads(line) for line in log_lines(worker.log_path) if line.startswith("{")]
    preloaded = [line for line in lines if line["message"] == "analyzers preloaded"]
    assert preloaded and preloaded[0]["preloaded"] == ["slow_load"]


def test_without_preload_the_load_is_on_the_first_jobs_clock(devstack: Devstack) -> None:
    devstack.start_worker("lazy", WORKER_IMDS_ENDPOINT="off", **{LOAD_SECONDS_ENV: LOAD_S})
    status, body = devstack.submit(JOB)
    assert status == 202, body
    job_id = body["job_id"]
    wait_until(
        lambda: (r := devstack.job(job_id)) is not None and r.last_error is not None,
        timeout=45,
        what="the first attempt to fail",
    )
    record = devstack.job(job_id)
    assert record is not None and record.last_error is not None
    assert record.last_error.kind == "TIMEOUT"
