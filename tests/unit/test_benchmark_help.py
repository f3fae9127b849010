"""Every benchmark's ``--help`` runs and describes every flag it takes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.cfn import REPO_ROOT

BENCHMARKS = sorted((REPO_ROOT / "benchmarks").glob("*.py"))


def option_entries(help_text: str) -> dict[str, str]:
    """Each option's invocation (``--seed SEED``) and the description argparse printed for it."""
    entries: dict[str, str] = {}
    current = None
    for line in help_text.split("options:", 1)[1].splitlines():
        if re.match(r"^  -", line):
            invocation, _, description = line.strip().partition("  ")
            current = invocation
            entries[current] = description.strip()
        elif current is not None and line.startswith("    "):
            entries[current] = f"{entries[current]} {line.strip()}".strip()
        elif line.strip():  # a new section (argument groups): its options follow
            current = None
    return entries


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda path: path.name)
def test_help_describes_every_flag(script: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(script), "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    entries = option_entries(done.stdout)
    assert "-h, --help" in entries
    undescribed = [invocation for invocation, text in entries.items() if not text]
    assert not undescribed, f"{script.name}: no description for {undescribed}"
    flags = set(re.findall(r"add_argument\(\s*f?\"(--[a-z-]+)", script.read_text()))
    shown = {flag for invocation in entries for flag in re.findall(r"--[a-z-]+", invocation)}
    assert flags <= shown, flags - shown


def test_the_parser_of_this_test_sees_a_missing_description() -> None:
    text = "usage: x\n\noptions:\n  -h, --help  show this help message and exit\n  --bare N\n"
    assert option_entries(text) == {"-h, --help": "show this help message and exit", "--bare N": ""}
