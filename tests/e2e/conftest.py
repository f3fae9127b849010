"""End-to-end fixtures: one moto server per session, a fresh stack per test, real workers."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.motoserver import MotoServer
from devstack.stack import Devstack

_stack_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture
def devstack(moto_server: MotoServer, tmp_path: Path) -> Iterator[Devstack]:
    """A stack of its own (unique names) on the shared server; workers stopped afterwards."""
    dev = Devstack(server=moto_server, workdir=tmp_path)
    dev.start(stack_name=f"e2e{next(_stack_numbers)}")
    try:
        yield dev
    finally:
        dev.stop()


def log_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8", errors="replace").splitlines() if path.exists() else []
