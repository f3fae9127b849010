"""Fake command-line tools for the tests of shell recipes (``make push``, the fleet's user data),
where no Docker engine and no AWS account exist: each fake records its argv, in call order, and
answers as the test told it.

``docker login`` also records what it read on stdin (the password must travel there, never in an
argv). A fake records its call before it answers, and ``docker login`` only after its stdin
closed, so ``aws ecr get-login-password | docker login ...`` is recorded in pipeline order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_FAKE = """#!{python}
import json, os, sys
from pathlib import Path

argv = [os.path.basename(sys.argv[0]), *sys.argv[1:]]
record = {{"argv": argv}}
if argv[:2] == ["docker", "login"]:
    record["stdin"] = sys.stdin.read()
with open(os.environ["FAKE_LOG"], "a", encoding="utf-8") as log:
    log.write(json.dumps(record) + "\\n")
rules = json.loads(Path(os.environ["FAKE_RULES"]).read_text(encoding="utf-8"))
for index, rule in enumerate(rules):
    if argv[: len(rule["prefix"])] != rule["prefix"]:
        continue
    if rule["times"] is not None:
        used = Path(os.environ["FAKE_RULES"] + f".{{index}}")
        count = int(used.read_text()) if used.exists() else 0
        if count >= rule["times"]:
            continue
        used.write_text(str(count + 1))
    sys.stdout.write(rule["stdout"])
    sys.exit(rule["exit_code"])
"""


@dataclass
class FakeTools:
    """Fakes of ``names`` in ``root/bin``, first on PATH for the commands run through it."""

    root: Path
    names: Sequence[str] = ("docker", "aws")

    def __post_init__(self) -> None:
        self.bin = self.root / "bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        self.log = self.root / "calls.jsonl"
        self.rules_path = self.root / "rules.json"
        self.rules: list[dict[str, Any]] = []
        self.rules_path.write_text("[]", encoding="utf-8")
        for name in self.names:
            tool = self.bin / name
            tool.write_text(_FAKE.format(python=sys.executable), encoding="utf-8")
            tool.chmod(0o755)

    def answer(
        self,
        *prefix: str,
        stdout: str = "",
        exit_code: int = 0,
        times: int | None = None,
        first: bool = False,
    ) -> None:
        """A call whose argv starts with ``prefix`` prints ``stdout`` and exits ``exit_code``
        (the first ``times`` such calls only). The earliest matching rule wins; ``first`` puts
        this one before those given so far."""
        rule = {"prefix": list(prefix), "stdout": stdout, "exit_code": exit_code, "times": times}
        self.rules.insert(0 if first else len(self.rules), rule)
        self.rules_path.write_text(json.dumps(self.rules), encoding="utf-8")

    def calls(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text(encoding="utf-8").splitlines()]

    def argvs(self) -> list[list[str]]:
        return [call["argv"] for call in self.calls()]

    def run(
        self, argv: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        environment = {
            **os.environ,
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "FAKE_LOG": str(self.log),
            "FAKE_RULES": str(self.rules_path),
            **(env or {}),
        }
        return subprocess.run(
            list(argv),
            cwd=cwd,
            env=environment,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
