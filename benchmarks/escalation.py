"""Issue 19, simulated: a month of jobs, retried on the same capacity (today) or escalated.

(a) retry: an OOM job is retried on the same kind of box until MaxAttempts dead-letters it; a
    preempted job goes back to the same spot pool, however often that pool is reclaimed, until
    WORKER_MAX_INTERRUPTIONS dead-letters it;
(b) escalation: an OOM job moves to the larger-memory spot tier (started from zero: a boot) and
    runs there; a job preempted PreemptionsBeforeOnDemand times moves to the on-demand lane (the
    standby: a start) and is never preempted again. WORKER_MAX_INTERRUPTIONS still caps.

Jobs of several lengths (short, medium, long) arrive over the month; a share needs more memory
than the default tier (they run out of memory part-way), a smaller share more than the largest
tier (dead-lettered either way, and said so). Spot interruptions are Poisson at the rate of
benchmarks/standby.py's model (its ``Params``: interruptions per worker-day, boot and standby
start times, on-demand price and spot discount), with a share of jobs landing on a "hot" pool
reclaimed many times more often (the type that is being reclaimed). A preempted job resumes from
its last checkpoint. Both strategies see the same jobs and the same random draws (common random
numbers). Capacity is never short: this measures what each policy does to one job, not queueing.

    .venv/bin/python benchmarks/escalation.py [--days 30] [--plot finish.png]

Prints a table, and as the last line one JSON object (ratios under keys containing "ratio").
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The interruption and price model is standby.py's: one model of the fleet for both figures.
from standby import MINUTES_PER_DAY
from standby import Params as FleetModel

FLEET = FleetModel()
HELP = {
    "days": "simulated days of arrivals",
    "jobs_per_hour": "mean job arrivals per hour (Poisson)",
    "short_minutes": "length of a short job (minutes of work)",
    "medium_minutes": "length of a medium job",
    "long_minutes": "length of a long job",
    "short_share": "share of jobs that are short",
    "medium_share": "share of jobs that are medium (the rest are long)",
    "oom_share": "share of jobs that need the larger tier's memory",
    "oom_at": "fraction of the work done when such a job runs out of memory on the default tier",
    "beyond_largest_share": "share of jobs that need more memory than the largest tier",
    "interruptions_per_day": "spot interruptions per worker-day (standby.py's model)",
    "hot_pool_share": "share of jobs that land on a spot pool being reclaimed often",
    "hot_pool_factor": "how many times more often the hot pool is reclaimed",
    "checkpoint_minutes": "minutes between a job's checkpoints (work lost: up to this much)",
    "boot_minutes": "a fresh spot worker's boot (the larger tier starts from zero; standby.py)",
    "standby_start_minutes": "starting the stopped standby (the on-demand lane; standby.py)",
    "requeue_minutes": "a preempted job's wait for its next worker (standby.py's standby start)",
    "backoff_minutes": "backoff before a retry after OOM",
    "max_attempts": "MaxAttempts: failed attempts before a dead letter",
    "max_interruptions": "WORKER_MAX_INTERRUPTIONS: preemptions before a dead letter",
    "preemptions_before_on_demand": "PreemptionsBeforeOnDemand: preemptions before the lane",
    "on_demand_hourly": "on-demand price per hour of a default-tier instance (standby.py)",
    "spot_price_ratio": "spot price as a share of on-demand (standby.py)",
    "large_price_factor": "the larger tier's price in default-tier instances (g4dn.4xlarge / "
    "g4dn.xlarge on demand, us-east-1: 1.204 / 0.526)",
    "seed": "random seed (both strategies share every draw)",
}


@dataclass(frozen=True)
class Params:
    days: float = 30.0
    jobs_per_hour: float = 6.0
    short_minutes: float = 5.0
    medium_minutes: float = 45.0
    long_minutes: float = 360.0
    short_share: float = 0.6
    medium_share: float = 0.3
    oom_share: float = 0.05
    oom_at: float = 0.5
    beyond_largest_share: float = 0.003
    interruptions_per_day: float = FLEET.interruptions_per_day
    hot_pool_share: float = 0.2
    hot_pool_factor: float = 12.0
    checkpoint_minutes: float = 10.0
    boot_minutes: float = FLEET.boot_minutes
    standby_start_minutes: float = FLEET.standby_start_minutes
    requeue_minutes: float = FLEET.standby_start_minutes
    backoff_minutes: float = 0.5
    max_attempts: int = 3
    max_interruptions: int = 10
    preemptions_before_on_demand: int = 2
    on_demand_hourly: float = FLEET.on_demand_hourly
    spot_price_ratio: float = FLEET.spot_price_ratio
    large_price_factor: float = 2.3
    seed: int = 11


@dataclass(frozen=True)
class Job:
    arrived: float
    work: float  # minutes
    memory: str  # fits | large | beyond
    hot: bool  # lands on the pool being reclaimed often
    seed: int


@dataclass
class Outcome:
    finished_at: float | None = None  # None: dead-lettered
    reason: str = ""
    spot_minutes: float = 0.0  # default-tier instance minutes
    large_minutes: float = 0.0
    on_demand_minutes: float = 0.0
    preemptions: int = 0
    escalations: list[str] = field(default_factory=list)


def make_jobs(p: Params) -> list[Job]:
    rng = random.Random(p.seed)
    jobs, time, end = [], 0.0, p.days * MINUTES_PER_DAY
    while True:
        time += rng.expovariate(p.jobs_per_hour / 60)
        if time >= end:
            return jobs
        draw = rng.random()
        work = (
            p.short_minutes
            if draw < p.short_share
            else p.medium_minutes
            if draw < p.short_share + p.medium_share
            else p.long_minutes
        )
        need = rng.random()
        memory = (
            "beyond"
            if need < p.beyond_largest_share
            else "large"
            if need < p.beyond_largest_share + p.oom_share
            else "fits"
        )
        hot = rng.random() < p.hot_pool_share
        jobs.append(Job(time, work, memory, hot, rng.randrange(1 << 30)))


def simulate(job: Job, p: Params, *, escalate: bool) -> Outcome:
    """One job's life under a policy; the same ``job.seed`` gives both policies the same draws."""
    rng = random.Random(job.seed)
    out = Outcome()
    now, left = job.arrived, job.work
    tier, attempts = "default", 0
    while True:
        on_spot = tier != "on-demand"
        rate = p.interruptions_per_day / MINUTES_PER_DAY
        if job.hot and tier == "default":
            rate *= p.hot_pool_factor
        # Memory: a job that needs more than its tier runs out part-way through.
        too_big = (job.memory == "large" and tier != "large") or job.memory == "beyond"
        run_for = left * p.oom_at if too_big else left
        preempted_after = rng.expovariate(rate) if on_spot and rate > 0 else float("inf")
        ran = min(run_for, preempted_after)
        now += ran
        key = {
            "default": "spot_minutes",
            "large": "large_minutes",
            "on-demand": "on_demand_minutes",
        }
        setattr(out, key[tier], getattr(out, key[tier]) + ran)
        if preempted_after < run_for:  # reclaimed: resume from the last checkpoint
            out.preemptions += 1
            done = ran - min(ran, rng.uniform(0, p.checkpoint_minutes))
            left -= done if not too_big else 0.0  # an OOM-bound attempt restarts anyway
            if out.preemptions > p.max_interruptions:
                out.reason = "interrupted past the cap"
                return out
            if escalate and tier == "default" and out.preemptions >= p.preemptions_before_on_demand:
                tier = "on-demand"
                out.escalations.append("on-demand")
                now += p.standby_start_minutes
            else:
                now += p.requeue_minutes
            continue
        if too_big:  # OOM: the attempt counts, its work is lost
            attempts += 1
            if escalate and tier != "large" and job.memory != "fits":
                tier = "large"
                out.escalations.append("large")
                left = job.work
                now += p.boot_minutes  # the larger tier starts from zero
                continue
            if attempts >= p.max_attempts:
                out.reason = "OOM at the cap" + (
                    " (beyond the largest tier)" if tier == "large" else ""
                )
                return out
            now += p.backoff_minutes
            left = job.work
            continue
        out.finished_at = now
        return out


@dataclass
class Totals:
    finish_minutes: list[float] = field(default_factory=list)
    long_finish_minutes: list[float] = field(default_factory=list)
    finished: int = 0
    dead: int = 0
    dead_could_finish: int = 0
    spot_hours: float = 0.0
    large_hours: float = 0.0
    on_demand_hours: float = 0.0
    escalated: int = 0
    cost: float = 0.0

    def p(self, q: float, *, long: bool = False) -> float:
        ordered = sorted(self.long_finish_minutes if long else self.finish_minutes)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0

    @property
    def cost_per_job(self) -> float:
        return self.cost / self.finished if self.finished else 0.0


def run(p: Params) -> tuple[list[Job], dict[str, Totals]]:
    jobs = make_jobs(p)
    results: dict[str, list[Outcome]] = {
        name: [simulate(job, p, escalate=name == "escalation") for job in jobs]
        for name in ("retry", "escalation")
    }
    spot_hourly = p.on_demand_hourly * p.spot_price_ratio
    totals = {}
    for name, outcomes in results.items():
        t = Totals()
        other = results["escalation" if name == "retry" else "retry"]
        for job, out, twin in zip(jobs, outcomes, other, strict=True):
            if out.finished_at is None:
                t.dead += 1
                t.dead_could_finish += twin.finished_at is not None
            else:
                t.finished += 1
                # Times compare the jobs both strategies finish: the same jobs on both sides.
                if twin.finished_at is not None:
                    t.finish_minutes.append(out.finished_at - job.arrived)
                    if job.work == p.long_minutes:
                        t.long_finish_minutes.append(out.finished_at - job.arrived)
            t.spot_hours += out.spot_minutes / 60
            t.large_hours += out.large_minutes / 60
            t.on_demand_hours += out.on_demand_minutes / 60
            t.escalated += bool(out.escalations)
        t.cost = (
            t.spot_hours * spot_hourly
            + t.large_hours * spot_hourly * p.large_price_factor
            + t.on_demand_hours * p.on_demand_hourly
        )
        totals[name] = t
    return jobs, totals


def plot(totals: dict[str, Totals], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(10, 4.5))
    for name, t in totals.items():
        ordered = sorted(m / 60 for m in t.finish_minutes)
        shares = [(i + 1) / len(ordered) for i in range(len(ordered))]
        axis.step(ordered, shares, where="post", label=f"{name} ({t.dead} dead-lettered)")
    axis.set_xscale("log")
    axis.set_xlabel("hours from arrival to finish (log)")
    axis.set_ylabel("share of finished jobs")
    axis.set_title("Time to finish: retry on the same capacity vs escalation")
    axis.grid(True, alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    defaults = Params()
    for spec in fields(Params):
        value = getattr(defaults, spec.name)
        parser.add_argument(
            f"--{spec.name.replace('_', '-')}",
            type=type(value),
            default=value,
            help=HELP[spec.name],
        )
    parser.add_argument("--plot", metavar="FILE.png", help="draw both strategies' time to finish")
    args = parser.parse_args(argv)
    p = Params(**{spec.name: getattr(args, spec.name) for spec in fields(Params)})
    jobs, totals = run(p)
    a, b = totals["retry"], totals["escalation"]

    print(
        f"{p.days:g} days, {len(jobs)} jobs ({p.short_share:.0%} {p.short_minutes:g} min, "
        f"{p.medium_share:.0%} {p.medium_minutes:g} min, rest {p.long_minutes:g} min), "
        f"{p.oom_share:.1%} need the larger tier, {p.beyond_largest_share:.1%} more than it; "
        f"{p.interruptions_per_day:g} interruption(s)/worker-day, {p.hot_pool_share:.0%} of jobs "
        f"on a pool reclaimed {p.hot_pool_factor:g}x as often; spot at "
        f"{p.spot_price_ratio:.0%} of ${p.on_demand_hourly}/h, "
        f"larger tier x{p.large_price_factor:g}"
    )
    header = (
        f"{'strategy':12} {'p50 h':>7} {'p95 h':>7} {'long p95':>9} {'dead':>5} "
        f"{'could finish':>12} {'escalated':>9} {'spot h':>8} {'large h':>8} {'on-dem h':>8} "
        f"{'cost $':>8} {'$/job':>6}"
    )
    print(header)
    print("-" * len(header))
    for name, t in totals.items():
        print(
            f"{name:12} {t.p(0.5) / 60:7.2f} {t.p(0.95) / 60:7.2f} "
            f"{t.p(0.95, long=True) / 60:9.2f} {t.dead:5d} {t.dead_could_finish:12d} "
            f"{t.escalated:9d} {t.spot_hours:8.1f} {t.large_hours:8.1f} "
            f"{t.on_demand_hours:8.1f} {t.cost:8.2f} {t.cost_per_job:6.3f}"
        )
    print(
        "time to finish = arrival to result, over the jobs both strategies finish; long p95 = "
        "the long jobs' p95; "
        "could finish = dead-lettered here, finished under the other strategy; "
        "$/job = cost per finished job"
    )
    figures = {
        "jobs": len(jobs),
        "finished_retry": a.finished,
        "finished_escalation": b.finished,
        "finish_p50_min_retry": round(a.p(0.5), 1),
        "finish_p50_min_escalation": round(b.p(0.5), 1),
        "finish_p95_min_retry": round(a.p(0.95), 1),
        "finish_p95_min_escalation": round(b.p(0.95), 1),
        "long_finish_p95_min_retry": round(a.p(0.95, long=True), 1),
        "long_finish_p95_min_escalation": round(b.p(0.95, long=True), 1),
        "dead_lettered_retry": a.dead,
        "dead_lettered_escalation": b.dead,
        "dead_lettered_could_finish_retry": a.dead_could_finish,
        "dead_lettered_could_finish_escalation": b.dead_could_finish,
        "escalated_jobs": b.escalated,
        "spot_hours_retry": round(a.spot_hours + a.large_hours, 1),
        "spot_hours_escalation": round(b.spot_hours + b.large_hours, 1),
        "on_demand_hours_retry": round(a.on_demand_hours, 1),
        "on_demand_hours_escalation": round(b.on_demand_hours, 1),
        "cost_retry": round(a.cost, 2),
        "cost_escalation": round(b.cost, 2),
        "cost_per_finished_job_retry": round(a.cost_per_job, 4),
        "cost_per_finished_job_escalation": round(b.cost_per_job, 4),
        "finish_p50_ratio_escalation_vs_retry": _ratio(b.p(0.5), a.p(0.5)),
        "finish_p95_ratio_escalation_vs_retry": _ratio(b.p(0.95), a.p(0.95)),
        "long_finish_p95_ratio_escalation_vs_retry": _ratio(
            b.p(0.95, long=True), a.p(0.95, long=True)
        ),
        "dead_lettered_could_finish_ratio_escalation_vs_retry": _ratio(
            b.dead_could_finish, a.dead_could_finish
        ),
        "on_demand_hours_ratio_escalation_vs_retry": _ratio(b.on_demand_hours, a.on_demand_hours),
        "dead_lettered_ratio_escalation_vs_retry": _ratio(b.dead, a.dead),
        "cost_ratio_escalation_vs_retry": _ratio(b.cost, a.cost),
        "cost_per_finished_job_ratio_escalation_vs_retry": _ratio(b.cost_per_job, a.cost_per_job),
    }
    if args.plot:
        plot(totals, args.plot)
        print(f"plot: {args.plot}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
