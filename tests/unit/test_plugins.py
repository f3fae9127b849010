"""Bring your own analyzer (issue 18): entry-point plug-ins, their declared contracts, and the
catalog the API checks against: what the fleet runs, and what a broken plug-in costs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from devstack.cfn import REPO_ROOT, Stack
from gpu_worker.consumer import Worker
from gpu_worker.registry import PluginError, build_catalog, create, discover, load_plugins
from spotline.catalog import Catalog, CatalogError, bundled_catalog_path, load_catalog
from spotline.contract import (
    ErrorKind,
    InvalidJob,
    JobMessage,
    JobStatus,
    RequestPolicy,
    new_job_id,
    validate_request,
)
from spotline.jobstore import JobStore
from spotline.queue import JobQueue
from spotline.settings import MissingSetting
from tests.unit.conftest import stack_worker_config

BUILT_INS = {"echo", "sleep", "text_embed"}
DRILLS = {"memory_hog", "fail", "crash", "cpu_burn", "slow_load"}


def fake_distribution(
    root: Path, dist: str, entry_points: dict[str, str], module: str, source: str
) -> Path:
    """An installed distribution as importlib.metadata sees one: a dist-info folder with its
    entry points, beside the module they name."""
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "\n".join(f"{name} = {value}" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[spotline.analyzers]\n{lines}\n")
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    return root


@pytest.fixture
def plugin_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path where tests install fake distributions; discovery forgets them after."""
    monkeypatch.syspath_prepend(str(tmp_path))
    discover.cache_clear()
    yield tmp_path
    discover.cache_clear()


GOOD = """
    from spotline.sdk import AnalyzerSpec, AnalyzerLimits

    class Double:
        '''Doubles a number.'''
        spec = AnalyzerSpec(
            input_schema={"type": "number"},
            params_schema={"type": "object", "properties": {"times": {"type": "integer"}},
                           "additionalProperties": False},
            limits=AnalyzerLimits(max_runtime_s=60, default_runtime_s=30, memory_mib=512),
        )
        def load(self): pass
        def analyze(self, job, ctx): return job.input * job.params.get("times", 2)
"""


# -- discovery -----------------------------------------------------------------------------


def test_built_ins_and_drills_are_entry_points_of_their_distributions() -> None:
    plugins = discover()
    assert set(plugins) >= BUILT_INS | DRILLS
    assert {plugins[name].distribution for name in BUILT_INS} == {"spotline"}
    assert {plugins[name].distribution for name in DRILLS} == {"spotline-drills"}
    catalog, broken = build_catalog("test")
    assert broken == []
    assert all(catalog.entries[name].drill for name in DRILLS)
    assert not any(catalog.entries[name].drill for name in BUILT_INS)


def test_a_users_distribution_is_an_analyzer_of_every_worker_here(plugin_path: Path) -> None:
    fake_distribution(
        plugin_path, "acme-double", {"double": "acme_double:Double"}, "acme_double", GOOD
    )
    catalog, broken = build_catalog("img")
    entry = catalog.entries["double"]
    assert broken == [] and entry.distribution == "acme-double"
    assert entry.limits["max_runtime_s"] == 60 and entry.description == "Doubles a number."
    analyzer = create("double")
    from spotline.sdk import Job

    assert analyzer.analyze(Job("j", "double", 21, {}), None) == 42  # type: ignore[arg-type]


def test_two_distributions_claiming_one_name_is_an_error_naming_both(plugin_path: Path) -> None:
    fake_distribution(plugin_path, "acme-echo", {"echo": "acme_echo:Double"}, "acme_echo", GOOD)
    with pytest.raises(
        PluginError, match=r"'echo'.*two distributions.*spotline.*acme-echo|acme-echo.*spotline"
    ):
        discover()


@pytest.mark.parametrize(
    "source",
    [
        "raise ImportError('no module named cudnn_magic')",  # import error
        "class Double:\n    def __init__(self):\n        raise RuntimeError('factory exploded')",
    ],
    ids=["import-error", "factory-raises"],
)
def test_a_broken_plugin_is_reported_with_its_traceback_and_the_others_run(
    plugin_path: Path, source: str
) -> None:
    fake_distribution(
        plugin_path, "acme-broken", {"broken": "acme_broken:Double"}, "acme_broken", source
    )
    catalog, broken = build_catalog("img")
    assert [(b.name, b.distribution) for b in broken] == [("broken", "acme-broken")]
    assert "Traceback" in broken[0].error
    assert "cudnn_magic" in broken[0].error or "factory exploded" in broken[0].error
    assert "broken" not in catalog.entries and set(catalog.entries) >= BUILT_INS


def test_a_schema_that_is_not_json_schema_stops_the_worker_naming_the_plugin(
    plugin_path: Path,
) -> None:
    bad = GOOD.replace('input_schema={"type": "number"}', 'input_schema={"type": "numbr"}')
    fake_distribution(plugin_path, "acme-bad", {"bad": "acme_bad:Double"}, "acme_bad", bad)
    with pytest.raises(
        PluginError, match=r"'bad' of acme-bad .*input_schema.*not valid JSON Schema"
    ):
        build_catalog("img")
    # The real process: `python -m gpu_worker` refuses to start, exit 2, one line naming it.
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(plugin_path), str(REPO_ROOT / "functions"), str(REPO_ROOT)]
        ),
        "WORKER_QUEUE_URL": "http://127.0.0.1:9/q",
        "WORKER_DLQ_URL": "http://127.0.0.1:9/dlq",
        "WORKER_TABLE_NAME": "t",
        "WORKER_BUCKET": "b",
    }
    done = subprocess.run(
        [sys.executable, "-m", "gpu_worker"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert "acme-bad" in done.stderr and "not valid JSON Schema" in done.stderr


def test_worker_analyzers_narrows_and_preload_must_be_inside_it(stack: Stack) -> None:
    config = stack_worker_config(stack, worker_id="w", analyzers="echo,sleep")
    assert load_plugins(config).names() == ["echo", "sleep"]
    with pytest.raises(PluginError, match="not installed here: nope"):
        load_plugins(stack_worker_config(stack, worker_id="w", analyzers="echo,nope"))
    with pytest.raises(MissingSetting, match="outside WORKER_ANALYZERS: sleep"):
        stack_worker_config(stack, worker_id="w", analyzers="echo", preload="sleep").check()


# -- the catalog ---------------------------------------------------------------------------


def test_the_bundled_catalog_is_what_the_base_image_installs() -> None:
    """functions/spotline/catalog.json is `python -m gpu_worker --catalog --distribution
    spotline` of this tree: a changed analyzer without a regenerated catalog fails here."""
    bundled = Catalog.loads(bundled_catalog_path().read_text())
    fresh, _ = build_catalog(bundled.image, distributions=["spotline"])
    assert bundled.to_json() == fresh.to_json(), "run: make catalog"
    assert set(bundled.names()) == BUILT_INS and bundled.names(drills=False) == bundled.names()


def test_the_catalog_command_prints_what_the_api_loads(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gpu_worker", "--catalog", "--image", "acme:1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr
    path = tmp_path / "catalog.json"
    path.write_text(done.stdout)
    catalog = load_catalog(str(path))
    assert catalog.image == "acme:1" and set(catalog.names()) >= BUILT_INS | DRILLS
    listing = subprocess.run(
        [sys.executable, "-m", "gpu_worker", "--list-analyzers"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert listing.returncode == 0 and "text_embed" in listing.stdout


@pytest.mark.parametrize(
    "text, message",
    [
        ("not json", "not JSON"),
        ('{"format": 1}', "'analyzers' object"),
        ('{"format": 9, "analyzers": {}}', "format 9"),
        ('{"format": 1, "analyzers": {"x": {"distribution": "d"}}}', "'x' is malformed"),
        (
            '{"format": 1, "analyzers": {"x": {"distribution": "d", "version": "1", '
            '"entry_point": "m:f", "params_schema": {"type": 7}}}}',
            "invalid schema",
        ),
    ],
)
def test_a_malformed_catalog_is_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        Catalog.loads(text)


def production_policy() -> RequestPolicy:
    return RequestPolicy(catalog=Catalog.loads(bundled_catalog_path().read_text()))


def test_the_api_refuses_an_analyzer_the_fleet_lacks_listing_those_it_has() -> None:
    with pytest.raises(InvalidJob) as refused:
        validate_request({"analyzer": "double", "input": 1}, production_policy())
    (violation,) = refused.value.violations
    assert violation.path == "$.analyzer"
    assert violation.message == "unknown analyzer; accepted: echo, sleep, text_embed"
    assert "spotline-worker" in str(refused.value)  # the image the catalog came from


def test_a_bad_input_and_params_of_a_known_analyzer_name_every_failing_path() -> None:
    request = {
        "analyzer": "text_embed",
        "input": {"texts": ["ok", "", 3], "extra": True},
        "params": {"task": "translate", "batch_size": 0},
    }
    with pytest.raises(InvalidJob) as refused:
        validate_request(request, production_policy())
    paths = {v.path for v in refused.value.violations}
    assert {
        "$.input",
        "$.input.texts[1]",
        "$.input.texts[2]",
        "$.params.task",
        "$.params.batch_size",
    } <= paths


def test_declared_runtime_limits_lower_the_stacks_cap(plugin_path: Path) -> None:
    fake_distribution(
        plugin_path, "acme-double", {"double": "acme_double:Double"}, "acme_double", GOOD
    )
    catalog, _ = build_catalog("img")
    policy = RequestPolicy(catalog=catalog, max_runtime_s=3600)
    assert policy.runtime_limit_s({"analyzer": "double"}) == 30  # its declared default
    assert policy.runtime_limit_s({"analyzer": "double", "max_runtime_s": 50}) == 50
    assert policy.runtime_limit_s({"analyzer": "double", "max_runtime_s": 500}) == 60
    assert policy.runtime_limit_s({"analyzer": "echo"}) == 3600


# -- catalog drift: the worker refuses what it lacks, at once, naming its image ---------------


def test_a_job_for_an_analyzer_this_worker_lacks_is_dead_lettered_at_once_naming_the_image(
    stack: Stack, job_store: JobStore, queue: JobQueue
) -> None:
    config = stack_worker_config(
        stack,
        worker_id="drift",
        wait_s=0,
        metrics_sink="off",
        analyzers="echo",
        image="registry.example/acme-worker:7",
    )
    worker = Worker(
        config, sqs=boto3.client("sqs"), dynamodb=boto3.client("dynamodb"), s3=boto3.client("s3")
    )
    try:
        request: dict[str, Any] = {"analyzer": "sleep", "input": None}
        job_id = new_job_id()
        job_store.create(job_id, request)
        queue.send(JobMessage(job_id, request))
        worker.poll_once()
    finally:
        worker.supervisor.close()
    record = job_store.get(job_id)
    assert record.status == JobStatus.DEAD_LETTERED and record.attempts == 0
    assert record.last_error.kind == ErrorKind.INVALID_INPUT
    assert "'sleep'" in record.last_error.message
    assert "registry.example/acme-worker:7" in record.last_error.message
    dlq = JobQueue(boto3.client("sqs"), stack.ref("JobsDeadLetterQueue"))
    assert dlq.approximate_counts()[0] == 1 and worker.supervisor.restarts == 0
    assert json.loads(json.dumps(worker.catalog.names())) == ["echo"]
