"""The config checks that need an objective's class or a ``_target_``'s module, answered from source
before the training stack is imported (see :mod:`alignx.config.static`).

The command line runs them after ``validate(cfg, imports=False)``: a misspelt objective key, a
``_target_`` naming a module or attribute that does not exist, and (with :func:`static_row_kind`)
the row kind whose validation the command line can run on the configured files. Each check
answers only what the source decides -- the same one line the job's own check would give -- and
leaves everything else to the job, which runs every check again after importing.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from alignx.config.keys import check_known_keys, objective_keys
from alignx.config.static import (
    UNKNOWN,
    attribute_owner,
    calls_super_first_level,
    class_attribute,
    closest_name,
    method_owners,
    module_defines,
    module_exists,
    preference_loss_options,
)
from alignx.config.targets import _target_nodes
from alignx.errors import ConfigError
from alignx.registry import Registry

#: the base class whose ``check_config``, ``row_kind`` and ``stages`` the static checks know
OBJECTIVE_BASE = "alignx.objectives.base:Objective"
#: registry kind -> how the options of one of its lazily registered targets are read from source
_STATIC_OPTIONS = {"preference_loss": preference_loss_options}


def lazy_target(registry: Registry, kind: str, name: str) -> str | None:
    """The ``module:attr`` path ``name`` of ``kind`` is registered by, imported yet or not (the
    source answers the same either way, so the answer does not depend on what ran before in the
    process); None: an unknown name or an object registered directly."""
    for entry in registry.entries():
        if entry.kind == kind and entry.name == name:
            return entry.path
    return None


def _static_options(registry: Registry) -> Any:
    def options_of(kind: str, name: str) -> tuple[str, ...] | None:
        read = _STATIC_OPTIONS.get(kind)
        target = lazy_target(registry, kind, name) if read is not None else None
        return read(target) if target is not None else UNKNOWN

    return options_of


def _objective_target(cfg: DictConfig, registry: Registry) -> tuple[Any, str | None]:
    """The job's objective node and the import path its class is registered by (None: unknown)."""
    node = cfg.get("objective")
    if not isinstance(node, DictConfig) or node.get("name") is None:
        return node, None
    return node, lazy_target(registry, "objective", str(node.name))


def check_objective_keys_static(cfg: DictConfig, registry: Registry) -> bool:
    """``objective.*`` keys outside what the objective's class allows, as the one line
    :meth:`~alignx.objectives.Objective.check_config` raises, without importing the class.

    Decided only when the class's ``config_keys`` and ``option_keys_from`` are readable from source,
    every ``check_config`` override along its chain calls ``super().check_config(cfg)`` as a
    statement of its own, and the chain ends in the base class (whose ``check_config`` applies
    :func:`~alignx.config.objective_keys`). Returns whether the check was decided (and passed).
    """
    node, target = _objective_target(cfg, registry)
    if target is None:
        return False
    owners = method_owners(target, "check_config", stop=OBJECTIVE_BASE)
    if not owners or owners[-1][0].target != OBJECTIVE_BASE:
        return False
    if not all(calls_super_first_level(fn) for _, fn in owners[:-1]):
        return False
    config_keys = class_attribute(target, "config_keys", stop=OBJECTIVE_BASE)
    option_keys_from = class_attribute(target, "option_keys_from", stop=OBJECTIVE_BASE)
    if not isinstance(config_keys, frozenset) or not _str_mapping(option_keys_from):
        return False  # None (nothing checked) or unreadable
    try:
        allowed = objective_keys(node, config_keys, option_keys_from, _static_options(registry))
    except OmegaConfBaseException:
        return False
    if allowed is None:
        return False
    check_known_keys([str(k) for k in node.keys()], allowed, "objective.")
    return True


def _str_mapping(value: Any) -> bool:
    return isinstance(value, Mapping) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def static_row_kind(cfg: DictConfig, registry: Registry) -> str | None:
    """The row kind the objective trains on, read from source as the base class's ``row_kind``
    computes it (``data_kind``, or the value of ``objective.<row_kind_key>`` when that is one of
    ``row_kinds``) when neither ``row_kind`` nor ``stages`` is overridden below the base class
    (None: undecided, including a value outside ``row_kinds``, which the class names)."""
    node, target = _objective_target(cfg, registry)
    if target is None:
        return None
    for method in ("row_kind", "stages"):
        owners = method_owners(target, method, stop=OBJECTIVE_BASE)
        if owners is None or [owner.target for owner, _ in owners] != [OBJECTIVE_BASE]:
            return None
    key = class_attribute(target, "row_kind_key", stop=OBJECTIVE_BASE)
    if key is None:  # the base's None, or a value the source does not decide
        owner = attribute_owner(target, "row_kind_key", stop=OBJECTIVE_BASE)
        if owner is None or owner.target != OBJECTIVE_BASE:
            return None
        kind = class_attribute(target, "data_kind", stop=OBJECTIVE_BASE)
        return kind if isinstance(kind, str) else None
    kinds = class_attribute(target, "row_kinds", stop=OBJECTIVE_BASE)
    if not isinstance(key, str) or not isinstance(kinds, tuple):
        return None
    kind = node.get(key)
    return str(kind) if str(kind) in kinds else None


def target_problem(path: str) -> str | None:
    """Why ``_target_=path`` cannot be imported, when its source says so for certain: no module of
    its first name, or a module that binds no such attribute; None otherwise (also when unsure).
    The wording is :func:`alignx.config.targets.import_target`'s."""
    if not isinstance(path, str) or not re.fullmatch(r"[A-Za-z_][\w.]*", path):
        return None  # import_target names the malformed path
    parts = path.split(".")
    for i in range(len(parts), 0, -1):  # the longest prefix that is a module, as import_target tries
        found = module_exists(".".join(parts[:i]))
        if found is UNKNOWN:
            return None
        if found:
            break
    else:
        return f"no module named '{parts[0]}'"
    if i == len(parts):
        return None  # a module: importing it decides
    module, attr = ".".join(parts[:i]), parts[i]
    if module_defines(module, attr) is not False:
        return None
    close = closest_name(module, attr)
    hint = f" Did you mean '{'.'.join([*parts[:parts.index(attr)], close])}'?" if close else ""
    return f"'{module}' has no '{attr}'.{hint}"


def check_targets_static(cfg: DictConfig) -> None:
    """Every ``_target_`` node (``trainer.strategy`` aside: its missing extra is named first by the
    job) whose module or attribute certainly does not exist, as
    :func:`alignx.config.check_targets`' one line."""
    for where, node in _target_nodes(cfg):
        if where == "trainer.strategy":
            continue
        try:
            path = node.get("_target_")
        except OmegaConfBaseException:
            continue
        problem = target_problem(path)
        if problem:
            raise ConfigError(f"{where}._target_={path} cannot be imported: {problem}")
