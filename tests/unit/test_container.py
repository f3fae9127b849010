"""The container settings that failures F1, F2 and F5 depend on, read from the files we ship."""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

import pytest
import setuptools
import yaml

from devstack.cfn import REPO_ROOT
from gpu_worker.memory import parse_bytes

COMPOSE = REPO_ROOT / "gpu_worker" / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "gpu_worker" / "Dockerfile"
INTERPOLATION = re.compile(r"^\$\{(?P<name>\w+):-(?P<default>[^}]+)\}$")


@pytest.fixture(scope="module")
def worker() -> dict[str, Any]:
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    service: dict[str, Any] = compose["services"]["worker"]
    return service


def env_with_default(value: str) -> tuple[str, str]:
    match = INTERPOLATION.match(str(value))
    assert match, f"{value!r} is not ${{VAR:-default}}"
    return match["name"], match["default"]


def test_init_and_restart_policy(worker: dict[str, Any]) -> None:
    assert worker["init"] is True  # SIGTERM reaches the supervisor, zombies are reaped
    assert worker["restart"] == "unless-stopped"


def test_memory_limit_comes_from_the_environment_and_leaves_host_headroom(
    worker: dict[str, Any],
) -> None:
    name, default = env_with_default(worker["mem_limit"])
    assert name == "WORKER_MEM_LIMIT"
    # compose's g is GiB; a g4dn.4xlarge has 64 GiB: keep at least 10 % for the host.
    assert default.endswith("g") and int(default[:-1]) * 2**30 <= 0.9 * 64 * 2**30
    assert env_with_default(worker["memswap_limit"]) == (name, default)  # no swap on top


def test_stop_grace_period_fits_the_two_minute_spot_notice(worker: dict[str, Any]) -> None:
    assert worker["stop_grace_period"] == "110s"
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"


def test_gpu_device_reservation(worker: dict[str, Any]) -> None:
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert device["count"] == "all"


def test_the_health_check_is_the_images_own(worker: dict[str, Any]) -> None:
    # compose and the fleet inherit the image's HEALTHCHECK (test_the_image_checks_its_own_health):
    # one definition, which asks the port the supervisor serves on every address of the container.
    assert "healthcheck" not in worker
    assert worker["environment"]["WORKER_HEALTH_PORT"] == "8080"
    assert worker["environment"]["WORKER_HEALTH_HOST"] == "0.0.0.0"
    assert worker["ports"] == ["127.0.0.1:8080:8080"]  # the host's loopback only


def test_the_worker_holds_no_capability_and_gains_none(worker: dict[str, Any]) -> None:
    assert worker["cap_drop"] == ["ALL"]
    assert "cap_add" not in worker and "privileged" not in worker
    assert "no-new-privileges:true" in worker["security_opt"]


def test_logs_rotate(worker: dict[str, Any]) -> None:
    logging = worker["logging"]
    if logging["driver"] == "json-file":
        assert parse_bytes(logging["options"]["max-size"].replace("m", "Mi")) <= 200 * 2**20
        assert int(logging["options"]["max-file"]) >= 2
    else:
        assert logging["driver"] == "awslogs"


def test_dockerfile_runs_the_supervisor_directly_as_non_root() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    instructions = [line for line in text.splitlines() if line and not line.startswith("#")]
    (base_arg,) = [line for line in instructions if line.startswith("ARG BASE_IMAGE=")]
    assert "nvidia/cuda" in base_arg
    assert "FROM ${BASE_IMAGE}" in instructions
    (user,) = [line for line in instructions if line.startswith("USER ")]
    assert user.split()[1].split(":")[0] not in {"root", "0"}
    (entrypoint,) = [line for line in instructions if line.startswith("ENTRYPOINT ")]
    argv = json.loads(entrypoint.removeprefix("ENTRYPOINT "))  # exec form: a JSON array
    assert argv == ["python3", "-m", "gpu_worker"]
    assert not any(line.startswith("CMD ") for line in instructions)


def _dockerfile_args() -> dict[str, str]:
    text = DOCKERFILE.read_text(encoding="utf-8")
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.MULTILINE))


def test_image_carries_the_model_with_the_locked_cuda_torch_on_the_smallest_base() -> None:
    args = _dockerfile_args()
    assert args["WITH_MODEL"] == "1", "a GPU worker image exists to run the real model"
    # The base by digest; -base, since the locked torch brings its CUDA libraries as wheels.
    base = re.fullmatch(
        r"nvidia/cuda:(\d+)\.(\d+)\.\d+-base-ubuntu24\.04@sha256:[0-9a-f]{64}", args["BASE_IMAGE"]
    )
    assert base is not None, args["BASE_IMAGE"]
    lock = (REPO_ROOT / "gpu_worker" / "requirements-model.txt").read_text(encoding="utf-8")
    model_pins = (REPO_ROOT / "requirements-model.in").read_text(encoding="utf-8")
    (torch_pin,) = re.findall(r"^torch==(\S+)$", model_pins, flags=re.MULTILINE)
    assert re.search(rf"^torch=={re.escape(torch_pin)} ", lock, flags=re.MULTILINE)
    # torch's CUDA libraries are of the base's CUDA major version (a cuXX suffix or cuda-toolkit).
    toolkit = re.search(r"^cuda-toolkit==(\d+)\.(\d+)", lock, flags=re.MULTILINE)
    assert toolkit is not None and (toolkit[1], toolkit[2]) == (base[1], base[2])
    assert f"nvidia-cudnn-cu{base[1]}==" in lock


def test_the_image_checks_its_own_health() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    joined = text.replace("\\\n", " ")  # continuation lines as one
    (line,) = [line for line in joined.splitlines() if line.startswith("HEALTHCHECK ")]
    assert "--start-period=180s" in line and "--retries=3" in line
    argv = json.loads(line.split("CMD", 1)[1].strip())  # exec form: no shell in the check
    assert argv == ["python3", "-m", "gpu_worker.healthcheck"]


def test_build_context_leaves_out_virtualenvs_and_build_output() -> None:
    ignored = (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert {".venv", ".venv-*", ".aws-sam", ".git"} <= set(ignored)
    text = DOCKERFILE.read_text(encoding="utf-8")
    copied = re.findall(r"^COPY (\S+)", text, flags=re.MULTILINE)
    for source in copied:  # nothing the Dockerfile copies is ignored
        assert source.split("/")[0] not in ignored, source


def test_the_image_installs_every_worker_package() -> None:
    """The image installs with ``pip install .`` (not editable): a package missing from
    pyproject's list would import in the tests and be absent from the image."""
    find = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]["find"]
    listed = {
        package
        for where in find["where"]
        for package in setuptools.find_packages(
            where=str(REPO_ROOT / where), include=find["include"]
        )
    }
    on_disk = {
        ".".join(init.parent.relative_to(REPO_ROOT).parts)
        for init in (REPO_ROOT / "gpu_worker").rglob("__init__.py")
    }
    assert on_disk <= listed, f"add to pyproject's packages: {sorted(on_disk - listed)}"
