"""``validate(cfg)``: every bad key, value, required value or ``_target_`` argument as one line, before
a job creates anything."""

from __future__ import annotations

import ast
import difflib
import inspect
from dataclasses import fields
from pathlib import Path
from typing import (
    Any,
    Callable,
    Iterable,
    Iterator,
    Literal,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from alignx.config.keys import check_known_keys, show_value
from alignx.config.schema import (
    ADAPTER_SCHEMAS,
    MODEL_SCHEMAS,
    REQUIRED,
    SECTIONS,
    TOP_LEVEL,
    TRAINER_EXTRA_KEYS,
    ModelSchema,
    RootSchema,
)
from alignx.config.targets import check_callbacks, check_strategy, check_targets
from alignx.errors import ConfigError
from alignx.registry import Registry, find_spec_no_import, load_plugins

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


def check_value(path: str, value: Any, tp: Any, meta: dict, *, imports: bool = True) -> None:
    """Check one value against its schema type and ``spec`` metadata; raise one line naming ``path``.

    Choices given as a function ask a library (Lightning's accelerators, strategies, precisions);
    ``imports=False`` skips them."""
    if not _is_type(value, tp):
        raise ConfigError(f"{path}={show_value(value)} is not {_type_name(tp)}")
    if value is None or isinstance(value, dict):
        return  # null where allowed; a node (_target_) is checked by check_targets
    choices = meta.get("choices")
    if callable(choices):
        choices = choices() if imports else None
    if choices is not None and value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        valid = ", ".join(dict.fromkeys(str(c) for c in choices))  # Lightning lists 16 and '16'
        raise ConfigError(f"{path}={show_value(value)} is not a valid value.{hint} Valid: {valid}")
    if "length" in meta and len(value) != meta["length"]:
        raise ConfigError(f"{path}={show_value(value)} must be a list of {meta['length']} values")
    bounds = _bounds(meta)
    items = [(f"{path}[{i}]", v) for i, v in enumerate(value)] if isinstance(value, list) else [(path, value)]
    for where, v in items:
        if isinstance(v, (int, float)) and not all(ok(v) for _, ok in bounds):
            raise ConfigError(f"{where}={show_value(v)} is out of range: must be {' and '.join(text for text, _ in bounds)}")
    problem = meta["check"](value) if "check" in meta else None
    if problem:
        raise ConfigError(f"{path}={show_value(value)} {problem}")


def check_node(node: DictConfig, schema: type, where: str, *, closed: bool, imports: bool = True) -> None:
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
            check_value(f"{prefix}{f.name}", _read(node, f.name, f"{prefix}{f.name}"), hints[f.name], dict(f.metadata),
                        imports=imports)


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


def _trainer_keys(imports: bool = True) -> set[str] | None:
    """Lightning ``Trainer`` arguments plus alignx's trainer keys (None: unknown without an import).

    Read from Lightning's source with ``ast`` first, so the command line can check ``+trainer.*``
    keys without importing Lightning (4 s here); the signature of the imported class otherwise.
    """
    names = _trainer_args_from_source()
    if names is None:
        if not imports:
            return None
        import lightning

        names = set(inspect.signature(lightning.Trainer.__init__).parameters) - {"self"}
    return names | TRAINER_EXTRA_KEYS


def _trainer_args_from_source() -> set[str] | None:
    spec = find_spec_no_import("lightning.pytorch.trainer.trainer")
    origin = getattr(spec, "origin", None)
    try:
        tree = ast.parse(Path(origin).read_text()) if origin else None
    except (OSError, SyntaxError, ValueError):
        return None
    for node in tree.body if tree else []:
        if isinstance(node, ast.ClassDef) and node.name == "Trainer":
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    args = item.args
                    return {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]} - {"self"}
    return None


def validate(cfg: DictConfig, extra_top_level: Iterable[str] = (), *, imports: bool = True) -> None:
    """Fail fast, before any work, on a mistyped key or a bad value: one line naming the key and what
    is valid. The job calls this first, before it creates a directory, a cache entry or an MLflow run.

    Checks, in order: mandatory (``???``) values, top-level keys, the keys, types and ranges of
    ``data``, ``save``, ``eval``, ``checkpoint``, ``trainer``, ``optim``, ``scheduler``, top-level
    values, alignx's adapter and model options (``model.logprob_chunk_size`` for every model kind), the training length, then every ``_target_`` node
    (its class or function imports, and its keys are arguments it takes).

    ``imports=False`` skips the checks that import a library (the trainer's keys are Lightning's
    ``Trainer`` arguments; ``_target_`` nodes name torch and transformers objects): the command
    line runs that cheap half before importing the training stack, so most mistakes answer at once.
    """
    check_required(cfg)
    check_known_keys([str(k) for k in cfg.keys()], TOP_LEVEL | set(extra_top_level), "")
    for section, (schema, closed) in SECTIONS.items():
        if isinstance(cfg.get(section), DictConfig):
            check_node(cfg[section], schema, section, closed=closed, imports=imports)
    check_node(cfg, RootSchema, "", closed=False, imports=imports)
    trainer_keys = _trainer_keys(imports)
    if trainer_keys is not None:
        check_known_keys([str(k) for k in cfg.trainer.keys()], trainer_keys, "trainer.")
    _check_training_length(cfg.trainer)
    adapter = cfg.get("adapter")
    if isinstance(adapter, DictConfig) and str(adapter.get("name")) in ADAPTER_SCHEMAS:
        check_node(adapter, ADAPTER_SCHEMAS[str(adapter.name)], "adapter", closed=True, imports=imports)
    model = cfg.get("model")
    if isinstance(model, DictConfig):
        check_node(model, ModelSchema, "model", closed=False, imports=imports)
    if isinstance(model, DictConfig) and str(model.get("kind")) in MODEL_SCHEMAS:
        check_node(model, MODEL_SCHEMAS[str(model.kind)], "model", closed=False, imports=imports)
        if model.kind == "llama":
            _check_llama_heads(model)
    check_callbacks(cfg.get("callbacks"))
    if imports:
        check_strategy(cfg.trainer.get("strategy"))
        check_targets(cfg)
    check_registry_names(cfg, load_plugins())


def check_registry_names(cfg: DictConfig, registry: Registry) -> None:
    """The objective, model, adapter, dataset source and benchmarks a config names are registered (nothing imported)."""
    names = {"objective": ("objective", "name"), "model": ("model", "kind"), "adapter": ("adapter", "name"),
             "dataset": ("dataset", "source")}
    for kind, (group, key) in names.items():
        node = cfg.get(group)
        if isinstance(node, DictConfig) and node.get(key) is not None:
            registry.check(kind, str(node[key]))
    for name in cfg.eval.get("benchmarks") or ():
        registry.check("benchmark", str(name))
