"""Failure F4, simulated: a month of spot interruptions under five strategies.

(a) capacity rebalancing alone: the replacement is launched after the spot worker is gone and
    serves only after its boot (the seed's 3+ minutes with no server, several times a week);
(b) spotline before issue 19: the stopped on-demand standby is started on the 2-minute warning,
    the warned worker takes no new job, and the standby is stopped a cooldown after the
    replacement serves (and only once idle);
(b1) (b), and the warned worker works through the notice: it keeps taking the jobs whose limit
    ends before its cutoff (the deadline less the checkpoint grace and the exit reserve) and
    releases a running job that cannot end in time at once (gpu_worker/stop_policy.py);
(b2) (b1), and the standby starts on the rebalance recommendation, through which the worker
    keeps serving (WORKER_REBALANCE_ACTION=keep: the template's default, StandbyStartOnRebalance);
(c) on-demand only: the same number of workers, never interrupted, at the on-demand price.

A discrete-event simulation with common random numbers: every strategy sees the same job
arrivals, the same job sizes and limits and (a, b*) the same interruption and recommendation
times. Jobs are FIFO; in (a) and (b) a warned worker takes no new job and a job still running
when its worker is reclaimed goes back to the head of the queue with its remaining work (it
checkpointed).

No-worker minutes: the time an arriving job would find no worker that takes it. A full worker
takes every job; a worker working through a notice takes only the jobs whose limit still fits,
so it counts as the share of the month's jobs that would fit at that moment (1 - that share of
each minute is a no-worker minute); a warned or drained worker takes none.

What the model assumes (parameters): a job's limit (the analyzer's declared limit or the
request's max_runtime_s) is LIMIT_HEADROOM times its own work, and UNLIMITED_SHARE of jobs name
none (they run under the stack's cap of hours and never fit a notice). EC2 says a rebalance
recommendation "can arrive sooner than the two-minute notice" and sometimes only with it, and
publishes no share or lead time: REBALANCE_EARLY_SHARE of interruptions get one
REBALANCE_LEAD_MINUTES (exponential) ahead, the rest with the warning; FALSE_REBALANCES_PER_DAY
more are never followed by an interruption (the standby then runs a cooldown for nothing). The
run also sweeps the early share, which is what the goal hangs on.

    .venv/bin/python benchmarks/standby.py [--interruptions-per-day 1] [--plot week.png]

Prints a table, and as the last line one JSON object (ratios under keys containing "ratio").
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import heapq
import itertools
import json
import random
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Any

MINUTES_PER_DAY = 24 * 60
NOTICE_MIN = 2.0  # a spot warning comes two minutes before the instance is reclaimed
NEAR_MIN = 15.0  # jobs arriving this long after a warning are the ones an outage hurts
EXIT_RESERVE_MIN = 5.0 / 60  # gpu_worker.stop_policy.EXIT_RESERVE_S
INTEGRATION_STEP_MIN = 1.0 / 60  # a notice's shrinking window is integrated second by second
GOAL_RATIO = 0.10  # issue 19: no-worker minutes at most a tenth of rebalancing alone's


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
    checkpoint_grace_s: float = 20.0  # WORKER_CHECKPOINT_GRACE_S
    limit_headroom: float = 1.5  # a job's limit: this times its own work
    unlimited_share: float = 0.25  # jobs naming no limit: the stack's cap, never fit a notice
    rebalance_early_share: float = 0.5  # interruptions whose recommendation comes ahead
    rebalance_lead_minutes: float = 10.0  # mean lead of those (exponential)
    false_rebalances_per_day: float = 0.5  # per spot worker, never followed by an interruption
    seed: int = 7


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
    cutoff: float | None = None  # working through a notice: takes only jobs ending before it


@dataclass
class Job:
    arrived: float
    work: float  # minutes of work left
    started: bool = False
    limit: float | None = None  # minutes the attempt may run (None: the stack's cap, hours)


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
    recommendations: int = 0
    jobs_through_notices: int = 0  # jobs a warned worker took while working through
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
        self.work_through = strategy in ("notice", "early")
        self.start_on_rebalance = strategy == "early"
        self.standby_strategy = strategy in ("standby", "notice", "early")
        self.cutoff_min = NOTICE_MIN - params.checkpoint_grace_s / 60 - EXIT_RESERVE_MIN
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
        for arrival, work, limit in self.trace["jobs"]:
            self.at(arrival, "arrive", Job(arrival, work, limit=limit))
        if self.strategy != "on-demand":
            for slot, times in enumerate(self.trace["interruptions"]):
                for time in times:
                    self.at(time, "warning", slot)
        if self.start_on_rebalance:
            for slot, times in enumerate(self.trace["recommendations"]):
                for time in times:
                    self.at(time, "recommendation", slot)
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
        if not any(w.accepting and w.cutoff is None for w in up):
            cutoffs = [w.cutoff for w in up if w.accepting and w.cutoff is not None]
            self.result.no_worker_minutes += self._unserved(self._uptime_mark, until, cutoffs)
        self._uptime_mark = until

    def _unserved(self, start: float, end: float, cutoffs: list[float]) -> float:
        """Minutes of [start, end] an arriving job finds no taker, with only workers working
        through notices (their cutoffs) up: each takes the share of jobs that still fit."""
        if not cutoffs:
            return end - start
        unserved, moment = 0.0, start
        while moment < end:
            step = min(INTEGRATION_STEP_MIN, end - moment)
            middle = moment + step / 2
            unserved += step * (1.0 - max(self.fit_share(c - middle) for c in cutoffs))
            moment += step
        return unserved

    def fit_share(self, minutes_left: float) -> float:
        """The share of the month's jobs whose limit is at most ``minutes_left``."""
        if minutes_left <= 0:
            return 0.0
        limits = self.trace["limits_sorted"]
        return bisect.bisect_right(limits, minutes_left) / len(self.trace["jobs"])

    def _price(self) -> None:
        p = self.p
        spot = self.result.spot_hours * p.on_demand_hourly * p.spot_price_ratio
        on_demand = self.result.on_demand_hours * p.on_demand_hourly
        disk = p.standby_disk_monthly * p.days / 30 if self.standby_strategy else 0.0
        self.result.cost = spot + on_demand + disk

    # -- workers ----------------------------------------------------------------------------

    def _add_worker(self, kind: str) -> Worker:
        worker = Worker(f"{kind}-{next(self._names)}", kind, self.now)
        self.workers.append(worker)
        return worker

    def _take(self, worker: Worker) -> Job | None:
        """The next job for ``worker``: the queue's head, or under a notice the first that fits
        (the others are given back and wait for another worker)."""
        if worker.cutoff is None:
            return self.queue.popleft()
        for index, job in enumerate(self.queue):
            if job.limit is not None and self.now + job.limit <= worker.cutoff:
                del self.queue[index]
                self.result.jobs_through_notices += 1
                return job
        return None

    def _dispatch(self) -> None:
        for worker in self.workers:
            if worker.gone or not worker.accepting or worker.job is not None:
                continue
            if not self.queue:
                break
            job = self._take(worker)
            if job is None:
                continue
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

    def _healthy_spot(self) -> list[Worker]:
        return [
            w
            for w in self.workers
            if w.kind == "spot" and not w.gone and w.accepting and w.cutoff is None
        ]

    def _on_warning(self, slot: int) -> None:
        spot = self._healthy_spot()
        if not spot:
            return  # this slot's worker is not up (still booting): the notice hits nothing
        worker = spot[slot % len(spot)]
        self.result.interruptions += 1
        self.result.warning_times.append(self.now)
        self.at(self.now + NOTICE_MIN, "reclaim", worker)
        if self.work_through:
            self._work_through(worker)
        else:
            worker.accepting = False
        if self.standby_strategy:
            self._start_standby()

    def _work_through(self, worker: Worker) -> None:
        """stop_policy: keep a running job that ends in time, release one that cannot at once
        (and stop); an idle or kept worker takes what fits until the cutoff."""
        cutoff = self.now + self.cutoff_min
        job = worker.job
        if job is not None:
            elapsed = self.now - worker.job_started
            if job.limit is None or worker.job_started + job.limit > cutoff:
                job.work = max(0.0, job.work - elapsed)
                self.queue.appendleft(job)  # checkpointed and released at the notice
                worker.job = None
                worker.accepting = False
                return
        worker.cutoff = cutoff
        self.at(cutoff, "cutoff", worker)

    def _on_cutoff(self, worker: Worker) -> None:
        worker.accepting = False

    def _start_standby(self) -> None:
        self.stop_at = None  # an interruption cancels any pending stop
        if self.standby is None:
            self.result.standby_starts += 1
            self.standby = self._add_worker("standby")
            self.standby.accepting = False
            self.at(self.now + self.p.standby_start_minutes, "standby-ready", self.standby)
        elif self.standby.stopping:
            self.standby.stopping = False
            self.standby.accepting = True

    def _on_recommendation(self, slot: int) -> None:
        """A rebalance recommendation: the standby starts, the worker keeps serving (keep), and
        if no warning follows the standby stops a cooldown later (once the fleet is whole)."""
        if not self._healthy_spot():
            return
        self.result.recommendations += 1
        self._start_standby()
        self.stop_at = self.now + self.p.cooldown_minutes
        self.at(self.stop_at, "stop-standby", self.stop_at)

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
        if self.standby_strategy and self.standby is not None:
            self.stop_at = self.now + self.p.cooldown_minutes
            self.at(self.stop_at, "stop-standby", self.stop_at)

    def _on_standby_ready(self, standby: Worker) -> None:
        standby.accepting = True
        standby.up_since = self.now

    def _on_stop_standby(self, scheduled: float) -> None:
        if self.standby is None or self.stop_at != scheduled:
            return  # replaced by a later schedule, or cancelled by an interruption
        healthy = self._healthy_spot()
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
        # A worker working through a notice takes only the jobs that still fit: not drawn as
        # taking jobs (the no-worker minutes give it that share instead).
        serving = [w for w in self.workers if not w.gone and w.accepting and w.cutoff is None]
        spot_up = sum(1 for w in serving if w.kind != "standby")
        standby_up = sum(1 for w in serving if w.kind == "standby")
        oldest = self.now - self.queue[0].arrived if self.queue else 0.0
        self.result.timeline.append((self.now, spot_up, standby_up, oldest))


def make_trace(params: Params) -> dict[str, Any]:
    rng = random.Random(params.seed)
    end = params.days * MINUTES_PER_DAY
    arrivals, time = [], 0.0
    rate = params.arrivals_per_hour / 60
    while True:
        time += rng.expovariate(rate)
        if time >= end:
            break
        arrivals.append((time, rng.expovariate(1 / params.job_minutes)))
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
    # Limits and recommendations draw from their own streams: the arrivals, sizes and
    # interruptions above stay those of the runs before they existed.
    limit_rng = random.Random(params.seed + 1)
    jobs = [
        (
            arrival,
            work,
            None if limit_rng.random() < params.unlimited_share else work * params.limit_headroom,
        )
        for arrival, work in arrivals
    ]
    return {
        "jobs": jobs,
        "limits_sorted": sorted(limit for _, _, limit in jobs if limit is not None),
        "interruptions": interruptions,
        "recommendations": recommendations(params, interruptions, end),
        "warnings": warnings,
    }


def recommendations(params: Params, interruptions: list[list[float]], end: float) -> list:
    """Per slot: a recommendation ahead of REBALANCE_EARLY_SHARE of its interruptions (the
    rest come with the warning, which already starts the standby), and false alarms."""
    rng = random.Random(params.seed + 2)
    found = []
    for times in interruptions:
        slot = []
        for warning in times:
            if rng.random() < params.rebalance_early_share:
                slot.append(max(0.0, warning - rng.expovariate(1 / params.rebalance_lead_minutes)))
        time = 0.0
        while params.false_rebalances_per_day > 0:
            time += rng.expovariate(params.false_rebalances_per_day / MINUTES_PER_DAY)
            if time >= end:
                break
            slot.append(time)
        found.append(sorted(slot))
    return found


STRATEGIES = {
    "rebalance": "(a) capacity rebalancing alone",
    "standby": "(b) standby on the warning",
    "notice": "(b1) + work through the notice",
    "early": "(b2) + standby on rebalance rec.",
    "on-demand": "(c) on-demand only",
}
EARLY_SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)


def share_for_goal(ratios: dict[float, float | None]) -> float | None:
    """The early share at which the sweep's ratio reaches the goal (linear between points);
    None when even the largest share misses it."""
    points = sorted((share, r) for share, r in ratios.items() if r is not None)
    if points and points[0][1] <= GOAL_RATIO:
        return points[0][0]
    for (low, low_ratio), (high, high_ratio) in itertools.pairwise(points):
        if high_ratio <= GOAL_RATIO:
            return low + (high - low) * (low_ratio - GOAL_RATIO) / (low_ratio - high_ratio)
    return None


def plot(results: dict[str, Result], path: str, days: float = 7.0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--plot", metavar="FILE.png", help="draw one simulated week")
    args = parser.parse_args(argv)
    params = Params(**{k: getattr(args, k) for k in vars(defaults)})
    trace = make_trace(params)
    results = {name: Simulation(name, params, trace).run() for name in STRATEGIES}
    cutoff_min = NOTICE_MIN - params.checkpoint_grace_s / 60 - EXIT_RESERVE_MIN

    print(
        f"{params.days:g} days, {params.workers} worker(s), "
        f"{params.interruptions_per_day:g} interruption(s)/day/worker, "
        f"{params.arrivals_per_hour:g} jobs/h of {params.job_minutes:g} min, "
        f"boot {params.boot_minutes:g} min, standby start {params.standby_start_minutes:g} min, "
        f"spot at {params.spot_price_ratio:.0%} of on-demand"
    )
    print(
        f"job limit {params.limit_headroom:g}x its work ({params.unlimited_share:.0%} name none), "
        f"grace {params.checkpoint_grace_s:g} s (cutoff {60 * cutoff_min:.0f} s after a warning); "
        f"rebalance recommendation ahead of {params.rebalance_early_share:.0%} "
        f"of interruptions by {params.rebalance_lead_minutes:g} min (mean), "
        f"{params.false_rebalances_per_day:g} false/day"
    )
    header = (
        f"{'strategy':34} {'interrupts':>10} {'no-worker min':>13} {'ratio':>6} {'wait p50':>9} "
        f"{'wait p95':>9} {'near p95':>9} {'near max':>9} {'standby h':>9} {'cost $':>9}"
    )
    print(header)
    print("-" * len(header))
    print(
        "wait = queue age (min) when a job starts; near = jobs arriving <= 15 min after a warning;"
        " ratio = no-worker minutes / (a)'s"
    )
    a = results["rebalance"]

    def ratio(r: Result) -> float | None:
        return round(r.no_worker_minutes / a.no_worker_minutes, 3) if a.no_worker_minutes else None

    for name, r in results.items():
        standby_hours = r.on_demand_hours if name in ("standby", "notice", "early") else 0.0
        shown = ratio(r)
        print(
            f"{STRATEGIES[name]:34} {r.interruptions:10d} {r.no_worker_minutes:13.1f} "
            f"{'-' if shown is None else f'{shown:.3f}':>6} "
            f"{r.p(0.5):9.2f} {r.p(0.95):9.2f} {r.p(0.95, near=True):9.2f} "
            f"{r.p(1.0, near=True):9.2f} {standby_hours:9.1f} "
            f"{r.cost:9.2f}"
        )
    notice, early = results["notice"], results["early"]
    print(
        f"working through: {notice.jobs_through_notices} jobs taken under a notice (b1), "
        f"{early.jobs_through_notices} (b2); (b2) {early.recommendations} recommendations "
        f"started or kept the standby"
    )
    # What the goal hangs on: the share of interruptions whose recommendation comes ahead.
    print(f"(b2) by the share of interruptions recommended early (goal <= {GOAL_RATIO:.2f}x):")
    sweep = {}
    for share in EARLY_SHARES:
        swept = dataclasses.replace(params, rebalance_early_share=share)
        r = Simulation("early", swept, make_trace(swept)).run()
        sweep[share] = r
        print(
            f"  early share {share:4.0%}: {r.no_worker_minutes:6.1f} no-worker min, "
            f"ratio {ratio(r) or 0:.3f}, standby {r.on_demand_hours:5.1f} h, ${r.cost:7.2f}"
        )
    per_warning = notice.no_worker_minutes / notice.interruptions if notice.interruptions else 0.0
    per_rebalance = a.no_worker_minutes / a.interruptions if a.interruptions else 0.0
    needed = share_for_goal({share: ratio(r) for share, r in sweep.items()})
    print(
        f"bound: a warning with no recommendation ahead costs {per_warning:.2f} no-worker min "
        f"(b1: standby start {params.standby_start_minutes:g} min less the jobs that fit the "
        f"notice) against {per_rebalance:.2f} for (a), "
        f"{per_warning / per_rebalance if per_rebalance else 0:.3f}x; "
        f"the goal needs {GOAL_RATIO * per_rebalance:.2f} min per interruption: "
        + (
            f"reached once about {needed:.0%} of interruptions are recommended early"
            if needed is not None
            else "not reached even if every interruption is recommended early"
        )
    )
    c = results["on-demand"]
    b = results["standby"]
    figures = {
        "interruptions": b.interruptions,
        "no_worker_minutes_rebalance": round(a.no_worker_minutes, 1),
        "no_worker_minutes_standby": round(b.no_worker_minutes, 1),
        "no_worker_minutes_work_through": round(notice.no_worker_minutes, 1),
        "no_worker_minutes_rebalance_start": round(early.no_worker_minutes, 1),
        "no_worker_minutes_on_demand": round(c.no_worker_minutes, 1),
        "wait_p95_min_rebalance": round(a.p(0.95), 2),
        "wait_p95_min_standby": round(b.p(0.95), 2),
        "wait_p95_min_rebalance_start": round(early.p(0.95), 2),
        "wait_p95_min_on_demand": round(c.p(0.95), 2),
        "near_interruption_wait_p95_min_rebalance": round(a.p(0.95, near=True), 2),
        "near_interruption_wait_p95_min_standby": round(b.p(0.95, near=True), 2),
        "near_interruption_wait_p95_min_work_through": round(notice.p(0.95, near=True), 2),
        "near_interruption_wait_p95_min_rebalance_start": round(early.p(0.95, near=True), 2),
        "near_interruption_wait_p95_min_on_demand": round(c.p(0.95, near=True), 2),
        "cost_rebalance": round(a.cost, 2),
        "cost_standby": round(b.cost, 2),
        "cost_rebalance_start": round(early.cost, 2),
        "cost_on_demand": round(c.cost, 2),
        "standby_hours": round(b.on_demand_hours, 1),
        "standby_hours_rebalance_start": round(early.on_demand_hours, 1),
        "jobs_through_notices": early.jobs_through_notices,
        "rebalance_early_share": params.rebalance_early_share,
        "no_worker_minutes_ratio": ratio(early),
        "no_worker_minutes_ratio_goal": GOAL_RATIO,
        "no_worker_minutes_ratio_work_through_vs_rebalance": ratio(notice),
        "no_worker_minutes_ratio_by_early_share": {
            f"{share:g}": ratio(r) for share, r in sweep.items()
        },
        "no_worker_minutes_ratio_bound_without_early_recommendations": ratio(sweep[0.0]),
        "early_share_needed_for_goal": round(needed, 2) if needed is not None else None,
        "no_worker_ratio_standby_vs_rebalance": ratio(b),
        "wait_p95_ratio_standby_vs_rebalance": round(b.p(0.95) / a.p(0.95), 3)
        if a.p(0.95)
        else None,
        "near_interruption_wait_p95_ratio_standby_vs_rebalance": round(
            b.p(0.95, near=True) / a.p(0.95, near=True), 3
        )
        if a.p(0.95, near=True)
        else None,
        "cost_ratio_standby_vs_rebalance": round(b.cost / a.cost, 3),
        "cost_ratio_rebalance_start_vs_rebalance": round(early.cost / a.cost, 3),
        "cost_ratio_standby_vs_on_demand": round(b.cost / c.cost, 3),
    }
    if args.plot:
        plot(results, args.plot)
        print(f"plot: {args.plot}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
