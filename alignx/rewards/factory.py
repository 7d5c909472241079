"""Reward factories and the ``reward`` config node, read and checked without building anything.

Import-light on purpose (no torch): the config checks run before a job creates anything, and a
plugin that only defines rewards should not pay for a deep-learning import.

The ``reward`` node (see ``conf/reward/`` and ``docs/rewards.md``)::

    reward:
      name: mix                          # a label for the preset
      components:                        # component name -> weight and options, summed
        gold: {name: ${dataset.task}, weight: 1.0}   # `name:` = the registered reward (default: the key)
        length_penalty: {weight: 0.5, target: 48}    # a factory's options next to its weight
      missing_eos_penalty: null

A component whose weight is 0 (or whose node is null) is off: neither checked nor built.
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence, Union

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from alignx.errors import AlignxError, ConfigError
from alignx.registry import Registry

#: a reward function: one finite score per (prompt, completion)
RewardFn = Callable[[Sequence[str], Sequence[str]], Sequence[float]]
#: where the reward config lives in the job config (error messages name keys under it)
ROOT = "reward"
#: keys of a component node that are not the reward's options
RESERVED = ("name", "weight")
#: a component's weight when its node sets none
DEFAULT_WEIGHT = 1.0
#: top-level keys of the reward node besides shortcuts that components interpolate (``${reward.path}``)
TOP_LEVEL = ("name", "components", "missing_eos_penalty")

_INTERPOLATION = re.compile(r"\$\{(" + ROOT + r"\.[A-Za-z_][\w.]*)\}")


class RewardError(AlignxError):
    """A reward function returned something that is not one finite score per completion."""


@dataclass(frozen=True)
class RewardOption:
    """One option of a :class:`RewardFactory`: a parameter of its build function."""

    name: str
    #: True when the parameter has no default: the config must set it (a null counts as unset)
    required: bool
    default: Any
    #: the parameter's annotation (``typing.Any`` when it has none or it cannot be resolved)
    annotation: Any
    #: what the option is, for error messages (``reward_factory(help=...)``)
    help: str = ""


class RewardFactory:
    """A registered reward that takes options: ``factory(**options)`` returns a reward function.

    ``build`` is any callable (function or class) whose keyword parameters are the options;
    their defaults are the options' defaults. Made by :func:`reward_factory`.
    """

    def __init__(self, build: Callable[..., RewardFn], help: Mapping[str, str] | None = None) -> None:
        self.build = build
        self.help = dict(help or {})
        self.__name__ = build.__name__
        self.__doc__ = build.__doc__
        params = inspect.signature(build).parameters.values()
        unknown = set(self.help) - {p.name for p in params}
        if unknown:
            raise TypeError(f"reward_factory(help=...) names {sorted(unknown)}, which {build.__name__} does not take")
        clashing = [p.name for p in params if p.name in RESERVED]
        if clashing:
            raise TypeError(f"{build.__name__}: a reward factory's options cannot be called {' or '.join(RESERVED)} "
                            "(they are the component's registry name and weight)")

    def __call__(self, **options: Any) -> RewardFn:
        return self.build(**options)

    def __repr__(self) -> str:
        return f"reward_factory({self.__name__}{self.signature_text()})"

    @property
    def options(self) -> dict[str, RewardOption]:
        """The options this factory takes, in parameter order."""
        try:
            hints = typing.get_type_hints(self.build.__init__ if inspect.isclass(self.build) else self.build)
        except Exception:  # noqa: BLE001 - an unresolvable annotation only means no type check
            hints = {}
        out = {}
        for p in inspect.signature(self.build).parameters.values():
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                required = p.default is p.empty
                out[p.name] = RewardOption(p.name, required, None if required else p.default,
                                           hints.get(p.name, Any), self.help.get(p.name, ""))
        return out

    @property
    def takes_any_option(self) -> bool:
        """Whether the build function has ``**kwargs`` (its options cannot be checked by name)."""
        return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(self.build).parameters.values())

    def signature_text(self) -> str:
        """``(target=64, scale=64.0)``: the options and their defaults (``<required>`` when none)."""
        parts = [f"{o.name}={'<required>' if o.required else _show(o.default)}" for o in self.options.values()]
        return f"({', '.join(parts)})"


def reward_factory(build: Callable[..., RewardFn] | None = None, *, help: Mapping[str, str] | None = None) -> Any:
    """Make ``build`` a reward with options: register the result under a name and every key of its
    config component (besides ``name`` and ``weight``) is passed to ``build`` as a keyword.

    Use as ``@reward_factory``, ``@reward_factory(help={"option": "what it is"})`` or
    ``reward_factory(SomeScorerClass, help=...)``. Options without a default are required; unknown,
    missing and mistyped options are config errors naming the key (``reward.components.<name>.<option>``).
    A ``ValueError`` raised by ``build`` is reported as a config error of that component, under the
    option's key when the message starts with the option's name (``"scale must be > 0, got 0"``).
    """
    if build is None:
        return lambda fn: RewardFactory(fn, help)
    return RewardFactory(build, help)


def is_reward_factory(obj: Any) -> bool:
    """Whether a registered reward takes options (made by :func:`reward_factory`)."""
    return isinstance(obj, RewardFactory)


@dataclass(frozen=True)
class Component:
    """One summand of a reward, read from ``reward.components.<key>``."""

    #: the component's name in the config and in metrics (``reward/<key>``)
    key: str
    #: the registered reward it uses (``name:``, else the key)
    reward: str
    weight: float
    #: every key but ``name`` and ``weight``, resolved
    options: dict[str, Any] = field(default_factory=dict)
    #: option -> the config key a user sets for it: ``reward.components.<key>.<option>``, or the key
    #: it interpolates (``reward.path`` for ``path: ${reward.path}``)
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{ROOT}.components.{self.key}"

    def source(self, option: str) -> str:
        return self.sources.get(option, f"{self.where}.{option}")


def _plain(cfg: Any, resolve: bool) -> Any:
    if OmegaConf.is_config(cfg):
        try:
            return OmegaConf.to_container(cfg, resolve=resolve)
        except OmegaConfBaseException as exc:
            raise ConfigError(f"{ROOT}: {str(exc).splitlines()[0]}") from None
    return cfg


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value).replace("True", "true").replace("False", "false").replace("None", "null")


def read_components(cfg: Any) -> list[Component]:
    """The components of the ``reward`` node that are on (weight != 0), checked for shape: a
    mapping of names to mappings, finite numeric weights, string registry names. Options are not
    checked here (that needs the registry: :func:`check_reward_config`)."""
    node, raw = _plain(cfg, True), _plain(cfg, False)
    if not isinstance(node, Mapping):
        raise ConfigError(f"{ROOT} must be a node with 'components', got {_show(node)}")
    components, raw_components = node.get("components"), raw.get("components")
    if isinstance(components, (list, tuple)):
        raise ConfigError(
            f"{ROOT}.components is a list; it is a mapping of component name -> {{weight, options}}: "
            "e.g. reward.components.gold={name: sentiment, weight: 1.0}; add one with "
            "+reward.components.<reward>.weight=0.5"
        )
    if not isinstance(components, Mapping):
        raise ConfigError(f"{ROOT}.components must be a mapping of component name -> {{weight, options}}, got {_show(components)}")
    out = []
    for key, comp in components.items():
        where = f"{ROOT}.components.{key}"
        if comp is None:
            continue  # a null component is off, like weight 0
        if not isinstance(comp, Mapping):
            raise ConfigError(f"{where}={_show(comp)} must be a node: {{weight: <number>, <option>: <value>, ...}}")
        weight = comp.get("weight", DEFAULT_WEIGHT)
        if not _number(weight) or not math.isfinite(weight):
            raise ConfigError(f"{where}.weight={_show(weight)} must be a finite number")
        if weight == 0:
            continue
        name = comp.get("name", key)
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}.name={_show(name)} must be the name of a registered reward (`alignx plugins` lists them)")
        raw_comp = raw_components.get(key) or {}
        options = {k: v for k, v in comp.items() if k not in RESERVED}
        sources = {}
        for option in options:
            match = _INTERPOLATION.fullmatch(str(raw_comp.get(option, "")))
            if match:
                sources[option] = match.group(1)
        out.append(Component(str(key), name, float(weight), options, sources))
    if not out:
        raise ConfigError(
            f"{ROOT}.components has no component with a non-zero weight: add one, e.g. "
            "+reward.components.<registered reward>.weight=1.0 (`alignx plugins` lists the rewards)"
        )
    return out


def _shortcuts(cfg: Any) -> set[str]:
    """Top-level reward keys that some component interpolates (``${reward.path}`` -> ``path``)."""
    components = _plain(cfg, False).get("components")
    values = [v for c in components.values() if isinstance(c, Mapping) for v in c.values()]
    return {ref.split(".")[1] for v in values for ref in _INTERPOLATION.findall(str(v))}


def _check_top_level(cfg: Any) -> None:
    node = _plain(cfg, True)
    valid = set(TOP_LEVEL) | _shortcuts(cfg)
    for key in node:
        if key not in valid:
            close = difflib.get_close_matches(str(key), sorted(valid), n=1)
            hint = f" Did you mean '{ROOT}.{close[0]}'?" if close else ""
            raise ConfigError(
                f"unknown key '{ROOT}.{key}': no reward component reads it.{hint} A component's option goes "
                f"under it: {ROOT}.components.<name>.{key}. Valid keys under '{ROOT}': {', '.join(sorted(valid))}"
            )
    penalty = node.get("missing_eos_penalty")
    if penalty is not None and (not _number(penalty) or not math.isfinite(penalty)):
        raise ConfigError(f"{ROOT}.missing_eos_penalty={_show(penalty)} must be a finite number or null (off)")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return " or ".join(_show(a) for a in typing.get_args(tp))
    names = {int: "an int", float: "a number", bool: "true or false", str: "a string", Path: "a path", type(None): "null"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _matches(value: Any, tp: Any) -> bool:
    """Whether ``value`` fits annotation ``tp``; annotations this cannot judge accept anything."""
    origin = typing.get_origin(tp)
    if origin is Union:
        return any(_matches(value, a) for a in typing.get_args(tp))
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in typing.get_args(tp))
    if tp is float:
        return _number(value)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is bool:
        return isinstance(value, bool)
    if tp is str or tp is Path:
        return isinstance(value, str) or (tp is Path and isinstance(value, Path))
    if tp is type(None):
        return value is None
    return True


def check_component(comp: Component, entry: Any) -> None:
    """ConfigError naming the key for options the registered reward ``entry`` does not take, required
    ones left unset (or null) and values of the wrong type. Builds nothing."""
    if not is_reward_factory(entry):
        if comp.options:
            option = min(comp.options)
            raise ConfigError(
                f"{comp.source(option)}: reward '{comp.reward}' is a plain reward function and takes no options "
                f"(a component takes only name and weight; {comp.where} gives {', '.join(sorted(comp.options))})"
            )
        return
    options = entry.options
    if not entry.takes_any_option:
        for option in comp.options:
            if option not in options:
                close = difflib.get_close_matches(option, list(options), n=1)
                hint = f" Did you mean '{comp.where}.{close[0]}'?" if close else ""
                valid = ", ".join([*RESERVED, *options])
                raise ConfigError(
                    f"unknown key '{comp.source(option)}': reward '{comp.reward}' has no option '{option}'.{hint} "
                    f"Valid keys under '{comp.where}': {valid}"
                )
    for opt in options.values():
        value = comp.options.get(opt.name)
        if opt.required and value is None:
            key = comp.source(opt.name)
            present = opt.name in comp.options  # set to null: the key exists, no '+' needed
            what = f" ({opt.help})" if opt.help else ""
            raise ConfigError(
                f"{key} is required: component '{comp.key}' (reward '{comp.reward}') needs option '{opt.name}'{what}; "
                f"set {'' if present else '+'}{key}=<value>"
            )
        if opt.name in comp.options and not (value is None and opt.default is None) and not _matches(value, opt.annotation):
            raise ConfigError(f"{comp.source(opt.name)}={_show(value)} is not {_type_name(opt.annotation)} "
                              f"(option '{opt.name}' of reward '{comp.reward}')")


def check_reward_config(cfg: Any, registry: Registry) -> list[Component]:
    """Check the whole ``reward`` node against the registry without building anything (no model is
    loaded): shape, registered names, each factory's options. Returns the active components.
    Online objectives call this before a job creates anything."""
    components = read_components(cfg)  # first: it checks the node's shape
    _check_top_level(cfg)
    for comp in components:
        check_component(comp, registry.get("reward", comp.reward))
    return components


def reward_model_paths(cfg: Any) -> list[str]:
    """The ``path`` of every active component that uses the registered reward ``rm`` (a trained
    reward model), e.g. for PPO's value model."""
    return [str(c.options["path"]) for c in read_components(cfg) if c.reward == "rm" and c.options.get("path")]
