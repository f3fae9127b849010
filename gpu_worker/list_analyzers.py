"""``python -m gpu_worker --list-analyzers`` / ``--catalog``: the analyzers this environment has.

``--list-analyzers`` prints a table (name, distribution, limits, drill); ``--catalog`` prints the
catalog JSON that the Lambda bundle carries (``functions/spotline/catalog.json``): run it in the
worker image (``make push`` does) so the API accepts exactly what the fleet runs.
``--distribution NAME`` (repeatable) keeps only those distributions' analyzers, ``--no-drills``
leaves drills out, ``--image REF`` names the image (default ``WORKER_IMAGE``). A broken plug-in
is reported on stderr with its traceback; a duplicate name or an invalid schema exits 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from gpu_worker.registry import PluginError, build_catalog


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gpu_worker", description=__doc__.split("\n")[0]
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--list-analyzers", action="store_true", help="print a table")
    what.add_argument("--catalog", action="store_true", help="print the catalog JSON")
    parser.add_argument("--distribution", action="append", help="only this distribution's")
    parser.add_argument("--no-drills", action="store_true", help="leave drill analyzers out")
    parser.add_argument("--image", default=os.environ.get("WORKER_IMAGE", ""), help="image name")
    args = parser.parse_args(argv)
    narrowed = [n.strip() for n in os.environ.get("WORKER_ANALYZERS", "").split(",") if n.strip()]
    try:
        catalog, broken = build_catalog(
            args.image, only=narrowed or None, distributions=args.distribution
        )
    except PluginError as exc:
        print(f"gpu_worker: {exc}", file=sys.stderr)
        return 2
    for plugin in broken:
        print(
            f"gpu_worker: analyzer {plugin.name!r} of {plugin.distribution} is broken and left "
            f"out:\n{plugin.error}",
            file=sys.stderr,
        )
    if args.no_drills:
        catalog = catalog.narrowed(catalog.names(drills=False))
    if args.catalog:
        sys.stdout.write(catalog.dumps())
        return 0
    print(f"{'analyzer':<14} {'distribution':<22} {'drill':<6} limits")
    for name in catalog.names():
        entry = catalog.entries[name]
        limits = ", ".join(f"{k}={v}" for k, v in entry.limits.items() if v not in (None, False))
        print(
            f"{name:<14} {entry.distribution + ' ' + entry.version:<18} "
            f"{'yes' if entry.drill else 'no':<6} {limits or '-'}"
        )
    return 0
