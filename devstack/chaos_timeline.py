"""What the chaos drill shows while it runs and draws after: a live progress bar (jobs settled,
faults so far) and, with ``--plot``, a timeline of the jobs each worker settled with every fault
marked.

The drill hands a ``Tick`` to its watcher once a second (devstack/chaos.py, ``watch=``); the bar
and the timeline are two watchers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from devstack import plotting
from spotline.contract import JobStatus

SETTLED = (str(JobStatus.SUCCEEDED), str(JobStatus.DEAD_LETTERED))
NOT_A_FAULT = "restart"  # the drill brings a worker back: counted, but not a fault


@dataclass(frozen=True)
class Tick:
    """The drill at one moment: seconds since it began, jobs settled, faults injected so far."""

    t_s: float
    jobs: int
    settled: int
    faults: Mapping[str, int]  # by kind, restarts included
    settled_by_worker: Mapping[str, int]

    @property
    def fault_count(self) -> int:
        return sum(n for kind, n in self.faults.items() if kind != NOT_A_FAULT)


def tick_from_table(
    t_s: float, table: Mapping[str, Mapping[str, str]], planned: set[str], faults: Counter[str]
) -> Tick:
    """A tick from one scan of the job table (job_id -> status, worker) and the fault counts."""
    by_worker: Counter[str] = Counter()
    settled = 0
    for job_id in planned:
        row = table.get(job_id, {})
        if row.get("status") in SETTLED:
            settled += 1
            by_worker[row.get("worker") or "(none)"] += 1
    return Tick(t_s, len(planned), settled, dict(faults), dict(by_worker))


@dataclass
class Timeline:
    """Every tick, kept to draw the run afterwards."""

    ticks: list[Tick] = field(default_factory=list)

    def __call__(self, tick: Tick) -> None:
        self.ticks.append(tick)

    def fault_marks(self) -> list[tuple[float, str]]:
        """(seconds, kind) of each fault, at the first tick that counted it."""
        marks: list[tuple[float, str]] = []
        before: Mapping[str, int] = {}
        for tick in self.ticks:
            for kind, count in sorted(tick.faults.items()):
                if kind != NOT_A_FAULT:
                    marks += [(tick.t_s, kind)] * (count - before.get(kind, 0))
            before = tick.faults
        return marks

    def series(self) -> dict[str, tuple[list[float], list[int]]]:
        """worker -> (seconds, jobs it had settled by then), one point per tick."""
        workers = sorted({w for tick in self.ticks for w in tick.settled_by_worker})
        return {
            worker: (
                [tick.t_s for tick in self.ticks],
                [tick.settled_by_worker.get(worker, 0) for tick in self.ticks],
            )
            for worker in workers
        }


def plot(timeline: Timeline, path: str, *, title: str = "spotline chaos drill") -> None:
    """Jobs settled per worker over time, a dashed line at every fault (labelled by kind)."""
    plt = plotting.pyplot()
    figure, axis = plt.subplots(figsize=(11, 4.5))
    series = timeline.series()
    for index, (worker, (seconds, settled)) in enumerate(series.items()):
        axis.step(seconds, settled, where="post", label=worker, color=f"C{index % 10}")
    marks = timeline.fault_marks()
    # One colour per fault kind, after the workers' in matplotlib's cycle; one legend entry each.
    kinds = sorted({kind for _, kind in marks})
    colours = {kind: f"C{(len(series) + i) % 10}" for i, kind in enumerate(kinds)}
    labelled: set[str] = set()
    for seconds, kind in marks:
        label = None if kind in labelled else f"fault: {kind}"
        labelled.add(kind)
        axis.axvline(seconds, color=colours[kind], linestyle="--", linewidth=0.8, label=label)
    axis.set_xlabel("seconds since the drill began")
    axis.set_ylabel("jobs settled by the worker")
    axis.set_title(title)
    axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


class ChaosProgress:
    """A live bar: jobs settled of submitted, faults so far. Its ``log`` prints above the bar."""

    def __init__(self, console: Console | None = None) -> None:
        self.progress = Progress(
            TextColumn("[bold]chaos[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("jobs settled, {task.fields[faults]} faults so far"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task("jobs", total=None, faults=0)

    def __enter__(self) -> ChaosProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def log(self, line: str) -> None:
        self.progress.console.print(line, highlight=False, markup=False)

    def __call__(self, tick: Tick) -> None:
        self.progress.update(
            self.task, total=tick.jobs, completed=tick.settled, faults=tick.fault_count
        )
