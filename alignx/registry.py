"""The plugin registry: one name -> object table per kind, filled from entry points.

Contract (stable, user-visible):

* ``[project.entry-points."alignx.plugins"] name = "pkg.module:register"`` — called as
  ``register(registry)``; it registers objectives, tasks, dataset sources, models, adapters,
  rewards and row formats by name.
* ``[project.entry-points."alignx.conf"] name = "pkg.conf"`` — a package of config-group YAMLs.
  It is located on disk and appended to Hydra's search path; it is never imported.

alignx's own built-ins use the same two groups. A plugin that raises while loading is named in a
warning and skipped; a duplicate name is an error naming both providers. Setting
``ALIGNX_DISABLE_PLUGIN_AUTOLOAD=1`` loads only alignx's own entry points, plus any listed in
``ALIGNX_PLUGINS=name,name``.
"""

from __future__ import annotations

import difflib
import importlib.util
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
    "alignx.rewards.combine.reward_factory that takes config options and returns one",
    "format": "row format: (raw row: dict, dataset cfg) -> dict in a canonical schema (applied before validation)",
    "preference_loss": "DPO-family loss for objective.loss: an alignx.losses.PreferenceLoss (one function plus "
    "needs_reference, length_normalised, needs_nll)",
}

T = TypeVar("T")


class PluginLoadWarning(UserWarning):
    """A plugin failed to load; the others keep working."""


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    obj: Any
    provider: str  # distribution (or caller) that registered it


class Registry:
    """Name -> object tables, one per kind in :data:`KINDS`."""

    def __init__(self) -> None:
        self._tables: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self._provider = "<direct>"

    # -- registration --------------------------------------------------------------
    def register(self, kind: str, name: str, obj: T, *, provider: str | None = None) -> T:
        """Register ``obj`` as ``name`` of ``kind``; raise PluginError on a duplicate name."""
        table = self._table(kind)
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
            warnings.warn(
                f"alignx plugin '{ep.name}' (from distribution '{provider}') failed to load and is skipped: "
                f"{type(exc).__name__}: {exc}",
                PluginLoadWarning,
                stacklevel=2,
            )
            continue
        snapshot = {kind: dict(table) for kind, table in registry._tables.items()}
        registry._provider = provider
        try:
            factory(registry)
        except PluginError:
            raise
        except Exception as exc:
            registry._tables = snapshot
            warnings.warn(
                f"alignx plugin '{ep.name}' (from distribution '{provider}') raised in register() and is skipped: "
                f"{type(exc).__name__}: {exc}",
                PluginLoadWarning,
                stacklevel=2,
            )
        finally:
            registry._provider = "<direct>"
    _registry = registry
    return registry


def _find_spec_no_import(name: str) -> Any:
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
            spec = _find_spec_no_import(ep.value)
            locations = list(spec.submodule_search_locations or []) if spec else []
            if not locations:
                raise ModuleNotFoundError(f"'{ep.value}' is not a package directory")
        except Exception as exc:
            warnings.warn(
                f"alignx config package '{ep.value}' (entry point '{ep.name}' from '{provider}') "
                f"could not be located and is skipped: {exc}",
                PluginLoadWarning,
                stacklevel=2,
            )
            continue
        found.append((ep.name, provider, Path(locations[0]).resolve()))
    return found
