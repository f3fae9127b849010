"""An analyzer that ignores ctx.should_stop() is killed after the grace, as an interruption."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from gpu_worker.analyzers import Job
from gpu_worker.supervisor import Supervisor
from spotline.contract import ErrorKind


@pytest.fixture
def saved() -> list[Any]:
    return []


@pytest.fixture
def supervisor(saved: list[Any]) -> Iterator[Supervisor]:
    supervisor = Supervisor(on_checkpoint=lambda job_id, state: saved.append(state), tick_s=0.05)
    try:
        yield supervisor
    finally:
        supervisor.close()


def sleep_job(**params: Any) -> Job:
    return Job(job_id="job-1", analyzer="sleep", input=None, params=params)


def test_deaf_analyzer_is_killed_after_the_grace_and_reported_interrupted(
    supervisor: Supervisor, saved: list[Any]
) -> None:
    job = sleep_job(seconds=30, step_s=0.05, checkpoint_every_s=0.1, ignore_stop=True)
    supervisor.ensure_child()
    supervisor.request_stop(grace_s=0.6)
    started = time.monotonic()
    outcome = supervisor.run(job, None, max_runtime_s=None, on_tick=lambda: None)
    assert outcome.error is not None and outcome.error.kind == ErrorKind.INTERRUPTED
    assert "grace" in outcome.error.message
    assert 0.5 <= time.monotonic() - started < 5
    assert saved, "its periodic checkpoints were kept for the next holder"
    assert supervisor.child_pid is None and supervisor.restarts == 1


def test_cooperative_analyzer_checkpoints_inside_the_grace(
    supervisor: Supervisor, saved: list[Any]
) -> None:
    job = sleep_job(seconds=30, step_s=0.05)
    supervisor.ensure_child()
    supervisor.request_stop(grace_s=10)
    outcome = supervisor.run(
        job, {"steps_done": 4, "ran": [0, 1, 2, 3]}, max_runtime_s=None, on_tick=lambda: None
    )
    assert outcome.error is not None and outcome.error.kind == ErrorKind.INTERRUPTED
    assert "stopped at step 4" in outcome.error.message
    assert saved == [{"steps_done": 4, "ran": [0, 1, 2, 3]}]
    assert supervisor.restarts == 0, "a cooperative child is not killed"
