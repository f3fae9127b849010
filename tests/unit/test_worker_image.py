"""``make image`` and ``make push`` (tools/worker_image.sh) against fake docker and aws: the calls
they make, in order, and what they refuse. Everything but the AWS calls themselves runs here."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from devstack.cfn import REPO_ROOT, load_template
from tests.unit.cli_fakes import FakeTools

SCRIPT = REPO_ROOT / "tools" / "worker_image.sh"
REPOSITORY = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/spotline-prod-workerrepository-x1y2"
PASSWORD = "eyJwYXlsb2FkIjoi-not-a-real-token"
CATALOG = {"analyzers": {"embedder": {"input_schema": {"type": "object"}}}}
# Settings a developer's shell may hold; each test gives its own.
SETTINGS = (
    "ANALYZER_DIR",
    "TAG",
    "STACK_NAME",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "CATALOG",
    "PLATFORM",
    "WITH_MODEL",
)


@pytest.fixture
def tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeTools:
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    fakes = FakeTools(tmp_path / "fakes")
    fakes.answer("aws", "cloudformation", "describe-stacks", stdout=REPOSITORY + "\n")
    fakes.answer("aws", "ecr", "get-login-password", stdout=PASSWORD + "\n")
    fakes.answer("docker", "run", stdout=json.dumps(CATALOG))
    return fakes


@pytest.fixture
def analyzer(tmp_path: Path) -> Path:
    package = tmp_path / "My_Analyzer"
    package.mkdir()
    (package / "Dockerfile").write_text(
        (REPO_ROOT / "examples" / "kmeans" / "Dockerfile").read_text(encoding="utf-8")
    )
    return package


def run(tools: FakeTools, command: str, **settings: str) -> subprocess.CompletedProcess[str]:
    return tools.run(["bash", str(SCRIPT), command], cwd=REPO_ROOT, env=settings)


def test_push_logs_in_builds_tags_pushes_and_writes_the_catalog_from_the_pushed_image(
    tools: FakeTools, analyzer: Path, tmp_path: Path
) -> None:
    catalog = tmp_path / "catalog.json"
    catalog.write_text("{}", encoding="utf-8")

    done = run(
        tools,
        "push",
        ANALYZER_DIR=str(analyzer),
        TAG="3f2c1ab",
        STACK_NAME="spotline-prod",
        AWS_REGION="eu-west-1",
        CATALOG=str(catalog),
    )

    assert done.returncode == 0, done.stderr
    calls = tools.calls()
    argvs = [call["argv"] for call in calls]
    assert [argv[:2] for argv in argvs] == [
        ["aws", "cloudformation"],
        ["aws", "ecr"],
        ["docker", "login"],
        ["docker", "build"],  # the base
        ["docker", "tag"],  # the base, local only
        ["docker", "build"],  # yours, FROM the base
        ["docker", "tag"],
        ["docker", "push"],
        ["docker", "run"],
    ]
    describe, password, login, base, local_tag, yours, tag, push, catalog_run = argvs
    assert describe[2:] == [
        "describe-stacks",
        "--stack-name",
        "spotline-prod",
        "--region",
        "eu-west-1",
        "--query",
        "Stacks[0].Outputs[?OutputKey=='WorkerRepositoryUri'].OutputValue",
        "--output",
        "text",
    ]
    assert password[2:] == ["get-login-password", "--region", "eu-west-1"]
    registry = REPOSITORY.split("/")[0]
    assert login[2:] == ["--username", "AWS", "--password-stdin", registry]
    assert calls[2]["stdin"] == PASSWORD + "\n"
    assert not any(PASSWORD in arg for argv in argvs for arg in argv)  # never on a command line
    assert base[base.index("-f") + 1] == "gpu_worker/Dockerfile"
    assert base[base.index("-t") + 1] == "spotline-worker:3f2c1ab" and base[-1] == "."
    assert base[base.index("--platform") + 1] == "linux/amd64"
    assert local_tag[2:] == ["spotline-worker:3f2c1ab", "spotline-worker:latest"]
    assert yours[yours.index("-t") + 1] == "spotline-worker-my_analyzer:3f2c1ab"
    assert "SPOTLINE_WORKER=spotline-worker:3f2c1ab" in yours and yours[-1] == str(analyzer)
    assert tag[2:] == ["spotline-worker-my_analyzer:3f2c1ab", f"{REPOSITORY}:3f2c1ab"]
    assert push[2:] == [f"{REPOSITORY}:3f2c1ab"]
    image_at = catalog_run.index(f"{REPOSITORY}:3f2c1ab")
    assert catalog_run[catalog_run.index("--entrypoint") + 1] == "python3"
    assert catalog_run.index("--entrypoint") < image_at  # docker run's options come first
    assert catalog_run[image_at + 1 :] == ["-m", "gpu_worker", "--catalog"]
    assert "--rm" in catalog_run and catalog_run[catalog_run.index("--network") + 1] == "none"
    # The catalog names the image it came from (gpu_worker --catalog reads WORKER_IMAGE).
    assert catalog_run[catalog_run.index("--env") + 1] == f"WORKER_IMAGE={REPOSITORY}:3f2c1ab"
    assert json.loads(catalog.read_text(encoding="utf-8")) == CATALOG
    assert "WorkerImageTag=3f2c1ab" in done.stdout  # what to deploy next


def test_image_without_analyzer_dir_says_what_to_give_and_runs_nothing(tools: FakeTools) -> None:
    done = run(tools, "build", TAG="3f2c1ab")

    assert done.returncode == 2
    assert "ANALYZER_DIR is not set" in done.stderr and "make image ANALYZER_DIR=" in done.stderr
    assert "examples/kmeans/Dockerfile" in done.stderr
    assert tools.calls() == []


def test_an_empty_analyzer_dir_builds_the_base_alone(tools: FakeTools) -> None:
    done = run(tools, "build", ANALYZER_DIR="", TAG="3f2c1ab", WITH_MODEL="0")

    assert done.returncode == 0, done.stderr
    (base, local_tag) = tools.argvs()
    assert base[:2] == ["docker", "build"] and "WITH_MODEL=0" in base
    assert local_tag == ["docker", "tag", "spotline-worker:3f2c1ab", "spotline-worker:latest"]
    assert "built spotline-worker:3f2c1ab" in done.stdout


def test_an_analyzer_dir_without_a_dockerfile_is_refused(tools: FakeTools, tmp_path: Path) -> None:
    done = run(tools, "build", ANALYZER_DIR=str(tmp_path), TAG="3f2c1ab")

    assert done.returncode == 2 and "has no Dockerfile" in done.stderr
    assert tools.calls() == []


def test_a_tag_docker_would_refuse_is_refused_first(tools: FakeTools, analyzer: Path) -> None:
    done = run(tools, "build", ANALYZER_DIR=str(analyzer), TAG="-not a tag")

    assert done.returncode == 2 and "is not a docker tag" in done.stderr
    assert tools.calls() == []


def test_push_to_a_stack_without_the_repository_output_stops_before_docker(
    tools: FakeTools, analyzer: Path
) -> None:
    tools.answer("aws", "cloudformation", "describe-stacks", stdout="None\n", first=True)

    done = run(tools, "push", ANALYZER_DIR=str(analyzer), TAG="3f2c1ab", STACK_NAME="old")

    assert done.returncode == 2
    assert "stack old (us-east-1) has no output WorkerRepositoryUri" in done.stderr
    assert [argv[0] for argv in tools.argvs()] == ["aws"]


def test_a_failed_login_stops_before_the_long_build(tools: FakeTools, analyzer: Path) -> None:
    tools.answer("docker", "login", exit_code=1, first=True)

    done = run(tools, "push", ANALYZER_DIR=str(analyzer), TAG="3f2c1ab")

    assert done.returncode != 0
    assert [argv[:2] for argv in tools.argvs()] == [
        ["aws", "cloudformation"],
        ["aws", "ecr"],
        ["docker", "login"],
    ]


@pytest.mark.parametrize(
    ("printed", "exit_code"),
    [("Traceback (most recent call last):\n", 0), ('{"analyzers": ', 1)],
    ids=["not-json", "run-failed"],
)
def test_a_bad_catalog_leaves_the_previous_catalog_whole(
    tools: FakeTools, analyzer: Path, tmp_path: Path, printed: str, exit_code: int
) -> None:
    catalog = tmp_path / "catalog.json"
    catalog.write_text('{"analyzers": {}}', encoding="utf-8")
    tools.answer("docker", "run", stdout=printed, exit_code=exit_code, first=True)

    done = run(tools, "push", ANALYZER_DIR=str(analyzer), TAG="3f2c1ab", CATALOG=str(catalog))

    assert done.returncode != 0
    assert catalog.read_text(encoding="utf-8") == '{"analyzers": {}}'
    leftovers = sorted(p.name for p in tmp_path.glob("catalog.json.*"))
    if exit_code:  # the run failed: nothing of it is kept
        assert leftovers == []
    else:  # kept for a look, and said so
        assert len(leftovers) == 1 and "is not JSON" in done.stderr


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_the_default_tag_is_both_checkouts_short_shas_and_marks_uncommitted_changes(
    tools: FakeTools, analyzer: Path
) -> None:
    _git(analyzer, "init", "-q")
    _git(analyzer, "-c", "user.name=t", "-c", "user.email=t@example.com", "add", ".")
    _git(analyzer, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "one")
    (analyzer / "model.py").write_text("# not committed yet\n", encoding="utf-8")

    done = run(tools, "build", ANALYZER_DIR=str(analyzer))

    assert done.returncode == 0, done.stderr
    theirs = _git(analyzer, "rev-parse", "--short", "HEAD")
    ours = _git(REPO_ROOT, "rev-parse", "--short", "HEAD")
    image = tools.argvs()[-1][tools.argvs()[-1].index("-t") + 1]
    assert re.fullmatch(rf"spotline-worker-my_analyzer:{theirs}-{ours}-dirty-\d{{14}}", image)


def test_the_default_tag_fits_the_templates_tag_pattern() -> None:
    pattern = load_template()["Parameters"]["WorkerImageTag"]["AllowedPattern"]
    script = SCRIPT.read_text(encoding="utf-8")
    (checked,) = re.findall(r"\[\[ \$TAG =~ (\S+) \]\]", script)
    assert pattern == f"^$|{checked}"  # what make push accepts, the stack accepts


def make(tools: FakeTools, *args: str) -> subprocess.CompletedProcess[str]:
    return tools.run(["make", "--no-print-directory", *args], cwd=REPO_ROOT)


@pytest.mark.usefixtures("outside_make")
def test_make_image_builds_the_example_by_default_and_the_base_alone_when_asked(
    tools: FakeTools,
) -> None:
    done = make(tools, "image", "TAG=3f2c1ab")

    assert done.returncode == 0, done.stderr
    base, _, example = tools.argvs()
    assert base[base.index("-t") + 1] == "spotline-worker:3f2c1ab"
    assert example[-1] == str(REPO_ROOT / "examples" / "kmeans")
    assert example[example.index("-t") + 1] == "spotline-worker-kmeans:3f2c1ab"

    tools.log.unlink()
    alone = make(tools, "image", "TAG=3f2c1ab", "ANALYZER_DIR=")
    assert alone.returncode == 0, alone.stderr
    assert [argv[1] for argv in tools.argvs()] == ["build", "tag"]


@pytest.mark.usefixtures("outside_make")
def test_make_push_runs_the_push_recipe(tools: FakeTools) -> None:
    shown = make(tools, "-n", "push")

    assert shown.stdout.strip() == "ANALYZER_DIR='examples/kmeans' tools/worker_image.sh push"


@pytest.fixture
def outside_make(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under `make test` these tests run make inside make: the outer one's flags stay out."""
    for name in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS"):
        monkeypatch.delenv(name, raising=False)
