"""Hydra glue: the config search path (alignx.conf entry points), composition and key checks."""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, fields
from typing import Iterable, Optional, Sequence

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import DictConfig, OmegaConf

from alignx.data.formats import INVALID_ROW_POLICIES
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
    """Every config group (including nested ones like ``hydra/launcher`` is skipped) -> its options."""
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


# -- schema checks -------------------------------------------------------------------------
# Group nodes that alignx itself reads. Objectives, models and datasets come from plugins too,
# so their keys are checked by whoever consumes them; these are fixed by alignx.


@dataclass
class DataSchema:
    max_length: int = 128
    truncation: str = "truncate_prompt"
    invalid_rows: str = "error"
    completion_only_loss: bool = True
    chat_template: bool = False
    batch_size: int = 32
    eval_batch_size: int = 64
    length_bucketing: bool = True
    num_workers: int = 0
    cache: bool = True


@dataclass
class SaveSchema:
    model: bool = True
    merge_adapter: bool = False


@dataclass
class EvalSchema:
    enabled: bool = True
    num_prompts: int = 64
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    num_logged_samples: int = 16
    reward_model: Optional[str] = None
    best_of_n: int = 1


@dataclass
class CheckpointSchema:
    every_n_steps: Optional[int] = None


TRUNCATION_POLICIES = ("truncate_prompt", "truncate_completion", "drop", "error")
TOP_LEVEL = {
    "objective", "model", "adapter", "dataset", "optim", "scheduler", "trainer", "tracking", "eval",
    "seed", "output_dir", "outputs_root", "data", "save", "hydra", "optimized_metric", "reward", "checkpoint", "resume", "pipeline",
    "callbacks",
}
#: trainer keys alignx handles itself rather than passing to lightning.Trainer
TRAINER_EXTRA_KEYS = {"_target_"}


def _unknown(keys: Iterable[str], valid: Iterable[str], where: str) -> None:
    valid = sorted(set(valid))
    for key in keys:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" Did you mean '{where}{close[0]}'?" if close else ""
            raise ConfigError(
                f"unknown key '{where}{key}'.{hint} Valid keys under '{where.rstrip('.') or '<root>'}': {', '.join(valid)}"
            )


def _trainer_keys() -> set[str]:
    import lightning

    return set(inspect.signature(lightning.Trainer.__init__).parameters) - {"self"} | TRAINER_EXTRA_KEYS


def validate(cfg: DictConfig, extra_top_level: Iterable[str] = ()) -> None:
    """Fail fast, before any work, on a mistyped key or a bad value, listing what is valid."""
    _unknown(cfg.keys(), TOP_LEVEL | set(extra_top_level), "")
    for section, schema in (("data", DataSchema), ("save", SaveSchema), ("eval", EvalSchema), ("checkpoint", CheckpointSchema)):
        if section in cfg:
            _unknown(cfg[section].keys(), [f.name for f in fields(schema)], f"{section}.")
            try:
                OmegaConf.merge(OmegaConf.structured(schema), cfg[section])
            except Exception as exc:  # a wrong type, e.g. data.batch_size=abc
                raise ConfigError(f"invalid value in '{section}': {exc}".splitlines()[0]) from None
    _unknown(cfg.trainer.keys(), _trainer_keys(), "trainer.")
    check_strategy(cfg.trainer.get("strategy"))
    if cfg.data.truncation not in TRUNCATION_POLICIES:
        raise ConfigError(
            f"data.truncation='{cfg.data.truncation}' is not a policy. Valid: {', '.join(TRUNCATION_POLICIES)}"
        )
    if cfg.data.get("invalid_rows", "error") not in INVALID_ROW_POLICIES:
        raise ConfigError(
            f"data.invalid_rows='{cfg.data.invalid_rows}' is not a policy. Valid: {', '.join(INVALID_ROW_POLICIES)}"
        )


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
    """A ``trainer.strategy`` node (``_target_`` + arguments) names an importable class and only its arguments."""
    if not isinstance(strategy, DictConfig):
        return
    from hydra.utils import get_class

    target = strategy.get("_target_")
    if not target:
        raise ConfigError(f"trainer.strategy needs a _target_ (a strategy class path) or a name like ddp; got keys {sorted(strategy)}")
    need = missing_extra(str(target))
    if need:
        raise ConfigError(f"trainer.strategy={target} needs an optional dependency that is not installed: {need}")
    try:
        cls = get_class(str(target))
    except Exception as exc:  # noqa: BLE001 - any import failure is a bad path
        raise ConfigError(f"trainer.strategy._target_={target} cannot be imported: {str(exc).splitlines()[0]}") from None
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        _unknown([k for k in strategy if k != "_target_"], set(params) - {"self"}, "trainer.strategy.")


def check_override_keys(overrides: Sequence[str]) -> None:
    """Check that every ``key=value`` command-line override names an existing key.

    Hydra already rejects these, but without saying what *is* valid; this runs first so the
    error lists the valid keys and the closest match. Group choices are validated by Hydra
    itself, which lists the available options.
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
        return  # Hydra will report the bad group choice itself, with the options
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
