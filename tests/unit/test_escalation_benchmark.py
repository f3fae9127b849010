"""benchmarks/escalation.py's per-job rules: what each policy does to one job."""

from __future__ import annotations

import json
import sys

import pytest

from devstack.cfn import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import escalation as bench

P = bench.Params(interruptions_per_day=0.0)


def test_an_oom_job_is_dead_lettered_by_retry_and_finished_by_escalation() -> None:
    job = bench.Job(arrived=0.0, work=60.0, memory="large", hot=False, seed=1)
    retried = bench.simulate(job, P, escalate=False)
    assert retried.finished_at is None and retried.reason == "OOM at the cap"
    assert retried.spot_minutes == pytest.approx(3 * 30.0)  # three attempts, each to half-way
    escalated = bench.simulate(job, P, escalate=True)
    assert escalated.escalations == ["large"]
    # Half the work on the default tier, the larger tier's boot, then all of it there.
    assert escalated.finished_at == pytest.approx(30.0 + P.boot_minutes + 60.0)
    assert escalated.large_minutes == pytest.approx(60.0)


def test_a_job_beyond_the_largest_tier_is_dead_lettered_either_way() -> None:
    job = bench.Job(arrived=0.0, work=60.0, memory="beyond", hot=False, seed=1)
    assert bench.simulate(job, P, escalate=False).finished_at is None
    out = bench.simulate(job, P, escalate=True)
    assert out.finished_at is None and "beyond the largest tier" in out.reason


def test_a_job_on_a_hot_pool_moves_to_the_lane_after_the_budget() -> None:
    hot = bench.Params(interruptions_per_day=1.0, hot_pool_factor=2000.0)
    job = bench.Job(arrived=0.0, work=600.0, memory="fits", hot=True, seed=3)
    retried = bench.simulate(job, hot, escalate=False)
    assert retried.finished_at is None and retried.reason == "interrupted past the cap"
    escalated = bench.simulate(job, hot, escalate=True)
    assert escalated.finished_at is not None and escalated.escalations == ["on-demand"]
    assert escalated.preemptions == hot.preemptions_before_on_demand
    assert escalated.on_demand_minutes > 0


def test_the_run_prints_a_table_and_its_figures_last(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--days", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    figures = json.loads(lines[-1])
    assert figures["dead_lettered_retry"] >= figures["dead_lettered_escalation"]
    assert "cost_ratio_escalation_vs_retry" in figures
    assert any(line.startswith("retry") for line in lines)
