"""spotline's analyzer SDK: everything an analyzer author imports, and nothing else of spotline.

An analyzer is a class (or any factory returning an object) with ``load()`` and
``analyze(job, ctx)``, declared as a Python entry point in the group ``spotline.analyzers``::

    # pyproject.toml of your package
    [project.entry-points."spotline.analyzers"]
    my_model = "my_package.analyzer:MyModel"

Every worker in an environment where that distribution is installed runs it. The worker loads
it once per analysis child (``load()``: the place for a model's weights) and calls ``analyze``
for each job, in that child, under a memory guard and a runtime limit. How a job ends is the
exception it raises:

- ``PermanentError``: retrying cannot help; the job is dead-lettered at once.
- ``InvalidInput``: the input is unusable (``INVALID_INPUT``, dead-lettered at once).
- ``RetryableError`` (or any other exception): retried with backoff, up to the stack's limit.
- ``Interrupted``: it checkpointed because ``ctx.should_stop()`` said so; it resumes elsewhere.
- ``MemoryError`` or a GPU out-of-memory error: ``OOM``.

Each analyzer declares its contract beside its code in a class attribute ``spec``
(``AnalyzerSpec``): JSON Schemas for ``input`` and ``params`` and its limits. The worker and the
API (through the catalog built from the worker image) validate every job against it.

Testing an analyzer through the real analysis child, without AWS: ``spotline.sdk.testing``.
This module imports only the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "ENTRY_POINT_GROUP",
    "AnalysisContext",
    "Analyzer",
    "AnalyzerLimits",
    "AnalyzerSpec",
    "Interrupted",
    "InvalidInput",
    "Job",
    "PermanentError",
    "RetryableError",
]

# The entry-point group that makes an installed distribution's analyzers known to a worker.
ENTRY_POINT_GROUP = "spotline.analyzers"


class PermanentError(Exception):
    """The job can never succeed: dead-letter it at once (``ANALYZER_ERROR``, permanent)."""


class InvalidInput(PermanentError):
    """The job's input is unusable (``INVALID_INPUT``): dead-letter it at once."""


class RetryableError(Exception):
    """A transient failure (a flaky download, a busy device): retry with backoff."""


class Interrupted(Exception):
    """Raise after ``ctx.should_stop()`` turned true and the state is checkpointed: the job
    resumes from that checkpoint on another attempt, and is not charged a failure."""


@dataclass(frozen=True)
class Job:
    """One job as the analyzer sees it."""

    job_id: str
    analyzer: str
    input: Any  # the request's inline ``input``, or the bytes/JSON of its ``input_uri`` object
    params: dict[str, Any] = field(default_factory=dict)
    attempt: int = 1  # 1 on the first attempt; an interruption does not count as one
    interruptions: int = 0  # how many times this job was stopped by a preemption so far


class AnalysisContext(Protocol):
    """What an analyzer may ask of the worker while it runs."""

    def should_stop(self) -> bool:
        """True once the worker wants the job to checkpoint and stop (preemption, shutdown).
        Poll it between steps; after it turns true, ``checkpoint`` and raise ``Interrupted``
        within the stack's checkpoint grace (default 20 s) or the child is killed."""
        ...

    def checkpoint(self, state: Any) -> None:
        """Persist ``state`` (bytes, or anything JSON can encode) so a later attempt of this
        job can resume from it with ``restore()``. Raises TypeError/ValueError at once, in your
        frame, for a state that is neither."""
        ...

    def restore(self) -> Any | None:
        """The last checkpoint of this job (from any earlier attempt), or None."""
        ...

    def progress(self, **fields: Any) -> None:
        """Report progress (e.g. ``step=3, of=10``): the latest fields show in the worker's
        health (at most 20 scalars, strings cut at 200 characters). Never required."""
        ...

    def put_artifact(
        self, name: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> str:
        """Store a binary output (e.g. ``embeddings.npy``) beside the job's JSON result, at
        ``results/{job_id}/{name}``, and return its ``s3://`` URI for the result to cite.
        The URI is durable once returned."""
        ...


@runtime_checkable
class Analyzer(Protocol):
    """An analyzer: constructed cheaply by its entry point's factory, then ``load()`` once."""

    def load(self) -> None:
        """Load what every job needs (a model's weights): once per analysis child."""
        ...

    def analyze(self, job: Job, ctx: AnalysisContext) -> Any:
        """Analyze one job; return anything JSON can encode (the job's result)."""
        ...


@dataclass(frozen=True)
class AnalyzerLimits:
    """What an analyzer needs and tolerates. ``None`` means the stack's own limit applies."""

    max_input_bytes: int | None = None  # largest input (inline JSON or input_uri object)
    default_runtime_s: int | None = None  # an attempt's limit when the request names none
    max_runtime_s: int | None = None  # the most a request may ask for (never above the stack)
    checkpoints: bool = False  # it resumes from ``ctx.restore()`` after an interruption
    memory_mib: int | None = None  # memory one job needs (the job memory limit must allow it)

    def to_json(self) -> dict[str, Any]:
        return {
            "max_input_bytes": self.max_input_bytes,
            "default_runtime_s": self.default_runtime_s,
            "max_runtime_s": self.max_runtime_s,
            "checkpoints": self.checkpoints,
            "memory_mib": self.memory_mib,
        }


# Accepts anything: an analyzer that declares no schema takes any input and a params object.
ANY_SCHEMA: dict[str, Any] = {}
ANY_PARAMS_SCHEMA: dict[str, Any] = {"type": "object"}


@dataclass(frozen=True)
class AnalyzerSpec:
    """An analyzer's declared contract, read by the worker and published in the catalog.

    ``input_schema`` and ``params_schema`` are JSON Schemas (draft 2020-12) for the request's
    inline ``input`` and its ``params``, checked by the API and by the worker. An input that
    comes by ``input_uri`` reaches ``analyze`` as read (JSON decoded, else bytes): check it
    there and raise ``InvalidInput``.
    """

    input_schema: dict[str, Any] = field(default_factory=lambda: dict(ANY_SCHEMA))
    params_schema: dict[str, Any] = field(default_factory=lambda: dict(ANY_PARAMS_SCHEMA))
    limits: AnalyzerLimits = field(default_factory=AnalyzerLimits)
    description: str = ""
    # An analyzer that exists to break things (spotline-drills): a stack accepts it only with
    # EnableDrillAnalyzers.
    drill: bool = False
