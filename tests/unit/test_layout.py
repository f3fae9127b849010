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
# The SDK's testing helper drives the worker's real analysis child in an analyzer author's
# tests: it imports gpu_worker inside its function only (checked below), and no handler
# imports it, so neither the Lambda bundle nor the shared package depends on the worker.
SDK_TESTING = SHARED / "sdk" / "testing.py"
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
    "cryptography",
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


def bundle_modules(folder: Path) -> list[Path]:
    return [path for path in modules(folder) if path != SDK_TESTING]


@pytest.mark.parametrize(
    "path", bundle_modules(FUNCTIONS), ids=lambda p: str(p.relative_to(FUNCTIONS))
)
def test_the_lambda_bundle_imports_only_itself_the_runtime_and_its_requirements(
    path: Path,
) -> None:
    allowed = set(sys.stdlib_module_names) | BUNDLE_THIRD_PARTY | {"spotline", *FUNCTION_PACKAGES}
    strays = [f"{root} (line {line})" for root, line in imported_roots(path) if root not in allowed]
    assert not strays, f"{path.relative_to(REPO_ROOT)} imports what the bundle lacks: {strays}"


@pytest.mark.parametrize("path", bundle_modules(SHARED), ids=lambda p: p.name)
def test_the_shared_package_imports_no_function_and_no_worker(path: Path) -> None:
    forbidden = {*FUNCTION_PACKAGES, "gpu_worker", "devstack", "spotline_ops"}
    hits = [f"{root} (line {line})" for root, line in imported_roots(path) if root in forbidden]
    assert not hits, f"{path.relative_to(REPO_ROOT)} imports a side's module: {hits}"


def test_the_sdk_testing_helper_imports_the_worker_only_when_called() -> None:
    tree = ast.parse(SDK_TESTING.read_text(encoding="utf-8"))
    top = {root for node in tree.body for root, _ in imported_roots_of(node)}
    assert "gpu_worker" not in top
    nobody = [
        path
        for path in bundle_modules(FUNCTIONS)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom)
        and (
            node.module == "spotline.sdk.testing"
            or (
                node.module == "spotline.sdk"
                and any(alias.name == "testing" for alias in node.names)
            )
        )
    ]
    assert nobody == [], "no function imports the SDK's testing helper"


def imported_roots_of(node: ast.AST) -> Iterator[tuple[str, int]]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name.split(".")[0], node.lineno
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        yield node.module.split(".")[0], node.lineno


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


# -- sizes and import circles (issue 17's "done when") ----------------------------------------

MODULE_LINES = 400
CLASS_LINES = 250
SLACK = 1.05  # "about": a few lines over is not worth a split
LENGTH_NOTE = "Length note:"


def house_modules() -> list[Path]:
    return modules(REPO_ROOT / "gpu_worker") + modules(FUNCTIONS)


def test_modules_and_classes_stay_small_or_say_why() -> None:
    """No module over about 400 lines and no class over about 250, unless a note says why the
    length serves the reader (in the module's or the class's docstring)."""
    too_long = []
    for path in house_modules():
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        module_doc = ast.get_docstring(tree) or ""
        if len(text.splitlines()) > MODULE_LINES * SLACK and LENGTH_NOTE not in module_doc:
            too_long.append(f"{path.relative_to(REPO_ROOT)}: {len(text.splitlines())} lines")
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            noted = LENGTH_NOTE in (ast.get_docstring(node) or "") or LENGTH_NOTE in module_doc
            if lines > CLASS_LINES * SLACK and not noted:
                too_long.append(f"{path.relative_to(REPO_ROOT)}:{node.name}: {lines} lines")
    assert not too_long, too_long


def module_name(path: Path) -> str:
    """The import name of a module of the worker or of the Lambda bundle (whose root is
    ``functions/``, as on the Lambda runtime's path)."""
    root = FUNCTIONS if path.is_relative_to(FUNCTIONS) else REPO_ROOT
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def top_level_imports(path: Path, known: set[str]) -> set[str]:
    """Modules of the house this one imports when it is imported (not inside functions, not
    under ``if TYPE_CHECKING``), resolved to the longest known module name."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()

    def resolve(name: str) -> str | None:
        while name:
            if name in known:
                return name
            name = name.rpartition(".")[0]
        return None

    for node in tree.body:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            target = resolve(name)
            if target is not None and target != module_name(path):
                found.add(target)
    return found


def test_no_import_circle_between_modules() -> None:
    paths = house_modules()
    known = {module_name(p) for p in paths}
    graph = {module_name(p): top_level_imports(p, known) for p in paths}
    # A package imports its own submodules through __init__: that is not a circle of parts.
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, cycles
