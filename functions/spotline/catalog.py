"""The analyzer catalog: what the fleet's worker image runs, as the API checks it.

A catalog is produced from the worker image (``python -m gpu_worker --catalog``: every
analyzer its installed distributions declare in the ``spotline.analyzers`` entry-point group,
with each one's schemas and limits) and travels inside the Lambda bundle as
``spotline/catalog.json``, so ``POST /jobs`` accepts exactly the analyzers, inputs and params
the fleet runs. Why a file in the bundle: a deploy ships the catalog and the image tag together
(``make push`` regenerates it from the pushed image), a rollback rolls both back, a cold start
reads it from local disk (no AWS call, no first-deploy chicken and egg), and the doctor compares
its ``image`` with the stack's ``WorkerImage``. ``ANALYZER_CATALOG_FILE`` points elsewhere
(devstack and the tests, whose environment also holds the drill plug-in).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from spotline.violations import SchemaViolation, describe_error, json_path

CATALOG_FORMAT = 1
CATALOG_FILE_ENV = "ANALYZER_CATALOG_FILE"


class CatalogError(ValueError):
    """A catalog file that cannot be read or does not have the catalog's shape."""


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    distribution: str
    version: str
    entry_point: str
    input_schema: dict[str, Any] = field(default_factory=dict)
    params_schema: dict[str, Any] = field(default_factory=lambda: {"type": "object"})
    limits: dict[str, Any] = field(default_factory=dict)
    drill: bool = False
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "distribution": self.distribution,
            "version": self.version,
            "entry_point": self.entry_point,
            "description": self.description,
            "drill": self.drill,
            "limits": self.limits,
            "input_schema": self.input_schema,
            "params_schema": self.params_schema,
        }

    @classmethod
    def from_json(cls, name: str, data: dict[str, Any]) -> CatalogEntry:
        try:
            return cls(
                name=name,
                distribution=str(data["distribution"]),
                version=str(data["version"]),
                entry_point=str(data["entry_point"]),
                input_schema=dict(data.get("input_schema", {})),
                params_schema=dict(data.get("params_schema", {"type": "object"})),
                limits=dict(data.get("limits", {})),
                drill=bool(data.get("drill", False)),
                description=str(data.get("description", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CatalogError(f"catalog entry {name!r} is malformed: {exc}") from None

    def limit(self, key: str) -> Any:
        return self.limits.get(key)

    @functools.cached_property
    def input_validator(self) -> Draft202012Validator:
        return Draft202012Validator(self.input_schema)

    @functools.cached_property
    def params_validator(self) -> Draft202012Validator:
        return Draft202012Validator(self.params_schema)

    def input_errors(self, value: Any) -> list[ValidationError]:
        return sorted(self.input_validator.iter_errors(value), key=lambda e: list(e.path))

    def params_errors(self, value: Any) -> list[ValidationError]:
        return sorted(self.params_validator.iter_errors(value), key=lambda e: list(e.path))


@dataclass(frozen=True)
class Catalog:
    image: str
    entries: dict[str, CatalogEntry]

    def names(self, *, drills: bool = True) -> list[str]:
        return sorted(n for n, e in self.entries.items() if drills or not e.drill)

    def get(self, name: str) -> CatalogEntry | None:
        return self.entries.get(name)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": CATALOG_FORMAT,
            "image": self.image,
            "analyzers": {name: self.entries[name].to_json() for name in sorted(self.entries)},
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"

    def digest(self) -> str:
        """sha256 of the analyzers part (not the image name): two images with the same
        analyzers have the same digest."""
        body = json.dumps(self.to_json()["analyzers"], sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()

    def memory_need_bytes(self, name: str) -> int | None:
        """The memory one job of ``name`` declares it needs (``AnalyzerLimits.memory_mib``)."""
        entry = self.get(name)
        mib = entry.limit("memory_mib") if entry is not None else None
        return int(mib) * 1024 * 1024 if isinstance(mib, int) and mib > 0 else None

    def input_limit(self, name: str, default: int) -> int:
        """The largest input a job of ``name`` may have: ``default`` (the worker's), lowered
        by the analyzer's declared ``max_input_bytes``."""
        entry = self.entries.get(name)
        declared = entry.limit("max_input_bytes") if entry is not None else None
        return min(default, int(declared)) if declared else default

    def narrowed(self, names: Iterable[str]) -> Catalog:
        keep = set(names)
        return Catalog(self.image, {n: e for n, e in self.entries.items() if n in keep})

    @classmethod
    def from_json(cls, data: Any, *, check_schemas: bool = True) -> Catalog:
        if not isinstance(data, dict) or not isinstance(data.get("analyzers"), dict):
            raise CatalogError("a catalog is an object with an 'analyzers' object")
        if data.get("format") != CATALOG_FORMAT:
            raise CatalogError(f"catalog format {data.get('format')!r}; expected {CATALOG_FORMAT}")
        entries = {
            name: CatalogEntry.from_json(name, entry) for name, entry in data["analyzers"].items()
        }
        for entry in entries.values() if check_schemas else ():
            for schema in (entry.input_schema, entry.params_schema):
                try:
                    Draft202012Validator.check_schema(schema)
                except Exception as exc:  # noqa: BLE001 - SchemaError and its kin
                    raise CatalogError(
                        f"catalog entry {entry.name!r} has an invalid schema: "
                        f"{getattr(exc, 'message', exc)}"
                    ) from None
        return cls(image=str(data.get("image", "")), entries=entries)

    @classmethod
    def loads(cls, text: str, *, check_schemas: bool = True) -> Catalog:
        try:
            return cls.from_json(json.loads(text), check_schemas=check_schemas)
        except json.JSONDecodeError as exc:
            raise CatalogError(f"catalog is not JSON: {exc}") from None


def bundled_catalog_path() -> Path:
    return Path(str(resources.files("spotline").joinpath("catalog.json")))


@functools.cache
def _load(path: str) -> Catalog:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"cannot read the analyzer catalog {path}: {exc.strerror}") from None
    # The schemas were checked when the catalog was made (python -m gpu_worker --catalog, and
    # the doctor and a test check the bundled one): checking the metaschema again costs a cold
    # start about 50 ms.
    return Catalog.loads(text, check_schemas=False)


def load_catalog(path: str | None = None) -> Catalog:
    """The deployed catalog (``ANALYZER_CATALOG_FILE``, else the bundled one), read once."""
    return _load(path or os.environ.get(CATALOG_FILE_ENV) or str(bundled_catalog_path()))


def catalog_violations(
    request: dict[str, Any], catalog: Catalog, *, drills: bool
) -> tuple[str, list[SchemaViolation]]:
    """Whether the analyzer is in the catalog (and not a drill where drills are off), and the
    request's ``input`` and ``params`` match its declared schemas: a summary and every failing
    path (none when the request fits)."""
    analyzer = request.get("analyzer")
    entry = catalog.get(analyzer) if isinstance(analyzer, str) else None
    accepted = ", ".join(catalog.names(drills=drills)) or "none"
    if entry is None:
        image = f" (image {catalog.image})" if catalog.image else ""
        return f"analyzer {analyzer!r} is not in this stack's catalog{image}", [
            SchemaViolation("$.analyzer", f"unknown analyzer; accepted: {accepted}")
        ]
    if entry.drill and not drills:
        return f"analyzer {analyzer!r} is a drill, not enabled on this stack", [
            SchemaViolation("$.analyzer", f"drill analyzers are off; accepted: {accepted}")
        ]
    violations: list[SchemaViolation] = []
    if "input" in request:
        violations += _violations(entry.input_errors(request["input"]), ["input"])
        largest = entry.limit("max_input_bytes")
        if largest and len(json.dumps(request["input"]).encode()) > int(largest):
            violations.append(SchemaViolation("$.input", f"larger than {largest} bytes"))
    if isinstance(request.get("params", {}), dict):
        violations += _violations(entry.params_errors(request.get("params", {})), ["params"])
    return f"the request does not match analyzer {analyzer!r}", violations


def _violations(errors: list[Any], prefix: list[Any]) -> list[SchemaViolation]:
    found: list[SchemaViolation] = []
    for error in errors:
        leaf = best_match([error]) if error.context else error
        item = SchemaViolation(json_path([*prefix, *leaf.absolute_path]), describe_error(leaf))
        if item not in found:
            found.append(item)
    return found
