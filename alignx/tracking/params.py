"""Config -> MLflow params: flattening, and masking of secret-looking values (rules in :mod:`alignx.secrets`)."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from alignx.secrets import MASK, is_secret_key, is_secret_path, redact, redact_overrides, redact_text

__all__ = [
    "MASK", "MAX_VALUE_LEN", "config_params", "flatten", "is_secret_key", "masked_tags", "overrides_tag",
    "redacted_config_yaml",
]

#: MLflow's limit on a param value's length
MAX_VALUE_LEN = 6000


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
    """Flattened, masked, stringified params ready for MLflow.

    A value under a secret key (any component: ``tracking.credentials.user`` too) becomes
    ``***``; any other value has URL credentials and secret ``key=value`` text masked.
    """
    params = {}
    for key, value in flatten(cfg).items():
        # None (or its text, from a caller that stringified it) means nothing is set: nothing to hide
        text = MASK if is_secret_path(key) and value not in (None, "", "None") else redact_text(str(value))
        params[key] = text[:MAX_VALUE_LEN]
    return params


def redacted_config_yaml(resolved: Mapping[str, Any]) -> str:
    """YAML of a (resolved) config with every secret masked: the run dir's config.yaml and the
    ``config/resolved.yaml`` artifact."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(redact(dict(resolved))))


def overrides_tag(overrides: Iterable[str]) -> str:
    """The ``alignx.overrides`` tag: the job's command-line overrides, secret values masked."""
    return " ".join(redact_overrides(overrides))


def masked_tags(tags: Mapping[str, Any]) -> dict[str, str]:
    """Run tags as MLflow stores them: a secret-named tag is ``***``, any other has secrets in its text masked."""
    return {k: MASK if is_secret_key(k) and v not in (None, "") else redact_text(str(v)) for k, v in tags.items()}
