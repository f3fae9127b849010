"""WORKER_PRELOAD: a model loads when its analysis child starts, never on a job's clock.

Loaded on first use, a model's load counts against the first job's ``max_runtime_s`` after
every child (re)start: a cold GPU worker could time out, and count an attempt against, a job
that would have run in milliseconds. Preloaded, the child says ready only once the model is
in; the supervisor keeps a waiting job's message visible meanwhile; and a load that fails or
hangs only costs the preload, never the worker.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator

import psutil
import pytest

from gpu_worker.analyzers import Job
from gpu_worker.child_process import ChildStartError
from gpu_worker.config import WorkerConfig
from gpu_worker.supervisor import Supervisor
from spotline.contract import ErrorKind
from spotline.settings import MissingSetting
from spotline_drills import LOAD_KILLED_ENV, LOAD_SECONDS_ENV

LOAD_S = 1.0


@pytest.fixture(autouse=True)
def slow_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LOAD_SECONDS_ENV, str(LOAD_S))  # the spawned child inherits it


@pytest.fixture
def supervisors() -> Iterator[list[Supervisor]]:
    made: list[Supervisor] = []
    try:
        yield made
    finally:
        for supervisor in made:
            supervisor.close()


def start(made: list[Supervisor], **kwargs: object) -> Supervisor:
    supervisor = Supervisor(on_checkpoint=lambda job_id, state: None, tick_s=0.05, **kwargs)  # type: ignore[arg-type]
    made.append(supervisor)
    return supervisor


def job(analyzer: str = "slow_load") -> Job:
    return Job(job_id="job-1", analyzer=analyzer, input={"n": 1}, params={})


def test_preloaded_model_is_loaded_before_ready_and_not_on_the_jobs_clock(
    supervisors: list[Supervisor],
) -> None:
    supervisor = start(supervisors, preload=("slow_load",))
    ticks: list[float] = []
    started = time.monotonic()
    supervisor.ensure_child(on_tick=lambda: ticks.append(time.monotonic()))
    assert time.monotonic() - started >= LOAD_S
    assert supervisor.preloaded == ("slow_load",)
    assert ticks, "a job waiting for a starting child keeps its heartbeat"
    # A job far shorter than the load: it runs on the loaded model, within its limit.
    outcome = supervisor.run(job(), None, max_runtime_s=LOAD_S / 2, on_tick=lambda: None)
    assert outcome.succeeded, outcome.error
    assert outcome.duration_s < LOAD_S / 2
    assert json.loads(outcome.output_json or "{}")["loaded_in_s"] >= LOAD_S


def test_without_preload_the_first_job_pays_the_load_and_times_out(
    supervisors: list[Supervisor],
) -> None:
    supervisor = start(supervisors)
    supervisor.ensure_child()
    assert supervisor.preloaded == ()
    outcome = supervisor.run(job(), None, max_runtime_s=LOAD_S / 2, on_tick=lambda: None)
    assert outcome.error is not None and outcome.error.kind == ErrorKind.TIMEOUT


def test_a_restarted_child_preloads_again_while_the_job_keeps_its_heartbeat(
    supervisors: list[Supervisor],
) -> None:
    supervisor = start(supervisors, preload=("slow_load",))
    supervisor.ensure_child()
    supervisor.kill_child()  # as after an OOM: the next job finds no child
    ticks: list[float] = []
    outcome = supervisor.run(
        job(), None, max_runtime_s=LOAD_S / 2, on_tick=lambda: ticks.append(time.monotonic())
    )
    assert outcome.succeeded, outcome.error
    assert ticks and ticks[-1] - ticks[0] >= LOAD_S * 0.8, "ticks ran through the reload"
    assert supervisor.restarts == 1 and supervisor.preloaded == ("slow_load",)


def test_a_preload_that_fails_is_reported_and_the_child_still_serves(
    supervisors: list[Supervisor],
) -> None:
    supervisor = start(supervisors, preload=("no_such_analyzer", "echo"))
    supervisor.ensure_child()
    assert supervisor.preloaded == ("echo",)
    outcome = supervisor.run(job("echo"), None, max_runtime_s=5, on_tick=lambda: None)
    assert outcome.succeeded, outcome.error


def test_a_preload_that_hangs_falls_back_to_loading_on_first_use(
    supervisors: list[Supervisor], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(LOAD_SECONDS_ENV, "60")
    supervisor = start(supervisors, preload=("slow_load",), preload_timeout_s=LOAD_S)
    started = time.monotonic()
    supervisor.ensure_child()
    assert time.monotonic() - started < LOAD_S + 10, "the hung load was given up"
    assert supervisor.preload == () and supervisor.preloaded == ()
    assert supervisor.child_pid is not None
    outcome = supervisor.run(job("echo"), None, max_runtime_s=5, on_tick=lambda: None)
    assert outcome.succeeded, outcome.error
    supervisor.kill_child()
    supervisor.ensure_child()  # later restarts no longer try the preload
    assert supervisor.preloaded == ()


def test_a_preload_that_kills_the_child_falls_back_instead_of_looping(
    supervisors: list[Supervisor], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(LOAD_KILLED_ENV, "1")  # a model too big for the container: OOM-killed
    supervisor = start(supervisors, preload=("slow_load",))
    started = time.monotonic()
    supervisor.ensure_child()
    assert time.monotonic() - started < 10, "the dead child was noticed, not waited out"
    assert supervisor.preload == () and supervisor.child_pid is not None
    outcome = supervisor.run(job("echo"), None, max_runtime_s=5, on_tick=lambda: None)
    assert outcome.succeeded, outcome.error


def test_a_stop_request_cuts_a_preload_short(
    supervisors: list[Supervisor], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(LOAD_SECONDS_ENV, "60")
    supervisor = start(supervisors, preload=("slow_load",))
    timer = threading.Timer(0.5, supervisor.request_stop)
    timer.start()
    started = time.monotonic()
    try:
        supervisor.ensure_child()
    finally:
        timer.cancel()
    assert time.monotonic() - started < 10, "a spot notice does not wait for the model"
    assert supervisor.child_pid is not None and supervisor.preloaded == ()


def test_preload_setting_is_a_list_of_analyzer_names(worker_settings: pytest.MonkeyPatch) -> None:
    monkeypatch = worker_settings
    assert WorkerConfig.from_env().preload_names == ()
    monkeypatch.setenv("WORKER_PRELOAD", " text_embed, slow_load ,")
    assert WorkerConfig.from_env().preload_names == ("text_embed", "slow_load")
    monkeypatch.setenv("WORKER_PRELOAD", "text_embed;rm -rf /")
    with pytest.raises(MissingSetting, match="WORKER_PRELOAD"):
        WorkerConfig.from_env()
    monkeypatch.setenv("WORKER_PRELOAD", "echo")
    monkeypatch.setenv("WORKER_PRELOAD_TIMEOUT_S", "0")
    with pytest.raises(MissingSetting, match="WORKER_PRELOAD_TIMEOUT_S"):
        WorkerConfig.from_env()


def test_a_child_stopped_while_it_starts_is_given_up_at_once_not_after_the_timeout(
    supervisors: list[Supervisor],
) -> None:
    # Found by the chaos drill: a SIGSTOPped starting child held the job's handling for the
    # whole start timeout (120 s). A stopped child will never say ready.
    supervisor = start(supervisors, start_timeout_s=60)

    def stop_the_starting_child() -> None:
        for process in psutil.Process().children():
            if "spawn_main" in " ".join(process.cmdline()):
                process.send_signal(signal.SIGSTOP)

    started = time.monotonic()
    with pytest.raises(ChildStartError, match="stopped while starting"):
        supervisor.ensure_child(on_tick=stop_the_starting_child)
    assert time.monotonic() - started < 15
