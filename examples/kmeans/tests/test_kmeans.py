"""The example analyzer through spotline's real analysis child (spotline.sdk.testing): the
same process, memory guard, checkpoints and stop signal as on a spot worker, no AWS."""

from __future__ import annotations

import pytest

from spotline.sdk.testing import run_analyzer

BLOBS = [[0.0 + i * 0.01, 0.0] for i in range(20)] + [[10.0 + i * 0.01, 10.0] for i in range(20)]


def test_it_clusters_two_blobs() -> None:
    result = run_analyzer("kmeans", {"points": BLOBS, "k": 2}, {"seed": 1})
    assert result.succeeded, result.error_message
    assert sorted(result.output["sizes"]) == [20, 20]
    centres = sorted(tuple(round(c) for c in centroid) for centroid in result.output["centroids"])
    assert centres == [(0, 0), (10, 10)]
    assert result.progress["iteration"] == result.output["iterations"]


def test_a_stop_checkpoints_and_the_next_attempt_resumes_from_it() -> None:
    slow = {
        "seed": 1,
        "iterations": 400,
        "tolerance": 0,
        "checkpoint_every": 5,
        "step_delay_s": 0.01,
    }
    first = run_analyzer("kmeans", {"points": BLOBS, "k": 2}, slow, stop_after_s=1.0)
    assert first.error_kind == "INTERRUPTED" and not first.permanent
    assert first.checkpoint is not None and first.checkpoint["iteration"] > 0
    second = run_analyzer(
        "kmeans", {"points": BLOBS, "k": 2}, slow, restored=first.checkpoint, attempt=1
    )
    assert second.succeeded, second.error_message
    assert second.output["resumed_from"] == first.checkpoint["iteration"]
    assert second.output["iterations"] == 400


def test_a_batch_too_big_for_the_memory_limit_is_oom_not_a_dead_worker() -> None:
    many = [[float(i % 97), float(i % 89)] for i in range(2000)]
    result = run_analyzer(
        "kmeans", {"points": many, "k": 8}, {"oversample": 4000}, memory_limit_mib=300
    )
    assert result.error_kind == "OOM" and not result.permanent
    assert result.peak_memory_bytes >= 300 * 1024 * 1024 * 0.9


@pytest.mark.parametrize(
    "job_input, params, where",
    [
        ({"points": BLOBS}, {}, "$.input"),  # no k
        ({"points": BLOBS, "k": 0}, {}, "$.input.k"),
        ({"points": BLOBS, "k": 2}, {"iterations": "many"}, "$.params.iterations"),
        ({"points": BLOBS, "k": 2}, {"colour": "red"}, "$.params"),
    ],
)
def test_input_and_params_outside_the_declared_schemas_are_invalid(
    job_input: dict, params: dict, where: str
) -> None:
    result = run_analyzer("kmeans", job_input, params)
    assert result.error_kind == "INVALID_INPUT" and result.permanent
    assert where in (result.error_message or "")


def test_more_clusters_than_points_is_invalid_input_from_the_analyzer() -> None:
    result = run_analyzer("kmeans", {"points": [[1.0], [2.0]], "k": 3})
    assert result.error_kind == "INVALID_INPUT" and "k=3" in (result.error_message or "")
