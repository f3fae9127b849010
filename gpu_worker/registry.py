"""Which analyzers this worker runs: every installed distribution's ``spotline.analyzers``
entry points, narrowed by ``WORKER_ANALYZERS``; and the catalog they make.

``name = "package.module:factory"`` in an entry point makes ``factory`` (a class, or any callable
returning an analyzer) the analyzer ``name``. The built-ins register the same way (spotline's own
``pyproject.toml``), and so do the drills (``plugins/spotline-drills``): no list of names lives
anywhere else. At start the worker checks them all (``check_plugins``):

- two distributions claiming one name: an error naming both (the worker does not start);
- a declared schema that is not valid JSON Schema: an error naming the plug-in (no start);
- a plug-in that cannot be imported or whose factory raises: reported with its name and
  traceback, and left out; the others run.
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from aws_lambda_powertools import Logger
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from gpu_worker.config import WorkerConfig
from spotline.catalog import Catalog, CatalogEntry
from spotline.sdk import ENTRY_POINT_GROUP, Analyzer, AnalyzerSpec, InvalidInput, PermanentError
from spotline.settings import MissingSetting

logger = Logger(service="spotline-worker", child=True)


class PluginError(RuntimeError):
    """The installed plug-ins cannot make a working worker (a duplicate name, a bad schema)."""


class UnknownAnalyzer(InvalidInput):
    """A job for an analyzer this worker does not have."""


class AnalyzerNotInstalled(PermanentError):
    """An analyzer whose optional packages this worker lacks: retrying here cannot help."""


@dataclass(frozen=True)
class Plugin:
    name: str
    value: str  # "package.module:factory"
    distribution: str
    version: str

    def load(self) -> Callable[[], Analyzer]:
        factory: Callable[[], Analyzer] = metadata.EntryPoint(
            self.name, self.value, ENTRY_POINT_GROUP
        ).load()
        return factory


@dataclass(frozen=True)
class BrokenPlugin:
    name: str
    distribution: str
    error: str  # the traceback, as the worker's log shows it


def _dist_of(entry_point: metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        return "unknown", ""
    return str(dist.metadata["Name"]), str(dist.version)


@functools.cache
def discover() -> dict[str, Plugin]:
    """Every analyzer entry point installed here, by name. Raises PluginError when two
    distributions claim one name (the same distribution seen twice on the path is one)."""
    found: dict[str, Plugin] = {}
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist, version = _dist_of(entry_point)
        plugin = Plugin(entry_point.name, entry_point.value, dist, version)
        seen = found.get(plugin.name)
        if seen is not None and (seen.distribution, seen.value) != (dist, plugin.value):
            raise PluginError(
                f"analyzer {plugin.name!r} is claimed by two distributions: "
                f"{seen.distribution} ({seen.value}) and {dist} ({plugin.value})"
            )
        found[plugin.name] = plugin
    return found


def spec_of(analyzer: Any) -> AnalyzerSpec:
    """The analyzer's declared contract (its ``spec`` attribute), or the default (any input,
    a params object, the stack's limits) when it declares none."""
    spec = getattr(analyzer, "spec", None)
    if spec is None:
        return AnalyzerSpec()
    if not isinstance(spec, AnalyzerSpec):
        raise TypeError(f"spec must be a spotline.sdk.AnalyzerSpec, not {type(spec).__name__}")
    return spec


def _checked_entry(plugin: Plugin, analyzer: Any) -> CatalogEntry:
    try:
        spec = spec_of(analyzer)
    except TypeError as exc:
        raise PluginError(f"analyzer {plugin.name!r} of {plugin.distribution}: {exc}") from None
    for what, schema in (
        ("input_schema", spec.input_schema),
        ("params_schema", spec.params_schema),
    ):
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            raise PluginError(
                f"analyzer {plugin.name!r} of {plugin.distribution} ({plugin.value}) declares "
                f"an {what} that is not valid JSON Schema: {exc.message}"
            ) from None
    return CatalogEntry(
        name=plugin.name,
        distribution=plugin.distribution,
        version=plugin.version,
        entry_point=plugin.value,
        input_schema=spec.input_schema,
        params_schema=spec.params_schema,
        limits=spec.limits.to_json(),
        drill=spec.drill,
        description=spec.description or _first_line(type(analyzer).__doc__),
    )


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().split("\n\n")[0].replace("\n", " ")[:300]


def build_catalog(
    image: str,
    *,
    only: Iterable[str] | None = None,
    distributions: Iterable[str] | None = None,
) -> tuple[Catalog, list[BrokenPlugin]]:
    """The catalog of the analyzers installed here (``only``: WORKER_ANALYZERS; ``distributions``:
    only those distributions' analyzers). Broken plug-ins are returned, not raised; a duplicate
    name or an invalid schema raises PluginError."""
    plugins = discover()
    names = set(plugins) if only is None else set(only)
    unknown = sorted(names - set(plugins))
    if unknown:
        raise PluginError(
            f"WORKER_ANALYZERS names analyzers not installed here: {', '.join(unknown)} "
            f"(installed: {', '.join(sorted(plugins))})"
        )
    wanted_dists = None if distributions is None else {d.lower() for d in distributions}
    entries: dict[str, CatalogEntry] = {}
    broken: list[BrokenPlugin] = []
    for name in sorted(names):
        plugin = plugins[name]
        if wanted_dists is not None and plugin.distribution.lower() not in wanted_dists:
            continue
        try:
            # Import and construct it, as the analysis child will (construction must be cheap:
            # ``load()`` is where a model loads).
            analyzer = plugin.load()()
        except Exception:  # noqa: BLE001 - one broken plug-in must not take the others down
            broken.append(BrokenPlugin(name, plugin.distribution, traceback.format_exc()))
            continue
        entries[name] = _checked_entry(plugin, analyzer)
    return Catalog(image=image, entries=entries), broken


def create(name: str) -> Analyzer:
    """A new analyzer object for ``name`` (in the analysis child); UnknownAnalyzer if this
    environment has no such entry point."""
    plugin = discover().get(name)
    if plugin is None:
        raise UnknownAnalyzer(f"no analyzer named {name!r} in this worker")
    analyzer = plugin.load()()
    missing = missing_requirements(analyzer)
    if missing:
        install = getattr(analyzer, "install_hint", "install its extra")
        raise AnalyzerNotInstalled(
            f"analyzer {name!r} is not installed in this worker (no {', '.join(missing)}): "
            f"install it with {install}"
        )
    return analyzer


def missing_requirements(analyzer: Any) -> list[str]:
    """What an analyzer behind an optional extra lacks here (its ``missing_requirements()``,
    if it has one): such an analyzer is in the catalog but not usable on this worker."""
    check = getattr(analyzer, "missing_requirements", None)
    return list(check()) if callable(check) else []


def usable_names() -> list[str]:
    """The installed analyzers whose requirements are importable here (a broken one is not)."""
    usable = []
    for name, plugin in sorted(discover().items()):
        try:
            if not missing_requirements(plugin.load()()):
                usable.append(name)
        except Exception:  # noqa: BLE001 - broken ones are not usable
            continue
    return usable


def load_plugins(config: WorkerConfig) -> Catalog:
    """The catalog this worker runs by (at start): its installed analyzers, narrowed by
    ``WORKER_ANALYZERS``. Broken plug-ins are logged with their traceback and left out;
    PluginError (duplicate, invalid schema) or MissingSetting (a preload it lacks) stop it."""
    catalog, broken = build_catalog(config.image, only=config.analyzer_names or None)
    for plugin in broken:
        logger.error(
            "analyzer plug-in is broken; the others run",
            extra={"analyzer": plugin.name, "distribution": plugin.distribution},
            exc_info=False,
        )
        logger.error(plugin.error)
    missing = [name for name in config.preload_names if catalog.get(name) is None]
    if missing:
        raise MissingSetting(
            f"WORKER_PRELOAD names analyzers this worker lacks: {', '.join(missing)} "
            f"(installed: {', '.join(catalog.names()) or 'none'})"
        )
    logger.info(
        "analyzers",
        extra={"analyzers": catalog.names(), "image": config.image, "digest": catalog.digest()},
    )
    return catalog
