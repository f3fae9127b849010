"""The chaos drill's live bar and its timeline plot (devstack/chaos_timeline.py)."""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

import pytest
from rich.console import Console

from devstack import chaos, chaos_timeline, plotting
from devstack.chaos_timeline import ChaosProgress, Tick, Timeline, tick_from_table

TABLE = {
    "a": {"status": "SUCCEEDED", "worker": "worker-1"},
    "b": {"status": "DEAD_LETTERED", "worker": "worker-2"},
    "c": {"status": "RUNNING", "worker": "worker-1"},
    "d": {"status": "QUEUED"},
    "other": {"status": "SUCCEEDED", "worker": "worker-1"},  # not this drill's job
}


def tick(t_s: float, faults: dict[str, int], by_worker: dict[str, int]) -> Tick:
    return Tick(t_s, 4, sum(by_worker.values()), faults, by_worker)


def test_a_tick_counts_the_drills_settled_jobs_per_worker() -> None:
    result = tick_from_table(3.5, TABLE, {"a", "b", "c", "d"}, Counter(sigkill=2, restart=1))
    assert (result.t_s, result.jobs, result.settled) == (3.5, 4, 2)
    assert result.settled_by_worker == {"worker-1": 1, "worker-2": 1}
    assert result.fault_count == 2  # a restart brings a worker back: no fault


def test_the_timeline_marks_each_fault_at_the_tick_that_first_counted_it() -> None:
    timeline = Timeline()
    timeline(tick(1.0, {}, {}))
    timeline(tick(2.0, {"sigkill": 1, "restart": 1}, {"worker-1": 1}))
    timeline(tick(3.0, {"sigkill": 2, "spot_notice": 1, "restart": 1}, {"worker-1": 1, "w2": 2}))
    assert timeline.fault_marks() == [(2.0, "sigkill"), (3.0, "sigkill"), (3.0, "spot_notice")]
    assert timeline.series() == {
        "w2": ([1.0, 2.0, 3.0], [0, 0, 2]),
        "worker-1": ([1.0, 2.0, 3.0], [0, 1, 1]),
    }


class FakePyplot:
    """Records what plot() draws, so the plot is tested without matplotlib."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.saved: list[str] = []

    def subplots(self, figsize: tuple[int, float]) -> tuple[FakePyplot, FakePyplot]:
        return self, self

    def step(self, x: list[float], y: list[int], where: str, label: str, color: str) -> None:
        self.calls.append(("step", (label, x, y, color)))

    def axvline(
        self, x: float, color: str, linestyle: str, linewidth: float, label: str | None
    ) -> None:
        self.calls.append(("axvline", (x, color, label)))

    def savefig(self, path: str, dpi: int) -> None:
        self.saved.append(path)

    def __getattr__(self, name: str) -> Any:  # labels, title, legend, layout, close
        return lambda *args, **kwargs: self.calls.append((name, args))


def test_plot_draws_jobs_per_worker_and_marks_each_fault(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakePyplot()
    monkeypatch.setattr(plotting, "pyplot", lambda: fake)
    timeline = Timeline()
    timeline(tick(1.0, {}, {"worker-1": 1}))
    timeline(tick(2.0, {"sigkill": 2}, {"worker-1": 1, "worker-2": 1}))
    timeline(tick(3.0, {"sigkill": 2, "rebalance": 1}, {"worker-1": 2, "worker-2": 1}))
    chaos_timeline.plot(timeline, "out.png", title="drill")
    steps = [args for name, args in fake.calls if name == "step"]
    assert steps == [
        ("worker-1", [1.0, 2.0, 3.0], [1, 1, 2], "C0"),
        ("worker-2", [1.0, 2.0, 3.0], [0, 1, 1], "C1"),
    ]
    # A dashed line per fault, one colour per kind after the workers', one legend entry per kind.
    faults = [args for name, args in fake.calls if name == "axvline"]
    assert faults == [
        (2.0, "C3", "fault: sigkill"),
        (2.0, "C3", None),
        (3.0, "C2", "fault: rebalance"),
    ]
    assert ("set_title", ("drill",)) in fake.calls
    assert fake.saved == ["out.png"]


def test_the_bar_shows_jobs_settled_and_faults_and_the_log_above_it() -> None:
    console = Console(record=True, width=120, force_terminal=False)
    with ChaosProgress(console) as progress:
        progress.log("  t+  2.0s  sigkill     worker-1")
        progress(Tick(2.0, 40, 7, {"sigkill": 2, "restart": 1, "spot_notice": 1}, {}))
    text = console.export_text()
    assert "t+  2.0s  sigkill     worker-1" in text
    assert "7/40" in text and "jobs settled, 3 faults so far" in text


def test_a_plot_without_matplotlib_stops_before_the_drill(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)

    def no_drill(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the drill must not start")

    monkeypatch.setattr(chaos, "Chaos", no_drill)
    with pytest.raises(SystemExit) as stopped:
        chaos.run(chaos.ChaosConfig(seed=1), plot_path="t.png")
    assert "make bench" in str(stopped.value.code)
