"""The house's walls, read from the imports: each bundle carries only what it runs.

- The Lambda bundle (``CodeUri: functions/``) imports nothing outside itself but the standard
  library, the Lambda runtime's boto3 and ``functions/requirements.txt``: the operator tools
  (yaml, rich) live in ``tools/``.
- The shared package imports no function's module and no worker module.
- The worker image holds the worker and the shared package only.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.cfn import REPO_ROOT

FUNCTIONS = REPO_ROOT / "functions"
SHARED = FUNCTIONS / "spotline"
FUNCTION_PACKAGES = sorted(
    p.name for p in FUNCTIONS.iterdir() if (p / "__init__.py").exists() and p != SHARED
)
# What the Lambda runtime provides (boto3, botocore) and what functions/requirements.txt installs,
# by import name.
BUNDLE_THIRD_PARTY = {
    "boto3",
    "botocore",
    "aws_lambda_powertools",
    "aws_xray_sdk",
    "jsonschema",
    "requests",
    "urllib3",
}


def imported_roots(path: Path) -> Iterator[tuple[str, int]]:
    """The top-level name of every absolute import in a module, with its line."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], node.lineno


def modules(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def test_the_requirements_list_what_the_bundle_imports() -> None:
    pins = (FUNCTIONS / "requirements.txt").read_text(encoding="utf-8").splitlines()
    pins = [line for line in pins if line.strip() and not line.lstrip().startswith("#")]
    names = {re.split(r"[=<>\[]", line)[0].replace("-", "_") for line in pins}
    assert names <= BUNDLE_THIRD_PARTY


@pytest.mark.parametrize("path", modules(FUNCTIONS), ids=lambda p: str(p.relative_to(FUNCTIONS)))
def test_the_lambda_bundle_imports_only_itself_the_runtime_and_its_requirements(
    path: Path,
) -> None:
    allowed = set(sys.stdlib_module_names) | BUNDLE_THIRD_PARTY | {"spotline", *FUNCTION_PACKAGES}
    strays = [f"{root} (line {line})" for root, line in imported_roots(path) if root not in allowed]
    assert not strays, f"{path.relative_to(REPO_ROOT)} imports what the bundle lacks: {strays}"


@pytest.mark.parametrize("path", modules(SHARED), ids=lambda p: p.name)
def test_the_shared_package_imports_no_function_and_no_worker(path: Path) -> None:
    forbidden = {*FUNCTION_PACKAGES, "gpu_worker", "devstack", "spotline_ops"}
    hits = [f"{root} (line {line})" for root, line in imported_roots(path) if root in forbidden]
    assert not hits, f"{path.relative_to(REPO_ROOT)} imports a side's module: {hits}"


def test_the_operator_tools_are_outside_the_lambda_bundle() -> None:
    assert not list(FUNCTIONS.rglob("cli.py"))
    assert not list(FUNCTIONS.rglob("doctor.py"))
    assert (REPO_ROOT / "tools" / "spotline_ops" / "cli.py").exists()
    assert (REPO_ROOT / "tools" / "spotline_ops" / "doctor.py").exists()


def test_the_worker_image_copies_the_worker_and_the_shared_package_only() -> None:
    text = (REPO_ROOT / "gpu_worker" / "Dockerfile").read_text(encoding="utf-8")
    copied = re.findall(r"^COPY (\S+)", text, flags=re.MULTILINE)
    sources = {source for source in copied if not source.endswith((".txt", ".toml", ".md"))}
    assert sources == {"functions/spotline", "gpu_worker"}
