"""``python -m devstack demo``: run the local pipeline (see the README)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the whole pipeline locally and check every job")
    demo.add_argument("--timeout", type=float, default=45.0, help="seconds to wait for the jobs")
    chaos = commands.add_parser("chaos", help="break workers at random while jobs run; count")
    chaos.add_argument("--seed", type=int, default=None, help="replay a schedule (printed)")
    chaos.add_argument("--jobs", type=int, default=200, help="jobs to submit")
    chaos.add_argument("--workers", type=int, default=3, help="worker processes (>= 2)")
    chaos.add_argument("--duration-s", type=float, default=120.0, help="seconds of faults")
    chaos.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw the timeline: jobs per worker over time, faults marked (needs: make bench)",
    )
    local = commands.add_parser("run", help="run one job of your installed analyzer end to end")
    local.add_argument("--analyzer", required=True, help="an installed analyzer's name")
    local.add_argument("--input", default="null", help="the job's input, as JSON")
    local.add_argument("--params", default="{}", help="the job's params, as a JSON object")
    local.add_argument("--timeout", type=float, default=300.0, help="seconds to wait")
    args = parser.parse_args(argv)
    if args.command == "run":
        import json

        from devstack import run_local

        try:
            job_input, params = json.loads(args.input), json.loads(args.params)
        except json.JSONDecodeError as exc:
            print(f"devstack run: --input and --params must be JSON: {exc}", file=sys.stderr)
            return 2
        return run_local.run(args.analyzer, job_input, params, timeout_s=args.timeout)
    if args.command == "chaos":
        from devstack import chaos as chaos_module

        seed = args.seed if args.seed is not None else chaos_module.new_seed()
        config = chaos_module.ChaosConfig(
            seed=seed, jobs=args.jobs, workers=max(2, args.workers), duration_s=args.duration_s
        )
        try:
            return chaos_module.run(config, plot_path=args.plot)
        except KeyboardInterrupt:
            print(f"interrupted (seed {seed}); everything chaos started was stopped")
            return 130
    if args.command == "demo":
        from devstack import demo as demo_module

        try:
            return demo_module.run(timeout_s=args.timeout)
        except KeyboardInterrupt:
            print("interrupted; everything devstack started was stopped", file=sys.stderr)
            return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
