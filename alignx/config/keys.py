"""Unknown keys, named with the closest valid one."""

from __future__ import annotations

import difflib
from typing import (
    Any,
    Iterable,
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
