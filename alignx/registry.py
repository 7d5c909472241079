"""The plugin registry: one name -> object table per kind, filled from entry points.

Contract (stable, user-visible):

* ``[project.entry-points."alignx.plugins"] name = "pkg.module:register"`` — called as
  ``register(registry)``; it registers objectives, tasks, dataset sources, models, adapters,
  rewards and row formats by name.
* ``[project.entry-points."alignx.conf"] name = "pkg.conf"`` — a package of config-group YAMLs.
  It is located on disk and appended to Hydra's search path; it is never imported.

Registration is lazy where the plugin wants it to be: ``registry.register(kind, name,
"pkg.module:attr")`` records the import path and imports it the first time the entry is used
(``get``), so listing plugins, ``--help`` and config errors never import torch or a plugin's heavy
code. alignx's own built-ins register this way, through the same two groups. A plugin that raises
while loading is named in a warning, listed by ``alignx plugins`` as failed and skipped; a
duplicate name is an error naming both providers. Setting
``ALIGNX_DISABLE_PLUGIN_AUTOLOAD=1`` loads only alignx's own entry points, plus any listed in
``ALIGNX_PLUGINS=name,name``.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import logging
import re
import os
import sys
import warnings
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from alignx.errors import PluginError

PLUGINS_GROUP = "alignx.plugins"
CONF_GROUP = "alignx.conf"
DISABLE_ENV = "ALIGNX_DISABLE_PLUGIN_AUTOLOAD"
ENABLE_ENV = "ALIGNX_PLUGINS"
#: the distribution whose entry points always load
CORE_DIST = "alignx"

#: kinds of things a plugin can register, with what the registered object is
KINDS: dict[str, str] = {
    "objective": "LightningModule class (subclass of alignx.objectives.Objective)",
    "task": "builtin task class (subclass of alignx.tasks.Task) with a gold reward",
    "dataset": "dataset source loader: (cfg, kind, split, seed) -> list[dict]",
    "model": "model builder: (cfg, tokenizer_or_None) -> (model, tokenizer)",
    "adapter": "adapter: (model, cfg) -> model",
    "reward": "reward function: (prompts, completions) -> list[float], or a factory marked with "
    "alignx.rewards.reward_factory that takes config options and returns one",
    "format": "row format: (raw row: dict, dataset cfg) -> dict in a canonical schema (applied before validation)",
    "preference_loss": "DPO-family loss for objective.loss: an alignx.losses.PreferenceLoss (one function plus "
    "needs_reference, length_normalised, needs_nll)",
    "benchmark": "closed-set benchmark for eval.benchmarks: () -> alignx.evaluation.benchmarks.Benchmark (items, "
    "scored by multiple choice log-likelihood or exact-match generation)",
}

T = TypeVar("T")
log = logging.getLogger("alignx.registry")


class PluginLoadWarning(UserWarning):
    """A plugin failed to load; the others keep working."""


#: ``pkg.module:attr`` (attr may be dotted: ``pkg.module:Class.method``)
_LAZY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


@dataclass(frozen=True)
class PluginFailure:
    """A plugin entry point that failed to load (``stage``: ``import`` or ``register``)."""

    entry_point: str
    provider: str
    stage: str
    error: str


class Entry:
    """One registration: ``kind``/``name`` -> an object, or the ``pkg.module:attr`` path it is imported from."""

    def __init__(self, kind: str, name: str, obj: Any, provider: str) -> None:
        self.kind, self.name, self.provider = kind, name, provider
        self._lazy = isinstance(obj, str)
        self._obj = None if self._lazy else obj
        self.target = obj if self._lazy else _describe(obj)

    @property
    def path(self) -> str | None:
        """The ``pkg.module:attr`` path the entry was registered by (None: registered as an object)."""
        return self.target if self._lazy else None

    @property
    def loaded(self) -> bool:
        return not self._lazy or self._obj is not None

    @property
    def obj(self) -> Any:
        """The registered object, imported on first access for a lazy entry."""
        if self._obj is None and self._lazy:
            self._obj = _import_path(self.target, self)
            log.debug("imported %s '%s' from %s (%s)", self.kind, self.name, self.target, self.provider)
        return self._obj


def _describe(obj: Any) -> str:
    """``module:qualname`` of what a reader would look up (a preference loss: its function)."""
    target = getattr(obj, "fn", obj) if type(obj).__name__ == "PreferenceLoss" else obj
    qualname = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"{getattr(target, '__module__', None) or type(target).__module__}:{qualname}"


def _import_path(path: str, entry: Entry) -> Any:
    module_name, _, attrs = path.partition(":")
    where = f"{entry.kind} '{entry.name}' (registered by '{entry.provider}' as {path})"
    try:
        obj = importlib.import_module(module_name)
        for attr in attrs.split("."):
            obj = getattr(obj, attr)
    except AttributeError as exc:
        raise PluginError(f"{where} cannot be loaded: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - whatever a plugin's module raises, name the plugin
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise PluginError(f"{where} cannot be loaded: {type(exc).__name__}: {first}") from exc
    return obj


class Registry:
    """Name -> object tables, one per kind in :data:`KINDS`."""

    def __init__(self) -> None:
        self._tables: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self._provider = "<direct>"
        #: plugins that failed to import or raised in ``register`` (listed by ``alignx plugins``)
        self.failures: list[PluginFailure] = []

    # -- registration --------------------------------------------------------------
    def register(self, kind: str, name: str, obj: T, *, provider: str | None = None) -> T:
        """Register ``obj`` as ``name`` of ``kind``; raise PluginError on a duplicate name.

        ``obj`` may be a ``"pkg.module:attr"`` string: the module is imported the first time the
        entry is used, so a plugin whose objects need torch can still be listed in milliseconds.
        """
        table = self._table(kind)
        if isinstance(obj, str) and not _LAZY.fullmatch(obj):
            raise PluginError(f"{kind} '{name}': a string registration must be an import path 'pkg.module:attr', got {obj!r}")
        provider = provider or self._provider
        if name in table:
            other = table[name].provider
            raise PluginError(
                f"duplicate {kind} '{name}': registered by '{other}' and again by '{provider}'. "
                f"Uninstall one of them or rename the {kind}."
            )
        table[name] = Entry(kind, name, obj, provider)
        return obj

    def add(self, kind: str, name: str | None = None) -> Callable[[T], T]:
        """Decorator form of :meth:`register`; the name defaults to ``obj.name``."""

        def deco(obj: T) -> T:
            self.register(kind, name or getattr(obj, "name"), obj)
            return obj

        return deco

    # -- lookup ----------------------------------------------------------------------
    def get(self, kind: str, name: str) -> Any:
        """Return the object registered as ``name``; a miss lists the valid names."""
        table = self._table(kind)
        if name not in table:
            valid = sorted(table)
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise PluginError(f"unknown {kind} '{name}'. Valid {_plural(kind)}: {', '.join(valid) or '(none)'}.{hint}")
        return table[name].obj

    def check(self, kind: str, name: str) -> None:
        """Raise what :meth:`get` raises for an unknown name, without importing a lazy entry."""
        if name not in self._table(kind):
            self.get(kind, name)

    def names(self, kind: str) -> list[str]:
        return sorted(self._table(kind))

    def entries(self) -> Iterator[Entry]:
        for kind in KINDS:
            yield from sorted(self._tables[kind].values(), key=lambda e: e.name)

    def __contains__(self, key: tuple[str, str]) -> bool:
        kind, name = key
        return name in self._table(kind)

    def _table(self, kind: str) -> dict[str, Entry]:
        if kind not in self._tables:
            raise PluginError(f"unknown registry kind '{kind}'. Valid kinds: {', '.join(KINDS)}")
        return self._tables[kind]


def _plural(kind: str) -> str:
    return f"{kind}es" if kind.endswith("s") else f"{kind}s"


def _dist_name(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else "<unknown>"


def _selected(group: str) -> list[EntryPoint]:
    """Entry points of ``group`` that autoload policy allows, alignx's own first."""
    eps = list(entry_points(group=group))
    if os.environ.get(DISABLE_ENV, "").strip().lower() in ("1", "true", "yes"):
        enabled = {n.strip() for n in os.environ.get(ENABLE_ENV, "").split(",") if n.strip()}
        eps = [ep for ep in eps if _dist_name(ep) == CORE_DIST or ep.name in enabled]
    # de-duplicate (the same dist can be visible twice on odd sys.paths) and load core first
    seen: set[tuple[str, str]] = set()
    unique = []
    for ep in sorted(eps, key=lambda e: (_dist_name(e) != CORE_DIST, e.name)):
        if (ep.name, ep.value) not in seen:
            seen.add((ep.name, ep.value))
            unique.append(ep)
    return unique


_registry: Registry | None = None


def _skip(registry: Registry, name: str, provider: str, stage: str, exc: Exception, what: str) -> None:
    error = f"{type(exc).__name__}: {exc}"
    registry.failures.append(PluginFailure(name, provider, stage, error))
    # warn_explicit without a source location: the message names the plugin; a line of alignx's
    # own code (where load_plugins was called) would only mislead
    warnings.warn_explicit(
        f"alignx plugin '{name}' (from distribution '{provider}') {what} and is skipped: {error}",
        PluginLoadWarning, filename="alignx", lineno=0, module="alignx.registry",
    )


def load_plugins(*, reload: bool = False) -> Registry:
    """Return the process-wide registry, loading every ``alignx.plugins`` entry point once.

    Safe to call from any process (launcher workers call it too). A plugin whose loading raises
    is reported with a :class:`PluginLoadWarning` naming it and its distribution; its partial
    registrations are rolled back. Duplicate names are errors, not warnings: silently picking
    one provider would make results depend on install order.
    """
    global _registry
    if _registry is not None and not reload:
        return _registry
    registry = Registry()
    for ep in _selected(PLUGINS_GROUP):
        provider = _dist_name(ep)
        try:
            factory = ep.load()
        except Exception as exc:  # a broken plugin must not take the others down
            _skip(registry, ep.name, provider, "import", exc, "failed to load")
            continue
        snapshot = {kind: dict(table) for kind, table in registry._tables.items()}
        registry._provider = provider
        try:
            factory(registry)
        except PluginError:
            raise
        except Exception as exc:
            registry._tables = snapshot
            _skip(registry, ep.name, provider, "register", exc, "raised in register()")
        finally:
            registry._provider = "<direct>"
    _registry = registry
    return registry


def find_spec_no_import(name: str) -> Any:
    """Like ``importlib.util.find_spec`` but without importing the parent packages of ``name``.

    ``find_spec('pkg.conf')`` imports ``pkg`` to read its ``__path__``, so a plugin whose code
    raises (or imports torch) would hide (or slow down) its config; this asks the meta-path
    finders directly, walking down from the top-level package's search locations.
    """
    parts = name.split(".")
    spec = importlib.util.find_spec(parts[0])  # a top-level name is located, not imported
    for i in range(1, len(parts)):
        if spec is None or not spec.submodule_search_locations:
            return None
        fullname, path = ".".join(parts[: i + 1]), list(spec.submodule_search_locations)
        spec = getattr(sys.modules.get(fullname), "__spec__", None)  # already imported: reuse
        if spec is None:
            for finder in sys.meta_path:
                find = getattr(finder, "find_spec", None)
                spec = find(fullname, path) if find is not None else None
                if spec is not None:
                    break
    return spec


def conf_dirs() -> list[tuple[str, str, Path]]:
    """(entry-point name, distribution, directory) of every ``alignx.conf`` package.

    The package is located with importlib's finders and neither it nor its parent packages are
    imported, so a plugin's config can be found even when its code is broken (or slow to import).
    """
    found = []
    for ep in _selected(CONF_GROUP):
        provider = _dist_name(ep)
        try:
            spec = find_spec_no_import(ep.value)
            locations = list(spec.submodule_search_locations or []) if spec else []
            if not locations:
                raise ModuleNotFoundError(f"'{ep.value}' is not a package directory")
        except Exception as exc:
            warnings.warn_explicit(
                f"alignx config package '{ep.value}' (entry point '{ep.name}' from '{provider}') "
                f"could not be located and is skipped: {exc}",
                PluginLoadWarning, filename="alignx", lineno=0, module="alignx.registry",
            )
            continue
        found.append((ep.name, provider, Path(locations[0]).resolve()))
    return found
