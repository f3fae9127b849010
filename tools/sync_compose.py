"""Write gpu_worker/docker-compose.yml into template.yaml's user data (``make sync-compose``).

The fleet's user data writes the worker's compose file from the ``ComposeFile`` variable of its
``Fn::Sub``; the file in the repository is the one definition, and this copies it there
verbatim. ``--check`` changes nothing and exits 1 when the two differ (``make lint``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = REPO_ROOT / "template.yaml"
COMPOSE = REPO_ROOT / "gpu_worker" / "docker-compose.yml"
KEY = "ComposeFile: |"


class NoComposeBlock(ValueError):
    """The template has no ``ComposeFile: |`` block to write into."""


def render(template: str, compose: str) -> str:
    """``template`` with its ComposeFile block replaced by ``compose``, indented under the key."""
    lines = template.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.strip() == KEY]
    if len(starts) != 1:
        raise NoComposeBlock(f"template.yaml has {len(starts)} '{KEY}' lines, not one")
    start = starts[0]
    indent = " " * (len(lines[start]) - len(lines[start].lstrip()) + 2)
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or lines[end].startswith(indent)):
        end += 1
    while end > start + 1 and not lines[end - 1].strip():  # blank lines after the block stay
        end -= 1
    block = [indent + line if line.strip() else "\n" for line in compose.splitlines(keepends=True)]
    return "".join(lines[: start + 1] + block + lines[end:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if the template's copy differs"
    )
    args = parser.parse_args(argv)
    template = TEMPLATE.read_text(encoding="utf-8")
    try:
        wanted = render(template, COMPOSE.read_text(encoding="utf-8"))
    except NoComposeBlock as exc:
        print(f"sync_compose: {exc}", file=sys.stderr)
        return 2
    if wanted == template:
        return 0
    if args.check:
        print(
            "sync_compose: template.yaml's ComposeFile differs from gpu_worker/docker-compose.yml:"
            " run make sync-compose",
            file=sys.stderr,
        )
        return 1
    TEMPLATE.write_text(wanted, encoding="utf-8")
    print("sync_compose: template.yaml's ComposeFile rewritten from gpu_worker/docker-compose.yml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
