"""The chaos drill, short: ~40 jobs, two workers, faults for 25 s; nothing may be lost."""

from __future__ import annotations

import os

import pytest

from devstack.chaos import Chaos, ChaosConfig
from devstack.chaos_timeline import Timeline
from devstack.motoserver import MotoServer

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(170)
def test_short_chaos_run_has_no_violations(moto_server: MotoServer) -> None:
    environ = dict(os.environ)
    lines: list[str] = []
    config = ChaosConfig(
        seed=20261123, jobs=40, workers=2, duration_s=25, fault_every_s=2.5, timeout_s=150
    )
    timeline = Timeline()
    report = Chaos(config, log=lines.append, watch=timeline).run(server=moto_server)

    # Violations first: a failure message is often cut short, and they are what matters.
    assert report.violations == [], "\n".join([*report.violations, "--- schedule ---", *lines])
    assert report.jobs == 40
    assert sum(report.outcomes.values()) == 40
    # The schedule really broke things, and the drill saw the failing kinds die.
    assert sum(n for kind, n in report.faults.items() if kind != "restart") >= 3
    assert report.outcomes["DEAD_LETTERED"] >= 3
    assert report.lost_jobs == report.stuck_jobs == report.duplicate_effects == 0
    # The watcher saw the run: every job settled at the end, the faults marked on the way.
    assert timeline.ticks[-1].settled == 40
    assert sum(timeline.ticks[-1].settled_by_worker.values()) == 40
    assert len(timeline.fault_marks()) == timeline.ticks[-1].fault_count >= 3
    # The handlers' environment (log level, callback test mode) does not outlive the drill.
    assert dict(os.environ) == environ
