"""Fixtures the interruption-source tests share: the IMDS mock, a raw request to it, and a
logger that records what every module of ``gpu_worker.interruption`` logs."""

from __future__ import annotations

import importlib
import pkgutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

import gpu_worker.interruption
from devstack.imds import ImdsMock


class RecordingLogger:
    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def _record(self, level: str, message: str, **kwargs: Any) -> None:
        self.records.append((level, message, dict(kwargs.get("extra") or {})))

    def info(self, message: str, **kwargs: Any) -> None:
        self._record("info", message, **kwargs)

    def warning(self, message: str, **kwargs: Any) -> None:
        self._record("warning", message, **kwargs)

    def exception(self, message: str, **kwargs: Any) -> None:
        self._record("exception", message, **kwargs)

    def messages(self, level: str | None = None) -> list[str]:
        return [m for lvl, m, _ in self.records if level is None or lvl == level]


@pytest.fixture
def log(monkeypatch: pytest.MonkeyPatch) -> RecordingLogger:
    """Every module of the package logs into one recorder (each has its own ``logger``)."""
    recorder = RecordingLogger()
    package = gpu_worker.interruption
    for module in pkgutil.iter_modules(package.__path__, f"{package.__name__}."):
        loaded = importlib.import_module(module.name)
        if hasattr(loaded, "logger"):
            monkeypatch.setattr(loaded, "logger", recorder)
    return recorder


@pytest.fixture
def imds() -> Iterator[ImdsMock]:
    with ImdsMock() as mock:
        yield mock


def raw(mock: ImdsMock, path: str, *, method: str = "GET", headers: dict[str, str] | None = None):
    request = urllib.request.Request(f"{mock.url}{path}", method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
