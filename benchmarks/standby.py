"""Failure F4, simulated: a month of spot interruptions under three strategies.

(a) capacity rebalancing alone: the replacement is launched after the spot worker is gone and
    serves only after its boot (the seed's 3+ minutes with no server, several times a week);
(b) spotline: the stopped on-demand standby is started on the 2-minute warning and stopped a
    cooldown after the replacement serves (and only once idle);
(c) on-demand only: the same number of workers, never interrupted, at the on-demand price.

A discrete-event simulation with common random numbers: the three strategies see the same job
arrivals, the same job sizes and (a, b) the same interruption times. Jobs are FIFO; a warned
worker takes no new job; a job still running when its worker is reclaimed goes back to the head
of the queue with its remaining work (it checkpointed).

    .venv/bin/python benchmarks/standby.py [--interruptions-per-day 1] [--plot week.png]

Prints a table, and as the last line one JSON object (ratios under keys containing "ratio").
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import itertools
import json
import random
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devstack.plotting import pyplot

MINUTES_PER_DAY = 24 * 60
NOTICE_MIN = 2.0  # a spot warning comes two minutes before the instance is reclaimed
NEAR_MIN = 15.0  # jobs arriving this long after a warning are the ones an outage hurts


@dataclass(frozen=True)
class Params:
    days: float = 30.0
    workers: int = 1
    interruptions_per_day: float = 1.0  # per spot worker; the seed saw about one a day
    arrivals_per_hour: float = 12.0
    job_minutes: float = 2.0  # mean, exponential
    boot_minutes: float = 4.0  # fresh spot launch: capacity + boot + image pull + model load
    standby_start_minutes: float = 1.5  # start a stopped instance: image and model on its disk
    cooldown_minutes: float = 10.0
    on_demand_hourly: float = 0.526  # g4dn.xlarge, us-east-1
    spot_price_ratio: float = 0.35
    standby_disk_monthly: float = 8.0  # 100 GB gp3 kept while the standby is stopped
    seed: int = 7


# What each of Params' fields means, for --help.
PARAM_HELP = {
    "days": "simulated days",
    "workers": "spot workers in the fleet",
    "interruptions_per_day": "spot interruptions per worker and day",
    "arrivals_per_hour": "jobs arriving per hour",
    "job_minutes": "mean job length in minutes (exponential)",
    "boot_minutes": "minutes until a fresh spot replacement serves",
    "standby_start_minutes": "minutes until the stopped standby serves",
    "cooldown_minutes": "minutes the standby stays after the replacement serves",
    "on_demand_hourly": "on-demand price per hour, USD",
    "spot_price_ratio": "spot price as a fraction of on-demand",
    "standby_disk_monthly": "the stopped standby's disk per month, USD",
    "seed": "random seed (the same arrivals and interruptions for every strategy)",
}


@dataclass
class Worker:
    name: str
    kind: str  # spot | standby | on-demand
    up_since: float
    accepting: bool = True
    job: Job | None = None
    job_started: float = 0.0
    gone: bool = False
    stopping: bool = False


@dataclass
class Job:
    arrived: float
    work: float  # minutes of work left
    started: bool = False


@dataclass
class Result:
    strategy: str
    jobs_done: int = 0
    waits: list[float] = field(default_factory=list)
    waits_near_interruptions: list[float] = field(default_factory=list)
    no_worker_minutes: float = 0.0
    spot_hours: float = 0.0
    on_demand_hours: float = 0.0
    standby_starts: int = 0
    interruptions: int = 0
    warning_times: list[float] = field(default_factory=list)
    cost: float = 0.0
    # Per-minute samples for the plot: (minute, workers taking jobs, standby taking jobs,
    # age of the oldest queued job).
    timeline: list[tuple[float, int, int, float]] = field(default_factory=list)

    def p(self, q: float, *, near: bool = False) -> float:
        waits = self.waits_near_interruptions if near else self.waits
        if not waits:
            return 0.0
        ordered = sorted(waits)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Simulation:
    def __init__(self, strategy: str, params: Params, trace: dict[str, Any]) -> None:
        self.strategy = strategy
        self.p = params
        self.trace = trace
        self.now = 0.0
        self.events: list[tuple[float, int, str, Any]] = []
        self.order = itertools.count()
        self.queue: deque[Job] = deque()
        self.workers: list[Worker] = []
        self.result = Result(strategy)
        self.standby: Worker | None = None
        self.stop_at: float | None = None
        self._uptime_mark = 0.0
        self._names = itertools.count(1)

    # -- event plumbing ---------------------------------------------------------------------

    def at(self, time: float, kind: str, payload: Any = None) -> None:
        heapq.heappush(self.events, (time, next(self.order), kind, payload))

    def run(self) -> Result:
        end = self.p.days * MINUTES_PER_DAY
        kind = "on-demand" if self.strategy == "on-demand" else "spot"
        for _ in range(self.p.workers):
            self._add_worker(kind)
        for arrival, work in self.trace["jobs"]:
            self.at(arrival, "arrive", Job(arrival, work))
        if self.strategy != "on-demand":
            for slot, times in enumerate(self.trace["interruptions"]):
                for time in times:
                    self.at(time, "warning", slot)
        for minute in range(int(end) + 1):
            self.at(float(minute), "sample")
        while self.events and self.events[0][0] <= end:
            time, _, kind, payload = heapq.heappop(self.events)
            self._account(time)
            self.now = time
            getattr(self, f"_on_{kind.replace('-', '_')}")(payload)
            self._dispatch()
        self._account(end)
        self._price()
        return self.result

    def _account(self, until: float) -> None:
        span = until - self._uptime_mark
        if span <= 0:
            return
        up = [w for w in self.workers if not w.gone]
        self.result.spot_hours += span / 60 * sum(w.kind == "spot" for w in up)
        self.result.on_demand_hours += span / 60 * sum(w.kind != "spot" for w in up)
        if not any(w.accepting for w in up):
            self.result.no_worker_minutes += span
        self._uptime_mark = until

    def _price(self) -> None:
        p = self.p
        spot = self.result.spot_hours * p.on_demand_hourly * p.spot_price_ratio
        on_demand = self.result.on_demand_hours * p.on_demand_hourly
        disk = p.standby_disk_monthly * p.days / 30 if self.strategy == "standby" else 0.0
        self.result.cost = spot + on_demand + disk

    # -- workers ----------------------------------------------------------------------------

    def _add_worker(self, kind: str) -> Worker:
        worker = Worker(f"{kind}-{next(self._names)}", kind, self.now)
        self.workers.append(worker)
        return worker

    def _dispatch(self) -> None:
        for worker in self.workers:
            if worker.gone or not worker.accepting or worker.job is not None:
                continue
            if not self.queue:
                break
            job = self.queue.popleft()
            worker.job, worker.job_started = job, self.now
            if not job.started:  # the wait is the queue age when the job first starts
                self.result.waits.append(self.now - job.arrived)
                if self._near_interruption(job.arrived):
                    self.result.waits_near_interruptions.append(self.now - job.arrived)
                job.started = True
            self.at(self.now + job.work, "done", (worker, job))

    def _near_interruption(self, arrived: float) -> bool:
        """Arrived within NEAR_MIN after a warning (the same windows for every strategy)."""
        index = bisect.bisect_right(self.trace["warnings"], arrived) - 1
        return index >= 0 and arrived - self.trace["warnings"][index] <= NEAR_MIN

    def _on_arrive(self, job: Job) -> None:
        self.queue.append(job)

    def _on_done(self, payload: tuple[Worker, Job]) -> None:
        worker, job = payload
        if worker.job is not job or worker.gone:
            return  # the job was preempted and re-queued
        worker.job = None
        self.result.jobs_done += 1
        if worker.stopping:
            self._stop_standby_now()

    def _on_warning(self, slot: int) -> None:
        spot = [w for w in self.workers if w.kind == "spot" and not w.gone and w.accepting]
        if not spot:
            return  # this slot's worker is not up (still booting): the notice hits nothing
        worker = spot[slot % len(spot)]
        worker.accepting = False
        self.result.interruptions += 1
        self.result.warning_times.append(self.now)
        self.at(self.now + NOTICE_MIN, "reclaim", worker)
        if self.strategy == "standby":
            self.stop_at = None  # an interruption cancels any pending stop
            if self.standby is None:
                self.result.standby_starts += 1
                self.standby = self._add_worker("standby")
                self.standby.accepting = False
                self.at(self.now + self.p.standby_start_minutes, "standby-ready", self.standby)
            elif self.standby.stopping:
                self.standby.stopping = self.standby.accepting = False
                self.standby.accepting = True

    def _on_reclaim(self, worker: Worker) -> None:
        worker.gone = True
        if worker.job is not None:
            elapsed = self.now - worker.job_started
            worker.job.work = max(0.0, worker.job.work - elapsed)
            self.queue.appendleft(worker.job)
            worker.job = None
        # Capacity rebalancing launches the replacement once the instance is gone.
        self.at(self.now + self.p.boot_minutes, "replacement-ready")

    def _on_replacement_ready(self, _: Any) -> None:
        self._add_worker("spot")
        if self.strategy == "standby" and self.standby is not None:
            self.stop_at = self.now + self.p.cooldown_minutes
            self.at(self.stop_at, "stop-standby", self.stop_at)

    def _on_standby_ready(self, standby: Worker) -> None:
        standby.accepting = True
        standby.up_since = self.now

    def _on_stop_standby(self, scheduled: float) -> None:
        if self.standby is None or self.stop_at != scheduled:
            return  # replaced by a later schedule, or cancelled by an interruption
        healthy = [w for w in self.workers if w.kind == "spot" and not w.gone and w.accepting]
        if len(healthy) < self.p.workers:
            self.stop_at = self.now + self.p.cooldown_minutes
            self.at(self.stop_at, "stop-standby", self.stop_at)
            return
        if self.standby.job is not None:
            self.standby.stopping = True  # idle check: stop when its job is done
            self.standby.accepting = False
            return
        self._stop_standby_now()

    def _stop_standby_now(self) -> None:
        if self.standby is not None:
            self.standby.gone = True
            self.standby = None
            self.stop_at = None

    def _on_sample(self, _: Any) -> None:
        serving = [w for w in self.workers if not w.gone and w.accepting]
        spot_up = sum(1 for w in serving if w.kind != "standby")
        standby_up = sum(1 for w in serving if w.kind == "standby")
        oldest = self.now - self.queue[0].arrived if self.queue else 0.0
        self.result.timeline.append((self.now, spot_up, standby_up, oldest))


def make_trace(params: Params) -> dict[str, Any]:
    rng = random.Random(params.seed)
    end = params.days * MINUTES_PER_DAY
    jobs, time = [], 0.0
    rate = params.arrivals_per_hour / 60
    while True:
        time += rng.expovariate(rate)
        if time >= end:
            break
        jobs.append((time, rng.expovariate(1 / params.job_minutes)))
    interruptions = []
    for _ in range(params.workers):
        times, time = [], 0.0
        while params.interruptions_per_day > 0:
            time += rng.expovariate(params.interruptions_per_day / MINUTES_PER_DAY)
            if time >= end:
                break
            times.append(time)
        interruptions.append(times)
    warnings = sorted(t for times in interruptions for t in times)
    return {"jobs": jobs, "interruptions": interruptions, "warnings": warnings}


STRATEGIES = {
    "rebalance": "(a) capacity rebalancing alone",
    "standby": "(b) standby on the warning",
    "on-demand": "(c) on-demand only",
}


def plot(results: dict[str, Result], path: str, days: float = 7.0) -> None:
    plt = pyplot()
    end = days * MINUTES_PER_DAY
    figure, axes = plt.subplots(len(results), 1, figsize=(14, 3.2 * len(results)), sharex=True)
    for axis, (name, result) in zip(axes, results.items(), strict=True):
        samples = [s for s in result.timeline if s[0] <= end]
        hours = [s[0] / 60 for s in samples]
        workers = [s[1] for s in samples]
        total = [s[1] + s[2] for s in samples]
        axis.fill_between(
            hours,
            workers,
            step="post",
            color="#3a87f2",
            alpha=0.35,
            lw=0,
            label="spot / on-demand workers taking jobs",
        )
        axis.fill_between(
            hours,
            workers,
            total,
            step="post",
            color="#f2a33a",
            lw=0,
            label="standby taking jobs",
        )
        gap_hours = [h for h, t in zip(hours, total, strict=True) if t == 0]
        axis.scatter(
            gap_hours,
            [0.08] * len(gap_hours),
            marker="|",
            s=400,
            color="black",
            lw=1.5,
            label="minute with no worker taking jobs",
        )
        if name != "on-demand":
            warned = [t / 60 for t in result.warning_times if t <= end]
            axis.scatter(
                warned,
                [2.25] * len(warned),
                marker="v",
                s=30,
                color="#6a1b9a",
                label="spot interruption warning",
            )
        axis.set_ylabel("instances")
        axis.set_ylim(0, 2.9)
        age_axis = axis.twinx()
        age_axis.plot(
            hours,
            [s[3] for s in samples],
            color="#d72b3f",
            lw=0.6,
            alpha=0.7,
            label="oldest queued job (min)",
        )
        age_axis.set_ylabel("oldest queued job (min)", color="#d72b3f")
        age_axis.set_ylim(0, max(10.0, max(s[3] for s in samples) * 1.15))
        axis.set_title(
            f"{STRATEGIES[name]}: {len(gap_hours)} min with no worker taking jobs this week; "
            f"month: p95 wait {result.p(0.95):.1f} min, "
            f"p95 wait after a warning {result.p(0.95, near=True):.1f} min, ${result.cost:,.0f}",
            loc="left",
            fontsize=10,
        )
        handles, labels = axis.get_legend_handles_labels()
        more_handles, more_labels = age_axis.get_legend_handles_labels()
        axis.legend(
            handles + more_handles, labels + more_labels, loc="upper left", fontsize=7, ncol=5
        )
    axes[-1].set_xlabel("hours")
    axes[-1].set_xlim(0, end / 60)
    for day in range(1, int(days)):
        for axis in axes:
            axis.axvline(day * 24, color="#999", lw=0.4)
    figure.suptitle("spotline standby: one simulated week", fontsize=12)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = Params()
    for name, value in vars(defaults).items():
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=type(value),
            default=value,
            help=f"{PARAM_HELP[name]} (default: %(default)s)",
        )
    parser.add_argument(
        "--plot", metavar="FILE.png", help="draw one simulated week (needs matplotlib: make bench)"
    )
    args = parser.parse_args(argv)
    params = Params(**{k: getattr(args, k) for k in vars(defaults)})
    trace = make_trace(params)
    results = {name: Simulation(name, params, trace).run() for name in STRATEGIES}

    print(
        f"{params.days:g} days, {params.workers} worker(s), "
        f"{params.interruptions_per_day:g} interruption(s)/day/worker, "
        f"{params.arrivals_per_hour:g} jobs/h of {params.job_minutes:g} min, "
        f"boot {params.boot_minutes:g} min, standby start {params.standby_start_minutes:g} min, "
        f"spot at {params.spot_price_ratio:.0%} of on-demand"
    )
    header = (
        f"{'strategy':34} {'interrupts':>10} {'no-worker min':>13} {'wait p50':>9} "
        f"{'wait p95':>9} {'near p95':>9} {'near max':>9} {'standby h':>9} {'cost $':>9}"
    )
    print(header)
    print("-" * len(header))
    print(
        "wait = queue age (min) when a job starts; near = jobs arriving <= 15 min after a warning"
    )
    for name, r in results.items():
        standby_hours = r.on_demand_hours if name == "standby" else 0.0
        print(
            f"{STRATEGIES[name]:34} {r.interruptions:10d} {r.no_worker_minutes:13.1f} "
            f"{r.p(0.5):9.2f} {r.p(0.95):9.2f} {r.p(0.95, near=True):9.2f} "
            f"{r.p(1.0, near=True):9.2f} {standby_hours:9.1f} "
            f"{r.cost:9.2f}"
        )
    a, b, c = results["rebalance"], results["standby"], results["on-demand"]
    figures = {
        "interruptions": b.interruptions,
        "no_worker_minutes_rebalance": round(a.no_worker_minutes, 1),
        "no_worker_minutes_standby": round(b.no_worker_minutes, 1),
        "no_worker_minutes_on_demand": round(c.no_worker_minutes, 1),
        "wait_p95_min_rebalance": round(a.p(0.95), 2),
        "wait_p95_min_standby": round(b.p(0.95), 2),
        "wait_p95_min_on_demand": round(c.p(0.95), 2),
        "near_interruption_wait_p95_min_rebalance": round(a.p(0.95, near=True), 2),
        "near_interruption_wait_p95_min_standby": round(b.p(0.95, near=True), 2),
        "near_interruption_wait_p95_min_on_demand": round(c.p(0.95, near=True), 2),
        "cost_rebalance": round(a.cost, 2),
        "cost_standby": round(b.cost, 2),
        "cost_on_demand": round(c.cost, 2),
        "standby_hours": round(b.on_demand_hours, 1),
        "no_worker_ratio_standby_vs_rebalance": round(b.no_worker_minutes / a.no_worker_minutes, 3)
        if a.no_worker_minutes
        else None,
        "wait_p95_ratio_standby_vs_rebalance": round(b.p(0.95) / a.p(0.95), 3)
        if a.p(0.95)
        else None,
        "near_interruption_wait_p95_ratio_standby_vs_rebalance": round(
            b.p(0.95, near=True) / a.p(0.95, near=True), 3
        )
        if a.p(0.95, near=True)
        else None,
        "cost_ratio_standby_vs_rebalance": round(b.cost / a.cost, 3),
        "cost_ratio_standby_vs_on_demand": round(b.cost / c.cost, 3),
    }
    if args.plot:
        plot(results, args.plot)
        print(f"plot: {args.plot}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
