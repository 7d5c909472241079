"""Hydra glue: the config search path (alignx.conf entry points), composition, and the checks that
turn every bad key, value or group option into one clear line before a job creates anything.

Defaults live only in the YAML under ``conf/``. The schema dataclasses below hold no default
values (every field is ``MISSING``): they declare each value's type and range, which
:func:`validate` checks.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterable, Iterator, Literal, Optional, Sequence, Union, get_args, get_origin, get_type_hints

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

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


def check_known_keys(keys: Iterable[str], valid: Iterable[str], where: str, what: str = "") -> None:
    """Raise :class:`ConfigError` for the first of ``keys`` not in ``valid``, with the closest valid
    name and the full list. ``where`` is the dotted prefix of the keys (``"optim."``; ``""`` = root),
    ``what`` an optional note after the list's heading (e.g. ``" (arguments of torch.optim.AdamW)"``).
    """
    valid = sorted(set(valid))
    for key in keys:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" Did you mean '{where}{close[0]}'?" if close else ""
            raise ConfigError(
                f"unknown key '{where}{key}'.{hint} Valid keys under '{where.rstrip('.') or '<root>'}'{what}: {', '.join(valid)}"
            )


#: the name other modules (objectives' check_config) import
_unknown = check_known_keys


# -- schemas: types and ranges, no defaults ------------------------------------------------------


def spec(
    *, ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
    choices: Sequence[Any] | Callable[[], Sequence[Any] | None] | None = None,
    check: Callable[[Any], str | None] | None = None, length: int | None = None,
) -> Any:
    """A schema field without a default (the YAML holds it): its bounds (``ge`` >=, ``gt`` >,
    ``le`` <=, ``lt`` <; element-wise for lists), allowed ``choices`` (or a function returning
    them), a list ``length``, or ``check(value)`` returning what is wrong (a phrase) or None."""
    meta = dict(ge=ge, gt=gt, le=le, lt=lt, choices=choices, check=check, length=length)
    return field(default=MISSING, metadata={k: v for k, v in meta.items() if v is not None})


TRUNCATION_POLICIES = ("truncate_prompt", "truncate_completion", "drop", "error")


def _precisions() -> tuple | None:
    """Lightning's accepted ``precision`` values (None if this Lightning version hides them: it checks itself)."""
    try:
        from lightning.fabric.connector import _PRECISION_INPUT
    except ImportError:  # pragma: no cover - a private name of a future Lightning
        return None
    return tuple(value for literal in get_args(_PRECISION_INPUT) for value in get_args(literal))


def _accelerators() -> tuple:
    from lightning.pytorch.accelerators import AcceleratorRegistry

    return ("auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators()))


def _strategies() -> tuple:
    from lightning.pytorch.strategies import StrategyRegistry

    return ("auto", *StrategyRegistry.available_strategies())


def _devices_problem(value: Any) -> str | None:
    if isinstance(value, int):
        ok = value == -1 or value >= 1
    elif isinstance(value, str):
        ok = bool(re.fullmatch(r"auto|-1|\d+|\d+(\s*,\s*\d+)+,?", value.strip()))
    else:
        ok = bool(value) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    return None if ok else "is not a device count: must be >= 1, -1 (all), 'auto', or a list of device indices like [0, 1]"


def _max_epochs_problem(value: int) -> str | None:
    return None if value == -1 or value >= 1 else "is out of range: must be >= 1 (or -1: no limit)"


def _fraction_or_count(lo_open: bool) -> Callable[[Any], str | None]:
    """A Lightning "float = fraction, int = number of batches" value."""

    def problem(value: Any) -> str | None:
        if isinstance(value, float) and not (0.0 < value <= 1.0 if lo_open else 0.0 <= value <= 1.0):
            return f"is out of range: a fraction must be {'> 0' if lo_open else '>= 0'} and <= 1 (an int counts batches)"
        if isinstance(value, int) and value < (1 if lo_open else 0):
            return f"is out of range: a batch count must be >= {1 if lo_open else 0}"
        return None

    return problem


@dataclass
class DataSchema:
    """``data``: how rows become batches."""

    max_length: int = spec(ge=2)
    truncation: str = spec(choices=TRUNCATION_POLICIES)
    invalid_rows: str = spec(choices=INVALID_ROW_POLICIES)
    completion_only_loss: bool = spec()
    chat_template: bool = spec()
    batch_size: int = spec(ge=1)
    eval_batch_size: int = spec(ge=1)
    length_bucketing: bool = spec()
    num_workers: int = spec(ge=0)
    cache: bool = spec()


@dataclass
class SaveSchema:
    """``save``: what the job writes as its result."""

    model: bool = spec()
    merge_adapter: bool = spec()


@dataclass
class EvalSchema:
    """``eval``: the end-of-training evaluation."""

    enabled: bool = spec()
    num_prompts: int = spec(ge=0)
    max_new_tokens: int = spec(ge=1)
    temperature: float = spec(gt=0)
    top_k: int = spec(ge=0)
    top_p: float = spec(gt=0, le=1)
    num_logged_samples: int = spec(ge=0)
    reward_model: Optional[str] = spec()
    best_of_n: int = spec(ge=1)


@dataclass
class CheckpointSchema:
    """``checkpoint``: resumable checkpoints during training."""

    every_n_steps: Optional[int] = spec(ge=1)


@dataclass
class TrainerSchema:
    """``trainer``: the lightning.Trainer arguments alignx's presets set (any other Trainer argument
    may be added; its name is checked against the Trainer's signature)."""

    accelerator: Union[str, dict] = spec(choices=_accelerators)
    devices: Union[int, str, list[int]] = spec(check=_devices_problem)
    num_nodes: int = spec(ge=1)
    strategy: Union[str, dict] = spec(choices=_strategies)
    precision: Union[int, str] = spec(choices=_precisions)
    max_epochs: Optional[int] = spec(check=_max_epochs_problem)
    # its range depends on max_epochs: see _check_training_length
    max_steps: int = spec()
    accumulate_grad_batches: int = spec(ge=1)
    gradient_clip_val: Optional[float] = spec(ge=0)
    log_every_n_steps: int = spec(ge=1)
    val_check_interval: Optional[Union[int, float]] = spec(check=_fraction_or_count(lo_open=True))
    limit_val_batches: Union[int, float] = spec(check=_fraction_or_count(lo_open=False))
    deterministic: Optional[Union[bool, Literal["warn"]]] = spec()
    enable_progress_bar: Optional[bool] = spec()


@dataclass
class OptimSchema:
    """``optim``: the optimizer arguments alignx's presets use (others: checked against the target's signature)."""

    lr: float = spec(gt=0)
    weight_decay: float = spec(ge=0)
    betas: list[float] = spec(ge=0, lt=1, length=2)
    eps: float = spec(gt=0)
    momentum: float = spec(ge=0)


@dataclass
class SchedulerSchema:
    """``scheduler``: the learning-rate schedule's arguments alignx's presets use."""

    num_warmup_steps: int = spec(ge=0)


@dataclass
class RootSchema:
    """Top-level values."""

    # torch/numpy seeds are unsigned 32-bit; Lightning silently picks a random seed outside that range
    seed: int = spec(ge=0, le=2**32 - 1)
    output_dir: Optional[str] = spec()
    outputs_root: Optional[str] = spec()
    resume: Optional[str] = spec()
    optimized_metric: Optional[Union[str, list[str]]] = spec()


@dataclass
class LoraSchema:
    """``adapter=lora|dora``."""

    name: str = spec()
    r: int = spec(ge=1)
    alpha: float = spec(gt=0)
    dropout: float = spec(ge=0, lt=1)
    target_modules: Union[str, list[str]] = spec()
    bias: str = spec(choices=("none", "all", "lora_only"))
    use_dora: bool = spec()


@dataclass
class LlamaSchema:
    """``model`` of kind ``llama`` (model=tiny|small): a Llama built in code."""

    name: str = spec()
    kind: str = spec()
    hidden_size: int = spec(ge=1)
    intermediate_size: int = spec(ge=1)
    num_hidden_layers: int = spec(ge=1)
    num_attention_heads: int = spec(ge=1)
    num_key_value_heads: Optional[int] = spec(ge=1)
    max_position_embeddings: int = spec(ge=2)
    tie_word_embeddings: bool = spec()
    init_seed: int = spec(ge=0)


@dataclass
class HfModelSchema:
    """``model`` of kind ``hf`` (model=hf): any transformers causal LM."""

    name: str = spec()
    kind: str = spec()
    name_or_path: str = spec()
    revision: Optional[str] = spec()
    dtype: str = spec(choices=("auto", "float32", "bfloat16", "float16"))
    trust_remote_code: bool = spec()


#: node -> (schema, closed): a closed node holds exactly the schema's keys (alignx reads each of
#: them); an open one may hold more (lightning.Trainer or optimizer arguments, checked elsewhere)
SECTIONS: dict[str, tuple[type, bool]] = {
    "data": (DataSchema, True),
    "save": (SaveSchema, True),
    "eval": (EvalSchema, True),
    "checkpoint": (CheckpointSchema, True),
    "trainer": (TrainerSchema, False),
    "optim": (OptimSchema, False),
    "scheduler": (SchedulerSchema, False),
}
#: adapter name -> its schema (adapters from plugins are checked by the plugin)
ADAPTER_SCHEMAS: dict[str, type] = {"lora": LoraSchema, "dora": LoraSchema}
#: model kind -> its schema; open, since a secret or plugin key may ride along (models from plugins: the plugin)
MODEL_SCHEMAS: dict[str, type] = {"llama": LlamaSchema, "hf": HfModelSchema}
#: what a mandatory (``???``) value of alignx's own options must be
REQUIRED: dict[str, str] = {
    "model.name_or_path": "a hub id or a local directory",
    "dataset.path": "the path of the training file",
    "dataset.id": "a Hugging Face Hub dataset id or a local directory laid out like one",
}
TOP_LEVEL = {
    "objective", "model", "adapter", "dataset", "optim", "scheduler", "trainer", "tracking", "eval",
    "seed", "output_dir", "outputs_root", "data", "save", "hydra", "optimized_metric", "reward", "checkpoint", "resume", "pipeline",
    "callbacks",
}
#: trainer keys alignx handles itself rather than passing to lightning.Trainer
TRAINER_EXTRA_KEYS = {"_target_"}
#: keys of a ``_target_`` node that Hydra's instantiate reads itself
INSTANTIATE_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


# -- checking values against a schema ---------------------------------------------------------------

_TYPE_NAMES = {int: "an int", float: "a number", bool: "true or false", str: "a string", dict: "a node", type(None): "null"}


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Union:
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"a list ({_type_name(get_args(tp)[0])} each)"
    if origin is Literal:
        return " or ".join(repr(a) for a in get_args(tp))
    return _TYPE_NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _is_type(value: Any, tp: Any) -> bool:
    origin = get_origin(tp)
    if tp is Any:
        return True
    if origin is Union:
        return any(_is_type(value, a) for a in get_args(tp))
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in get_args(tp))
    if origin is list:
        return isinstance(value, list) and all(_is_type(v, get_args(tp)[0]) for v in value)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value).replace("True", "true").replace("False", "false").replace("None", "null")


def _read(node: DictConfig, key: str, path: str) -> Any:
    """``node[key]`` as plain Python (containers converted), a resolution failure as one line."""
    try:
        value = node[key]
        return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{path}: {str(exc).splitlines()[0]}") from None


def _bounds(meta: dict) -> list[tuple[str, Callable[[Any], bool]]]:
    ops = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
           "le": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}
    return [(f"{sym} {meta[k]}", lambda v, b=meta[k], f=f: f(v, b)) for k, (sym, f) in ops.items() if k in meta]


def check_value(path: str, value: Any, tp: Any, meta: dict) -> None:
    """Check one value against its schema type and ``spec`` metadata; raise one line naming ``path``."""
    if not _is_type(value, tp):
        raise ConfigError(f"{path}={_show(value)} is not {_type_name(tp)}")
    if value is None or isinstance(value, dict):
        return  # null where allowed; a node (_target_) is checked by check_targets
    choices = meta.get("choices")
    choices = choices() if callable(choices) else choices
    if choices is not None and value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        valid = ", ".join(dict.fromkeys(str(c) for c in choices))  # Lightning lists 16 and '16'
        raise ConfigError(f"{path}={_show(value)} is not a valid value.{hint} Valid: {valid}")
    if "length" in meta and len(value) != meta["length"]:
        raise ConfigError(f"{path}={_show(value)} must be a list of {meta['length']} values")
    bounds = _bounds(meta)
    items = [(f"{path}[{i}]", v) for i, v in enumerate(value)] if isinstance(value, list) else [(path, value)]
    for where, v in items:
        if isinstance(v, (int, float)) and not all(ok(v) for _, ok in bounds):
            raise ConfigError(f"{where}={_show(v)} is out of range: must be {' and '.join(text for text, _ in bounds)}")
    problem = meta["check"](value) if "check" in meta else None
    if problem:
        raise ConfigError(f"{path}={_show(value)} {problem}")


def check_node(node: DictConfig, schema: type, where: str, *, closed: bool) -> None:
    """Check the keys of ``node`` (at dotted ``where``) that ``schema`` declares; a ``closed`` node
    must hold exactly the schema's keys."""
    prefix = f"{where}." if where else ""
    names = [f.name for f in fields(schema)]
    keys = [str(k) for k in node.keys()]
    if closed:
        check_known_keys(keys, names, prefix)
        absent = [n for n in names if n not in keys]
        if absent:
            raise ConfigError(f"{prefix}{absent[0]} is missing from the config; alignx needs it (+{prefix}{absent[0]}=<value>)")
    hints = get_type_hints(schema)
    for f in fields(schema):
        if f.name in keys:
            check_value(f"{prefix}{f.name}", _read(node, f.name, f"{prefix}{f.name}"), hints[f.name], dict(f.metadata))


def _missing(node: DictConfig | ListConfig, path: str = "") -> Iterator[str]:
    """Dotted paths of mandatory (``???``) values, without resolving interpolations
    (OmegaConf.missing_keys resolves them and fails on one that points at a missing value)."""
    keys = range(len(node)) if isinstance(node, ListConfig) else [k for k in node.keys() if not (path == "" and k == "hydra")]
    for key in keys:
        where = f"{path}[{key}]" if isinstance(key, int) else f"{path}{'.' if path else ''}{key}"
        if OmegaConf.is_missing(node, key):
            yield where
            continue
        child = node._get_node(key)
        if isinstance(child, (DictConfig, ListConfig)) and not child._is_none() and not child._is_interpolation():
            yield from _missing(child, where)


def _option_of(cfg: DictConfig, group: str) -> str | None:
    """The option a group node came from, as far as the node tells (its name, else its kind or source)."""
    node = cfg.get(group) if group in cfg.keys() else None
    if not isinstance(node, DictConfig):
        return None
    for key in ("name", "kind", "source"):
        try:
            value = node[key] if key in node.keys() else None
        except OmegaConfBaseException:
            continue  # e.g. model=hf: name interpolates the missing name_or_path
        if isinstance(value, str) and value:
            return value
    return None


def check_required(cfg: DictConfig) -> None:
    """A mandatory (``???``) value left unset is one line: the key, the option needing it, what it takes."""
    for key in _missing(cfg):
        group = key.split(".")[0] if "." in key else None
        option = _option_of(cfg, group) if group else None
        needs = f" for {group}={option}" if option else ""
        raise ConfigError(f"{key} is required{needs}: {REQUIRED.get(key, f'set {key}=<value>')}")


def _check_training_length(trainer: DictConfig) -> None:
    """``max_steps``: a positive count, or -1 when ``max_epochs`` bounds training."""
    if "max_steps" not in trainer.keys():
        return
    steps, epochs = trainer.max_steps, trainer.get("max_epochs")
    if steps == 0:
        raise ConfigError("trainer.max_steps=0 would train nothing: set a positive number of steps "
                          "(or trainer.max_steps=-1 with trainer.max_epochs=N)")
    if steps < -1:
        raise ConfigError(f"trainer.max_steps={steps} is out of range: must be >= 1, or -1 with trainer.max_epochs=N")
    if steps == -1 and epochs is None:
        raise ConfigError("trainer.max_steps=-1 trains by epochs, but trainer.max_epochs is null: "
                          "set trainer.max_epochs=N, or a positive trainer.max_steps")
    if steps == -1 and epochs == -1:
        raise ConfigError("trainer.max_steps=-1 with trainer.max_epochs=-1 would never stop: "
                          "set a positive trainer.max_steps or trainer.max_epochs")


def _check_llama_heads(model: DictConfig) -> None:
    heads, kv = int(model.num_attention_heads), model.num_key_value_heads
    if model.hidden_size % heads:
        raise ConfigError(f"model.hidden_size={model.hidden_size} must be divisible by model.num_attention_heads={heads}")
    if kv is not None and heads % kv:
        raise ConfigError(f"model.num_attention_heads={heads} must be divisible by model.num_key_value_heads={kv}")


def _trainer_keys() -> set[str]:
    import lightning

    return set(inspect.signature(lightning.Trainer.__init__).parameters) - {"self"} | TRAINER_EXTRA_KEYS


def validate(cfg: DictConfig, extra_top_level: Iterable[str] = ()) -> None:
    """Fail fast, before any work, on a mistyped key or a bad value: one line naming the key and what
    is valid. The job calls this first, before it creates a directory, a cache entry or an MLflow run.

    Checks, in order: mandatory (``???``) values, top-level keys, the keys, types and ranges of
    ``data``, ``save``, ``eval``, ``checkpoint``, ``trainer``, ``optim``, ``scheduler``, top-level
    values, alignx's adapter and model options, the training length, then every ``_target_`` node
    (its class or function imports, and its keys are arguments it takes).
    """
    check_required(cfg)
    check_known_keys([str(k) for k in cfg.keys()], TOP_LEVEL | set(extra_top_level), "")
    for section, (schema, closed) in SECTIONS.items():
        if isinstance(cfg.get(section), DictConfig):
            check_node(cfg[section], schema, section, closed=closed)
    check_node(cfg, RootSchema, "", closed=False)
    check_known_keys([str(k) for k in cfg.trainer.keys()], _trainer_keys(), "trainer.")
    _check_training_length(cfg.trainer)
    adapter = cfg.get("adapter")
    if isinstance(adapter, DictConfig) and str(adapter.get("name")) in ADAPTER_SCHEMAS:
        check_node(adapter, ADAPTER_SCHEMAS[str(adapter.name)], "adapter", closed=True)
    model = cfg.get("model")
    if isinstance(model, DictConfig) and str(model.get("kind")) in MODEL_SCHEMAS:
        check_node(model, MODEL_SCHEMAS[str(model.kind)], "model", closed=False)
        if model.kind == "llama":
            _check_llama_heads(model)
    check_callbacks(cfg.get("callbacks"))
    check_strategy(cfg.trainer.get("strategy"))
    check_targets(cfg)


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
        raise ConfigError(f"callbacks={_show(callbacks)} is not a node: callbacks.<name>._target_=<class path> adds one")
    for name in callbacks.keys():
        spec_ = callbacks[name]
        if spec_ is not None and not (isinstance(spec_, DictConfig) and "_target_" in spec_.keys()):
            raise ConfigError(f"callbacks.{name} needs a _target_ (the callback's class path): +callbacks.{name}._target_=pkg.Class")


def import_target(path: str, where: str) -> Any:
    """The object a ``_target_`` names; a failure is one line with the closest importable name."""
    if not isinstance(path, str) or not re.fullmatch(r"[A-Za-z_][\w.]*", path):
        raise ConfigError(f"{where}._target_={_show(path)} is not a dotted import path like torch.optim.AdamW")
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

    groups = config_groups()
    for ov in OverridesParser.create().parse_overrides(list(overrides)):
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
