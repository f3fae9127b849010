"""The chaos drill at full size: jobs lost, duplicate effects, recovery time, work redone.

Runs ``devstack.chaos`` (moto server, IMDS mocks, real workers, the real dead-letter handler)
with ≥ 200 jobs and a seeded fault schedule. The baseline, measured on the same kills: the work
each hard kill would have cost had the job never checkpointed (the whole attempt so far).

    python benchmarks/chaos.py [--seed N] [--jobs 200] [--workers 3] [--duration-s 120]

Prints the drill's tables and, as the last line, one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "functions"))

from devstack.chaos import Chaos, ChaosConfig, new_seed, render
from devstack.chaos_timeline import Timeline, plot
from devstack.plotting import pyplot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="replay this fault schedule (default: a new one, printed)",
    )
    parser.add_argument(
        "--jobs", type=int, default=200, help="jobs submitted (default: %(default)s)"
    )
    parser.add_argument(
        "--workers", type=int, default=3, help="worker processes, at least 2 (default: %(default)s)"
    )
    parser.add_argument(
        "--duration-s",
        type=float,
        default=120.0,
        help="how long faults are injected, in seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw the timeline: jobs per worker over time, faults marked (needs: make bench)",
    )
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else new_seed()
    config = ChaosConfig(
        seed=seed, jobs=args.jobs, workers=max(2, args.workers), duration_s=args.duration_s
    )
    if args.plot:
        pyplot()  # without matplotlib, say so before the drill, not after it
    timeline = Timeline()
    report = Chaos(config, quiet_handlers=True, watch=timeline).run()
    render(report)
    if args.plot:
        plot(timeline, args.plot, title=f"spotline chaos drill, seed {seed}")
    figures = report.figures()
    print(json.dumps(figures, separators=(",", ":")))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
