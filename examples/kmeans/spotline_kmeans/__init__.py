"""``kmeans``: k-means clustering of a point set with numpy, an example spotline analyzer.

Everything it imports of spotline comes from ``spotline.sdk``. It shows what an analyzer on spot
capacity does: declare its contract (``spec``), load once, report progress, check
``ctx.should_stop()`` between steps, checkpoint its state and resume from it on the next
attempt, and fail with the SDK's error types.

Input ``{"points": [[x, y, ...], ...], "k": 3}``; params ``iterations`` (default 100),
``seed`` (default 0), ``tolerance`` (default 1e-6; 0 runs every iteration), ``oversample``
(each point repeated this
many times, a stand-in for a heavy batch: the memory guard's target in the tests) and
``checkpoint_every`` (iterations between checkpoints, default 10).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from spotline.sdk import (
    AnalysisContext,
    AnalyzerLimits,
    AnalyzerSpec,
    Interrupted,
    InvalidInput,
    Job,
)

INPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["points", "k"],
    "properties": {
        "points": {
            "type": "array",
            "minItems": 1,
            "maxItems": 100000,
            "items": {
                "type": "array",
                "minItems": 1,
                "maxItems": 64,
                "items": {"type": "number"},
            },
        },
        "k": {"type": "integer", "minimum": 1, "maximum": 256},
    },
}
PARAMS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "iterations": {"type": "integer", "minimum": 1, "maximum": 100000},
        "seed": {"type": "integer", "minimum": 0},
        "tolerance": {"type": "number", "minimum": 0},
        "oversample": {"type": "integer", "minimum": 1, "maximum": 100000},
        "checkpoint_every": {"type": "integer", "minimum": 1},
        "step_delay_s": {"type": "number", "minimum": 0, "maximum": 10},
    },
}


class KMeans:
    """k-means clustering (numpy), checkpointing its centroids as it goes."""

    spec = AnalyzerSpec(
        description="k-means clustering of a point set (numpy), resumable from checkpoints.",
        input_schema=INPUT_SCHEMA,
        params_schema=PARAMS_SCHEMA,
        limits=AnalyzerLimits(
            max_input_bytes=16 * 1024 * 1024,
            default_runtime_s=600,
            max_runtime_s=3600,
            checkpoints=True,
            memory_mib=1024,
        ),
    )

    def load(self) -> None:
        """Nothing to load: a model's weights would be read here, once per analysis child."""

    def analyze(self, job: Job, ctx: AnalysisContext) -> dict[str, Any]:
        params = job.params or {}
        points = np.asarray(job.input["points"], dtype=np.float64)
        if points.ndim != 2:
            raise InvalidInput("points must all have the same number of coordinates")
        k = int(job.input["k"])
        if k > len(points):
            raise InvalidInput(f"k={k} is more than the {len(points)} points")
        repeat = int(params.get("oversample", 1))
        if repeat > 1:
            points = np.repeat(points, repeat, axis=0)  # a heavy batch, resident at once
        iterations = int(params.get("iterations", 100))
        every = int(params.get("checkpoint_every", 10))
        tolerance = float(params.get("tolerance", 1e-6))
        delay_s = float(params.get("step_delay_s", 0.0))

        state = ctx.restore()
        if state:
            centroids = np.asarray(state["centroids"], dtype=np.float64)
            done = int(state["iteration"])
        else:
            rng = np.random.default_rng(int(params.get("seed", 0)))
            centroids = points[rng.choice(len(points), size=k, replace=False)]
            done = 0
        resumed_from = done
        labels = np.zeros(len(points), dtype=np.int64)
        shift = float("inf")
        # tolerance 0: run every iteration (no early stop on convergence)
        while done < iterations and not (tolerance > 0 and shift <= tolerance):
            if ctx.should_stop():
                ctx.checkpoint({"centroids": centroids.tolist(), "iteration": done})
                raise Interrupted(f"stopped at iteration {done} of {iterations}")
            distances = ((points[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
            labels = distances.argmin(axis=1)
            moved = np.array(
                [
                    points[labels == c].mean(axis=0) if np.any(labels == c) else centroids[c]
                    for c in range(k)
                ]
            )
            shift = float(np.abs(moved - centroids).max())
            centroids = moved
            done += 1
            ctx.progress(iteration=done, of=iterations, shift=shift)
            if done % every == 0:
                ctx.checkpoint({"centroids": centroids.tolist(), "iteration": done})
            if delay_s:
                import time

                time.sleep(delay_s)
        inertia = float(((points - centroids[labels]) ** 2).sum())
        return {
            "centroids": np.round(centroids, 6).tolist(),
            "sizes": np.bincount(labels, minlength=k).tolist(),
            "inertia": round(inertia, 6),
            "iterations": done,
            "resumed_from": resumed_from,
            "converged": shift <= tolerance,
        }
