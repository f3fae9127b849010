"""A whole demo run, every line it logs or prints: no webhook URL, signing key or user payload.

The demo runs once per session as ``python -m devstack demo`` in a subprocess (the ``demo_run``
fixture, shared with test_devstack). ``leakcheck/sitecustomize.py`` (on its PYTHONPATH, so loaded
by the demo and by every worker it starts) records what the drills
store as secrets (SSM SecureString values, Secrets Manager strings) and every job message sent,
so the test knows the exact strings, random ports and generated keys included.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import DemoRun

pytestmark = pytest.mark.e2e

MIN_PAYLOAD_TEXT = 8  # shorter strings ("spot", "after") occur in ordinary words


def _recorded(path: Path) -> tuple[list[str], list[str]]:
    secrets, payload_texts = [], set()
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        if entry["kind"] == "secret" and entry["value"]:
            secrets.append(entry["value"])
        elif entry["kind"] == "message":
            payload_texts.update(_request_texts(entry["value"]))
    return secrets, sorted(payload_texts)


def _request_texts(body: str) -> set[str]:
    """The text inside a job message's input and params: what the user sent."""
    try:
        message = json.loads(body)
    except ValueError:
        return set()
    request = message.get("request") if isinstance(message, dict) else None
    if not isinstance(request, dict):
        return set()
    texts: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, str) and len(value) >= MIN_PAYLOAD_TEXT:
            texts.add(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(request.get("input"))
    walk(request.get("params"))
    return texts


def _json_lines(text: str) -> list[str]:
    """The structured log lines (worker logs, handler logs) in a stream that also has tables."""
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("{"):
            try:
                json.loads(stripped)
            except ValueError:
                continue
            lines.append(stripped)
    return lines


def test_a_demo_run_logs_no_webhook_url_signing_key_or_user_payload(demo_run: DemoRun) -> None:
    completed, workdir, record = demo_run.completed, demo_run.workdir, demo_run.record
    output = {"stdout": completed.stdout, "stderr": completed.stderr}
    # The run went to its end (its verdict is test_devstack's business): every drill logged.
    assert "every job reached its expected state" in completed.stdout or (
        "demo FAILED" in completed.stdout
    ), completed.stdout[-3000:] + completed.stderr[-3000:]
    worker_logs = sorted(workdir.glob("*.log"))
    assert worker_logs, f"no worker logs in {workdir}"
    for log in worker_logs:
        output[log.name] = log.read_text(encoding="utf-8", errors="replace")

    secrets, payload_texts = _recorded(record)
    # Not vacuous: the drills stored webhook URLs and a signing key, and sent user text.
    assert any(s.startswith("http") for s in secrets), secrets
    assert any(not s.startswith("http") for s in secrets), "no signing key was stored"
    assert payload_texts, "no job carried text to look for"

    leaks = [
        f"secret {secret[:12]}… in {name}"
        for name, text in output.items()
        for secret in secrets
        if secret in text
    ]
    structured = {name: _json_lines(text) for name, text in output.items()}
    assert sum(len(lines) for lines in structured.values()) > 50, "no structured logs captured"
    leaks += [
        f"user payload {payload!r} in {name}: {line[:300]}"
        for name, lines in structured.items()
        for line in lines
        for payload in payload_texts
        if payload in line
    ]
    assert leaks == []
