"""A job's rows: loaded per split from the configured source, validated, then encoded per objective.

``load_rows`` -> ``encode_split`` are the first two arrows of the data path (see
:mod:`alignx.job`). They live in the data layer so the job, data stages and ``alignx eval``
share them without importing each other.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from omegaconf import OmegaConf

from alignx.data.cache import ENCODING_KEYS, cache_key, cached_encode, encoder_code
from alignx.data.curriculum import MODEL_CURRICULA, apply_curriculum
from alignx.data.formats import collect_invalid_rows
from alignx.data.mixture import source_counts
from alignx.data.quality import filter_rows, inject_low_quality
from alignx.data.sources import SplitRows
from alignx.data.templates import apply_template
from alignx.data.tokenize import EncodeStats, encode_rows
from alignx.errors import ConfigError, DataError
from alignx.registry import Registry
from alignx.rewards.combine import build_reward

log = logging.getLogger("alignx")


def load_rows(cfg: Any, registry: Registry, kind: str, test_kind: str | None = "sft") -> dict[str, list[dict]]:
    """Rows for train/val (of ``kind``) and test (of ``test_kind``, for evaluation; None = none), validated.

    ``data.invalid_rows`` applies to every loader, plugins' too (a context variable, see
    :func:`alignx.data.formats.collect_invalid_rows`): under ``drop`` each split's invalid rows
    are left out, counted in ``rows[split].invalid_dropped`` and reported in a warning. Each
    split comes back as a :class:`~alignx.data.sources.SplitRows` (a list that knows its split),
    its prompts rendered by the ``template`` config node (:mod:`alignx.data.templates`); the train
    split, after ``dataset.low_quality_fraction``'s injected rows, is reduced by ``data.filter``
    (:mod:`alignx.data.quality`) and put in ``data.curriculum`` order (:mod:`alignx.data.curriculum`).
    """
    loader = registry.get("dataset", str(cfg.dataset.source))
    seed = int(cfg.seed)
    kinds = {"train": kind, "val": kind, "test": test_kind if cfg.eval.enabled else None}
    rows: dict[str, list[dict]] = {}
    with collect_invalid_rows(str(cfg.data.invalid_rows)) as invalid:
        for split, split_kind in kinds.items():
            invalid.split = split
            dataset = cfg.dataset
            if split == "test" and cfg.dataset.get("label_noise"):
                # held-out evaluation compares with the truth: builtin tasks' test labels stay noise-free
                dataset = OmegaConf.merge(cfg.dataset, {"label_noise": 0.0})
            loaded = loader(dataset, split_kind, split, seed) if split_kind else SplitRows([], split=split)
            rows[split] = SplitRows(
                loaded, locations=loaded.locations if isinstance(loaded, SplitRows) else None,
                split=split, invalid_dropped=invalid.count(split),
            )
    low_quality = cfg.dataset.get("low_quality_fraction")
    if low_quality:  # known junk for a quality filter to find (builtin tasks)
        rows["train"] = inject_low_quality(rows["train"], float(low_quality), cfg.dataset.get("task"), registry, seed)
    # before tokenisation, so the tokenised-data cache key (it covers the rows) covers the template
    rows = apply_template(rows, cfg.template if "template" in cfg else None, seed)
    rows["train"] = filter_rows(rows["train"], str(cfg.data.filter), float(cfg.data.keep_fraction), cfg, registry, seed,
                                job_reward=lambda: build_reward(cfg.reward, registry))
    if str(cfg.data.curriculum) not in MODEL_CURRICULA:  # those need the starting model: the job orders them
        rows["train"] = apply_curriculum(rows["train"], str(cfg.data.curriculum), cfg.dataset, registry, seed)
    for split in rows:
        if invalid.count(split):
            log.warning("data %s: %s (data.invalid_rows=drop)", split, invalid.summary(split))
    if not rows["train"]:
        source = str(cfg.dataset.get("path") or cfg.dataset.name)
        if invalid.count("train"):
            raise DataError(f"every training row is invalid: {invalid.summary('train')}", source=source)
        raise DataError("no training rows", source=source)
    return rows


def load_auxiliary_rows(cfg: Any, registry: Registry, kinds: Mapping[str, str]) -> dict[str, list[dict]]:
    """Training rows an objective needs besides its own kind (e.g. PPO-ptx's demonstrations), by name."""
    if not kinds:
        return {}
    loader = registry.get("dataset", str(cfg.dataset.source))
    out = {}
    with collect_invalid_rows(str(cfg.data.invalid_rows)) as invalid:
        invalid.split = "train"
        for name, kind in kinds.items():
            out[name] = list(loader(cfg.dataset, kind, "train", int(cfg.seed)))
    return out


#: what an encoder may say about a row: an item it kept whole or truncated, or None and "dropped"
#: (``identical_after_truncation`` is decided by :func:`~alignx.data.tokenize.encode_rows`)
ENCODER_STATUSES = ("kept", "truncated", "dropped")


def encoding_settings(data_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``data.*`` values an objective's ``encode`` sees (:data:`~alignx.data.cache.ENCODING_KEYS`), as a plain dict."""
    return {k: _plain(data_cfg[k]) for k in ENCODING_KEYS}


def encode_options(objective_cls: Any, objective_cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``objective.*`` values ``objective_cls.encode`` reads (its ``encode_keys``), as a plain dict.

    A declared key missing from ``objective_cfg`` is a :class:`ConfigError` naming it.
    """
    keys = sorted(objective_cls.encode_keys)
    if keys and objective_cfg is None:
        raise TypeError(f"objective '{objective_cls.name}' declares encode_keys {keys}: pass its objective_cfg")
    missing = [k for k in keys if k not in objective_cfg]
    if missing:
        listed = ", ".join(f"objective.{k}" for k in missing)
        raise ConfigError(
            f"{listed} must be set: objective '{objective_cls.name}' lists it in encode_keys (its encode reads it); "
            f"add it to the objective's YAML or pass {' '.join(f'+objective.{k}=<value>' for k in missing)}"
        )
    return {k: _plain(objective_cfg[k]) for k in keys}


def _plain(value: Any) -> Any:
    """A config value as plain Python (a DictConfig/ListConfig becomes a resolved dict/list)."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _first_non_json(value: Any, path: str) -> tuple[str, Any] | None:
    """(path, value) of the first part of ``value`` that JSON cannot hold, or None."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return None
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = _first_non_json(v, f"{path}[{i}]")
            if found:
                return found
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            if not (k is None or isinstance(k, (str, int, float, bool))):
                return f"{path} key {k!r}", k
            found = _first_non_json(v, f"{path}[{k!r}]")
            if found:
                return found
        return None
    return path, value


def _as_stored(item: Any, owner: str, locate: Callable[[], tuple[str, int | None]]) -> dict:
    """``item`` as the cache gives it back: through JSON (tuples become lists, dict keys strings).

    Every item goes through this at encode time, so a job sees the same types whether its items
    were just encoded or read from the cache. A value JSON cannot hold (a tensor, a numpy number,
    a set) is a :class:`DataError` naming the row (``locate()``), ``owner`` (the encoder), where in
    the item it is and its type.
    """
    if not isinstance(item, dict):
        source, row = locate()
        raise DataError(f"the encode of {owner} returned a {type(item).__name__} item; an item is a dict", source=source, row=row)
    try:
        return json.loads(json.dumps(item))
    except (TypeError, ValueError):
        where, value = _first_non_json(item, "item") or ("item", item)
        kind = type(value)
        source, row = locate()
        raise DataError(
            f"{owner} encoded {where} as a {kind.__module__}.{kind.__qualname__}; items are stored as JSON (the "
            "tokenised-data cache), so their values must be dicts, lists, str, int, float, bool or None: convert it "
            "in encode (e.g. tensor.tolist(), int(x), list(s))",
            source=source, row=row,
        ) from None


def encode_split(
    objective_cls: Any,
    rows: Sequence[dict],
    tokenizer: Any,
    data_cfg: Mapping[str, Any],
    cache_dir: Path | None = None,
    label: str = "",
    *,
    objective_cfg: Mapping[str, Any] | None = None,
) -> tuple[list[dict], EncodeStats, bool]:
    """Encode rows for ``objective_cls``; returns (items, stats, cache_hit).

    Each row goes to ``objective_cls.encode(row, tokenizer, settings, options)``: ``settings``
    the :func:`encoding_settings` of ``data_cfg``, ``options`` the :func:`encode_options` of
    ``objective_cfg`` (the objective's node; needed when the objective declares
    ``encode_keys``). Each item comes back through JSON (tuples become lists, as the cache would
    give them back) and its status is checked. With ``cache_dir``, identical work (same rows, tokenizer, settings, options and
    encoder code: :func:`alignx.data.cache.encoder_code`) is done once and shared, e.g. by
    every job of a sweep. The item contract: ``docs/data.md``.
    """
    settings = encoding_settings(data_cfg)
    options = encode_options(objective_cls, objective_cfg)
    owner = f"objective '{objective_cls.name}'"

    def encode_one(index: int, row: Mapping[str, Any]) -> tuple[dict | None, str]:
        def locate() -> tuple[str, int | None]:
            return rows.location(index) if isinstance(rows, SplitRows) else (f"{label or 'data'} split", index + 1)

        item, status = objective_cls.encode(row, tokenizer, settings, options)
        if status not in ENCODER_STATUSES or (item is None) != (status == "dropped"):
            source, number = locate()
            raise DataError(
                f"the encode of {owner} returned ({type(item).__name__}, {status!r}); it returns (item, 'kept' | 'truncated') "
                "or (None, 'dropped')",
                source=source, row=number,
            )
        return (None if item is None else _as_stored(item, owner, locate)), status

    def encode() -> tuple[list[dict], EncodeStats]:
        positions = iter(range(len(rows)))  # encode_rows calls the encoder once per row, in order
        return encode_rows(rows, lambda r: encode_one(next(positions), r))

    if cache_dir is None:
        items, stats = encode()
        stats.sources = source_counts(rows)
        return items, stats, False
    encoder = encoder_code(objective_cls)
    keys = [f"data.{k}" for k in ENCODING_KEYS] + [f"objective.{k}" for k in options]
    covers = f"the rows, the tokenizer, {', '.join(keys)} and {encoder.describe()}"
    key = cache_key(rows, tokenizer, encoder, {"data": settings, "objective": options})
    items, stats, hit = cached_encode(cache_dir, key, encode, label, covers)
    if hit:  # encode_rows warned when it ran; a cache hit must say the same
        stats.warn_identical(label)
    stats.sources = source_counts(rows)  # from the rows: the same on a cache hit
    return items, stats, hit
