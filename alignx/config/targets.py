"""``_target_`` nodes (optim, scheduler, callbacks, trainer.strategy, plugins'): the class imports, and
its keys are arguments it takes; optional installs named."""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from typing import (
    Any,
    Iterator,
)

from omegaconf import DictConfig, ListConfig
from omegaconf.errors import OmegaConfBaseException

from alignx.config.keys import check_known_keys, show_value
from alignx.config.schema import INSTANTIATE_KEYS
from alignx.errors import ConfigError

# -- _target_ nodes ---------------------------------------------------------------------------------

#: Python modules that optional strategies and launchers need, and the extra that installs them
OPTIONAL_NEEDS = {
    "deepspeed": ("deepspeed", "deepspeed"),
    "ray": ("hydra_plugins.hydra_ray_launcher", "ray"),
    "submitit": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "sweep"),
}


def missing_extra(name: str) -> str | None:
    """For a strategy or launcher name, the ``pip install`` that would make it available, if it is missing."""
    from importlib.util import find_spec

    for word, (module, extra) in OPTIONAL_NEEDS.items():
        if word in name.lower():
            try:
                found = find_spec(module) is not None
            except ModuleNotFoundError:
                found = False
            return None if found else f"pip install 'alignx[{extra}]'"
    return None


def check_strategy(strategy: object) -> None:
    """``trainer.strategy``: a name (``ddp``) or a node (``_target_`` + arguments) whose optional
    dependency is installed; the node's class and arguments are checked by :func:`check_target`."""
    if isinstance(strategy, str):
        need = missing_extra(strategy)
        if need:
            raise ConfigError(f"trainer.strategy={strategy} needs an optional dependency that is not installed: {need}")
        return
    if not isinstance(strategy, DictConfig):
        return
    target = strategy.get("_target_")
    if not target:
        raise ConfigError(f"trainer.strategy needs a _target_ (a strategy class path) or a name like ddp; got keys {sorted(strategy)}")
    need = missing_extra(str(target))
    if need:
        raise ConfigError(f"trainer.strategy={target} needs an optional dependency that is not installed: {need}")
    check_target(strategy, "trainer.strategy")


def check_callbacks(callbacks: object) -> None:
    """``callbacks``: ``{name: {_target_: ..., **arguments}}``; ``name: null`` switches one off."""
    if callbacks is None:
        return
    if not isinstance(callbacks, DictConfig):
        raise ConfigError(f"callbacks={show_value(callbacks)} is not a node: callbacks.<name>._target_=<class path> adds one")
    for name in callbacks.keys():
        spec_ = callbacks[name]
        if spec_ is not None and not (isinstance(spec_, DictConfig) and "_target_" in spec_.keys()):
            raise ConfigError(f"callbacks.{name} needs a _target_ (the callback's class path): +callbacks.{name}._target_=pkg.Class")


def import_target(path: str, where: str) -> Any:
    """The object a ``_target_`` names; a failure is one line with the closest importable name."""
    if not isinstance(path, str) or not re.fullmatch(r"[A-Za-z_][\w.]*", path):
        raise ConfigError(f"{where}._target_={show_value(path)} is not a dotted import path like torch.optim.AdamW")
    parts = path.split(".")
    for i in range(len(parts), 0, -1):  # the longest prefix that is an importable module
        module_name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and not module_name.startswith(exc.name):  # the module exists; a dependency of it does not
                raise ConfigError(f"{where}._target_={path} cannot be imported: {exc}") from None
            continue
        except Exception as exc:  # noqa: BLE001 - any import failure of user-named code is a config error
            raise ConfigError(f"{where}._target_={path} cannot be imported: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                names = [n for n in dir(obj) if not n.startswith("_")]
                close = difflib.get_close_matches(attr, names, n=1)
                hint = f" Did you mean '{'.'.join([*parts[:parts.index(attr)], close[0]])}'?" if close else ""
                raise ConfigError(f"{where}._target_={path} cannot be imported: '{getattr(obj, '__name__', obj)}' has no '{attr}'.{hint}")
            obj = getattr(obj, attr)
        return obj
    raise ConfigError(f"{where}._target_={path} cannot be imported: no module named '{parts[0]}'")


def check_target(node: DictConfig, where: str) -> None:
    """A ``_target_`` node's target imports and its keys are arguments it takes (any, if it takes
    ``**kwargs``); a complete (non-``_partial_``) call also gets every argument without a default."""
    target = node.get("_target_")
    obj = import_target(target, where)
    try:
        params = list(inspect.signature(obj).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: instantiate will say
        return
    keys = [str(k) for k in node.keys() if k not in INSTANTIATE_KEYS]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    valid = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    check_known_keys(keys, valid, f"{where}.", f" (arguments of {target})")
    if not node.get("_partial_", False) and "_args_" not in node.keys():
        absent = [p.name for p in params if p.name in valid and p.default is p.empty and p.name not in keys]
        if absent:
            raise ConfigError(f"{where}: {target} needs {', '.join(absent)} (+{where}.{absent[0]}=<value>)")


def _target_nodes(node: Any, path: str = "") -> Iterator[tuple[str, DictConfig]]:
    if isinstance(node, DictConfig):
        if "_target_" in node.keys():
            yield path, node
        children = [(str(k), f"{path}.{k}" if path else str(k)) for k in node.keys() if not (path == "" and k == "hydra")]
    elif isinstance(node, ListConfig):
        children = [(i, f"{path}[{i}]") for i in range(len(node))]
    else:
        return
    for key, where in children:
        try:
            child = node[key]
        except OmegaConfBaseException:
            continue  # an unresolvable value is reported by the value checks
        yield from _target_nodes(child, where)


def check_targets(cfg: DictConfig) -> None:
    """Every ``_target_`` node of the config (optim, scheduler, callbacks, trainer.strategy, a
    plugin's): see :func:`check_target`."""
    for where, node in _target_nodes(cfg):
        if where != "trainer.strategy":  # checked first by check_strategy (a missing extra is named)
            check_target(node, where)
