"""``python -m devstack demo``: run the local pipeline (see the README)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the whole pipeline locally and check every job")
    demo.add_argument("--timeout", type=float, default=45.0, help="seconds to wait for the jobs")
    args = parser.parse_args(argv)
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
