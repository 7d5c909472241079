"""Unknown keys, named with the closest valid one; the keys an objective's node may hold."""

from __future__ import annotations

import difflib
from typing import (
    Any,
    Callable,
    Iterable,
    Mapping,
)

from alignx.errors import ConfigError


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


def show_value(value: Any) -> str:
    """A config value as YAML writes it (true/false/null; strings quoted), for error messages."""
    return repr(value) if isinstance(value, str) else str(value).replace("True", "true").replace("False", "false").replace("None", "null")


def objective_keys(
    node: Mapping[str, Any],
    config_keys: Iterable[str],
    option_keys_from: Mapping[str, str],
    options_of: Callable[[str, str], Iterable[str] | None],
) -> frozenset[str] | None:
    """The keys an objective's config node may hold: its ``config_keys``, ``name``, and for each
    ``key: kind`` of ``option_keys_from`` the options of the component of registry ``kind`` that
    ``node[key]`` selects (``options_of(kind, name)``; DPO's ``loss: preference_loss`` adds the
    loss's keyword options). None when one of them is undecided: the selecting key is unset, or
    ``options_of`` answers None.

    :meth:`alignx.objectives.Objective.check_config` (with the imported component) and the command
    line's check before any import (with options read from source) share this rule.
    """
    allowed = set(config_keys) | {"name"}
    for key, kind in option_keys_from.items():
        selected = node.get(key)
        options = options_of(kind, str(selected)) if selected is not None else None
        if options is None:
            return None
        allowed |= set(options)
    return frozenset(allowed)
