"""Hydra glue: the config search path (alignx.conf entry points), composition, and the
command-line checks that run before Hydra composes anything."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import (
    Any,
    Sequence,
)

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import DictConfig, OmegaConf

from alignx.config.targets import missing_extra
from alignx.errors import ConfigError
from alignx.registry import conf_dirs

PRIMARY_CONFIG = "train"


class AlignxSearchPathPlugin(SearchPathPlugin):
    """Appends every ``alignx.conf`` entry point's directory (alignx's own first) to Hydra's search path."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        existing = {p.path for p in search_path.get_path()}
        for name, _dist, directory in conf_dirs():
            path = directory.as_posix()
            if path not in existing:
                search_path.append(provider=f"alignx.conf:{name}", path=f"file://{path}")
                existing.add(path)


def register_search_path() -> None:
    """Make Hydra (CLI or compose API) see the config packages of all installed plugins."""
    from hydra.core.plugins import Plugins

    Plugins.instance().register(AlignxSearchPathPlugin)


def config_groups() -> dict[str, list[str]]:
    """Every top-level config group of alignx and its plugins -> its options (nested groups like
    ``hydra/launcher`` are not listed; :func:`check_group_choices` asks Hydra for those)."""
    groups: dict[str, set[str]] = {}
    for _name, _dist, directory in conf_dirs():
        for sub in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
            groups.setdefault(sub.name, set()).update(f.stem for f in sub.glob("*.yaml"))
    return {g: sorted(opts) for g, opts in sorted(groups.items())}


def compose(overrides: Sequence[str] = (), *, return_hydra_config: bool = False) -> DictConfig:
    """Compose the ``train`` config in-process (tests, notebooks) exactly as the CLI would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_search_path()
    primary = conf_dirs()[0][2]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(primary), version_base="1.3"):
        return hydra_compose(PRIMARY_CONFIG, overrides=list(overrides), return_hydra_config=return_hydra_config)




# -- command-line overrides, before Hydra composes --------------------------------------------------


def check_override_keys(overrides: Sequence[str]) -> None:
    """Check that every ``key=value`` command-line override names an existing key.

    Hydra already rejects these, but without saying what *is* valid; this runs first so the
    error lists the valid keys and the closest match. Group choices are checked by
    :func:`check_group_choices`.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    groups = config_groups()
    choices, keys = [], []
    for ov in parsed:
        key = ov.key_or_group
        if ov.is_add() or ov.is_force_add() or ov.is_delete() or key.startswith("hydra"):
            continue
        if key.split("@")[0] in groups or "/" in key:
            values = list(ov.sweep_string_iterator()) if ov.is_sweep_override() else [ov.get_value_element_as_str()]
            if values:
                choices.append(f"{key}={values[0]}")
        else:
            keys.append(key)
    if not keys:
        return
    try:
        cfg = compose(choices)
    except Exception:
        return  # a bad group choice: check_group_choices reports it
    for key in keys:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        # keys(), not `in`: OmegaConf reports a mandatory (???) value as absent from `in`
        if isinstance(node, DictConfig) and leaf not in node.keys():
            valid = sorted(str(k) for k in node.keys())
            close = difflib.get_close_matches(leaf, valid, n=1)
            hint = f" Did you mean '{parent + '.' if parent else ''}{close[0]}'?" if close else ""
            raise ConfigError(
                f"unknown key '{key}'.{hint} Valid keys under '{parent or '<root>'}': {', '.join(valid)}. "
                f"(To add a new key on purpose: +{key}=...)"
            )
        if node is None and parent:
            raise ConfigError(f"unknown key '{key}': '{parent}' does not exist in the config.")


def _hydra_group_options(group: str) -> list[str]:
    """Options of a nested group such as ``hydra/launcher``, from every config source Hydra searches."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_search_path()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dirs()[0][2]), version_base="1.3"):
        return sorted(GlobalHydra.instance().config_loader().get_group_options(group))


def _chosen(ov: Any) -> list[str]:
    """The option names a parsed group override selects (glob and range sweeps: Hydra expands them)."""
    from hydra.core.override_parser.types import ValueType

    if ov.is_delete():
        return []
    if ov.is_sweep_override():
        return list(ov.sweep_string_iterator()) if ov.value_type is ValueType.SIMPLE_CHOICE_SWEEP else []
    value = ov.value()
    if isinstance(value, list):  # `group=[a,b]` selects several options
        return [str(v) for v in value]
    return [] if value is None else [ov.get_value_element_as_str()]


def check_group_choices(overrides: Sequence[str]) -> None:
    """Every ``group=option`` command-line override names an existing option of its group.

    Covers ``+group=option``, ``group@package=option``, sweeps (``objective=dpo,kto``), lists,
    experiment presets and nested groups such as ``hydra/launcher``. The error is one line with
    the closest option and all options, instead of Hydra's multi-line message; a launcher whose
    plugin is not installed names the ``pip install`` that adds it.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    groups = config_groups()
    for ov in parsed:
        # options in directories added with hydra.searchpath=[file://...] count too
        if ov.key_or_group == "hydra.searchpath" and isinstance(ov.value(), list):
            for entry in ov.value():
                directory = Path(str(entry).removeprefix("file://"))
                for sub in (d for d in directory.glob("*") if d.is_dir()) if directory.is_dir() else ():
                    groups[sub.name] = sorted(set(groups.get(sub.name, [])) | {f.stem for f in sub.glob("*.yaml")})
    for ov in parsed:
        group = ov.key_or_group
        if "/" in group:
            options = _hydra_group_options(group)
        elif groups.get(group):
            options = groups[group]
        else:
            continue  # a key, not a group: check_override_keys and validate check it
        for option in _chosen(ov):
            if option in options or "/" in option or option == "null":
                continue
            need = missing_extra(option) if group.startswith("hydra/") else None
            if need:
                raise ConfigError(f"{group}={option} needs a plugin that is not installed: {need}")
            close = difflib.get_close_matches(option, options, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{group}={option} is not an option of group '{group}'.{hint} Options: {', '.join(options)}")
