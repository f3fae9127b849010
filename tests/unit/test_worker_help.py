"""``python -m gpu_worker --help``: every setting, from the one list the config reads."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import pytest

from devstack.cfn import REPO_ROOT
from gpu_worker import variables
from gpu_worker.config import WorkerConfig
from spotline.settings import MissingSetting

# A fault-injection switch of the e2e tests (gpu_worker/settle.py), not a setting.
TEST_ONLY = {"WORKER_TEST_CRASH_AT"}


def help_text() -> str:
    done = subprocess.run(
        [sys.executable, "-m", "gpu_worker", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


def test_help_lists_every_variable_with_its_default() -> None:
    text = help_text()
    for name, default, about in variables.describe(WorkerConfig.defaults()):
        (line,) = [line for line in text.splitlines() if line.split()[:1] == [name]]
        assert about in line and line.endswith(f"[{default}]"), line
    for name, _ in variables.ANALYZER_VARIABLES:
        assert re.search(rf"^  {name} ", text, flags=re.MULTILINE), name
    assert "--list-analyzers" in text and "--catalog" in text


def test_the_list_sets_every_config_field_once() -> None:
    listed = [variable.field for variable in variables.VARIABLES]
    assert sorted(listed) == sorted(f.name for f in dataclasses.fields(WorkerConfig))
    assert len({variable.name for variable in variables.VARIABLES}) == len(listed)


def test_every_variable_the_worker_reads_is_listed() -> None:
    read = set()
    for path in (REPO_ROOT / "gpu_worker").rglob("*.py"):
        read |= set(re.findall(r"\"(WORKER_[A-Z0-9_]+)\"", path.read_text(encoding="utf-8")))
    listed = {v.name for v in variables.VARIABLES} | {n for n, _ in variables.ANALYZER_VARIABLES}
    assert read - TEST_ONLY == listed


def test_required_variables_are_marked_and_named_when_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows = {name: default for name, default, _ in variables.describe(WorkerConfig.defaults())}
    required = {name for name, default in rows.items() if default == "required"}
    assert required == {"WORKER_QUEUE_URL", "WORKER_DLQ_URL", "WORKER_TABLE_NAME", "WORKER_BUCKET"}
    for name in required:
        monkeypatch.setenv(name, "x")
    monkeypatch.delenv("WORKER_BUCKET")
    with pytest.raises(MissingSetting, match="WORKER_BUCKET"):
        WorkerConfig.from_env()


def test_each_reader_takes_its_variable_and_the_fields_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("WORKER_QUEUE_URL", "WORKER_DLQ_URL", "WORKER_TABLE_NAME", "WORKER_BUCKET"):
        monkeypatch.setenv(name, f"{name.lower()}-value")
    monkeypatch.setenv("WORKER_PREFETCH", "7")
    monkeypatch.setenv("WORKER_METRICS", " CloudWatch ")
    monkeypatch.setenv("WORKER_ENABLE_DRILLS", "yes")
    monkeypatch.setenv("WORKER_CHECKPOINT_DIR", "off")
    monkeypatch.delenv("WORKER_WAIT_S", raising=False)
    config = WorkerConfig.from_env()
    assert config.bucket == "worker_bucket-value" and config.prefetch == 7
    assert config.metrics_sink == "cloudwatch" and config.enable_drills is True
    assert config.checkpoint_dir == "" and config.wait_s == WorkerConfig.wait_s


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("WORKER_PREFETCH", "two", "WORKER_PREFETCH must be a number"),
        ("WORKER_WAIT_S", "2.5", "WORKER_WAIT_S must be an integer"),
        ("WORKER_ENABLE_DRILLS", "maybe", "WORKER_ENABLE_DRILLS must be true or false"),
    ],
)
def test_a_bad_value_is_named(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    for required in ("WORKER_QUEUE_URL", "WORKER_DLQ_URL", "WORKER_TABLE_NAME", "WORKER_BUCKET"):
        monkeypatch.setenv(required, "x")
    monkeypatch.setenv(name, value)
    with pytest.raises(MissingSetting, match=message):
        WorkerConfig.from_env()
