"""Analyzers in the worker: the SDK's protocol (``spotline.sdk``) and the registry by name.

An analyzer runs inside the analysis child process. It is loaded once per child (so a model is
loaded once, not per job) and then called for each job. Which analyzers exist is whatever the
installed distributions declare in the ``spotline.analyzers`` entry-point group
(gpu_worker/registry.py); the built-ins here (``echo``, ``sleep``, ``text_embed``) register the
same way, in spotline's ``pyproject.toml``. Analyzer authors import ``spotline.sdk`` only; the
names below are re-exported for the worker's own modules.
"""

from __future__ import annotations

from gpu_worker.registry import AnalyzerNotInstalled, UnknownAnalyzer, create, usable_names
from spotline.sdk import (
    AnalysisContext,
    Analyzer,
    AnalyzerLimits,
    AnalyzerSpec,
    Interrupted,
    InvalidInput,
    Job,
    PermanentError,
    RetryableError,
)

__all__ = [
    "AnalysisContext",
    "Analyzer",
    "AnalyzerLimits",
    "AnalyzerNotInstalled",
    "AnalyzerSpec",
    "Interrupted",
    "InvalidInput",
    "Job",
    "PermanentError",
    "RetryableError",
    "UnknownAnalyzer",
    "create",
    "registered_names",
]


def registered_names() -> list[str]:
    """The analyzers this worker can run now (installed, with their requirements)."""
    return usable_names()
