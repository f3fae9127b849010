"""The real model through the real worker: arrays as .npy beside the JSON result in S3."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from devstack.motoserver import wait_until
from devstack.stack import Devstack
from spotline.contract import JobStatus
from tests.e2e.conftest import log_lines

pytestmark = [pytest.mark.e2e, pytest.mark.requires_model]

TEXTS = ["Spot capacity is back.", "The spot fleet recovered.", "A recipe for lemon cake."]


def test_text_embed_jobs_write_npy_artifacts_and_load_the_model_once(devstack: Devstack) -> None:
    worker = devstack.start_worker()
    job_ids = []
    for params in ({"format": "npy"}, {"task": "similarity", "format": "npy", "batch_size": 1}):
        status, body = devstack.submit(
            {"analyzer": "text_embed", "input": {"texts": TEXTS}, "params": params}
        )
        assert status == 202
        job_ids.append(body["job_id"])

    def all_finished() -> bool:
        records = [devstack.job(job_id) for job_id in job_ids]
        return all(
            r is not None and r.status in (JobStatus.SUCCEEDED, JobStatus.DEAD_LETTERED)
            for r in records
        )

    wait_until(all_finished, timeout=90, what="two text_embed jobs")
    s3 = devstack.client("s3")
    arrays = []
    for job_id, name in zip(job_ids, ("embeddings", "similarity"), strict=True):
        record = devstack.job(job_id)
        assert record is not None and record.status == JobStatus.SUCCEEDED, record
        result = devstack.read_result(record.result_uri)
        assert result["device"] == "cpu" and result["format"] == "npy"
        assert result[f"{name}_uri"] == f"s3://{devstack.bucket}/results/{job_id}/{name}.npy"
        body = s3.get_object(Bucket=devstack.bucket, Key=f"results/{job_id}/{name}.npy")["Body"]
        arrays.append(np.load(io.BytesIO(body.read()), allow_pickle=False))
    embeddings, similarity = arrays
    assert embeddings.shape == (3, 384) and similarity.shape == (3, 3)
    assert np.allclose(similarity, embeddings @ embeddings.T, atol=1e-4)
    assert similarity[0, 1] > similarity[0, 2] + 0.2
    # The model loads once per analysis child: the second job does not pay for it again.
    finished = [json.loads(line) for line in log_lines(worker.log_path) if '"job finished"' in line]
    assert [entry["job_id"] for entry in finished] == job_ids and worker.alive()
    assert finished[1]["duration_s"] < finished[0]["duration_s"] / 2
