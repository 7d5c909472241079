"""Config -> MLflow params: flattening and scrubbing of secret-looking values."""

from __future__ import annotations

import re
from typing import Any, Mapping

SECRET_WORDS = {"token", "password", "passwd", "secret", "key", "apikey", "credential", "credentials"}
MASK = "***"
#: MLflow's limit on a param value's length
MAX_VALUE_LEN = 6000


def _words(key: str) -> list[str]:
    # split snake_case, kebab-case and camelCase so "hf_token" and "apiKey" are caught but
    # "max_new_tokens" (a count, not a secret) is not
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", key)
    return [w.lower() for w in re.split(r"[^A-Za-z0-9]+", spaced) if w]


def is_secret_key(key: str) -> bool:
    """True if the last component of a dotted key names a secret (token, password, secret, key)."""
    leaf = key.rsplit(".", 1)[-1]
    return any(w in SECRET_WORDS for w in _words(leaf))


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts/lists to ``a.b.0.c`` keys (lists of scalars stay one value)."""
    out: dict[str, Any] = {}
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(tree, (list, tuple)) and any(isinstance(v, (Mapping, list, tuple)) for v in tree):
        for i, v in enumerate(tree):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = tree
    return out


def config_params(cfg: Mapping[str, Any]) -> dict[str, str]:
    """Flattened, scrubbed, stringified params ready for MLflow."""
    params = {}
    for key, value in flatten(cfg).items():
        text = MASK if is_secret_key(key) and value not in (None, "") else str(value)
        params[key] = text[:MAX_VALUE_LEN]
    return params
