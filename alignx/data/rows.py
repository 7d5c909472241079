"""A job's rows: loaded per split from the configured source, validated, then encoded per objective.

``load_rows`` -> ``encode_split`` are the first two arrows of the data path (see
:mod:`alignx.job`). They live in the data layer so the job, data stages and ``alignx eval``
share them without importing each other.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import OmegaConf

from alignx.data.cache import cache_key, cached_encode
from alignx.data.formats import collect_invalid_rows
from alignx.data.sources import SplitRows
from alignx.data.tokenize import EncodeStats, encode_rows
from alignx.errors import DataError
from alignx.registry import Registry

log = logging.getLogger("alignx")


def load_rows(cfg: Any, registry: Registry, kind: str, test_kind: str | None = "sft") -> dict[str, list[dict]]:
    """Rows for train/val (of ``kind``) and test (of ``test_kind``, for evaluation; None = none), validated.

    ``data.invalid_rows`` applies to every loader, plugins' too (a context variable, see
    :func:`alignx.data.formats.collect_invalid_rows`): under ``drop`` each split's invalid rows
    are left out, counted in ``rows[split].invalid_dropped`` and reported in a warning. Each
    split comes back as a :class:`~alignx.data.sources.SplitRows` (a list that knows its split).
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


def encode_split(
    objective_cls: Any, rows: Sequence[dict], tokenizer: Any, data_cfg: Any, cache_dir: Path | None = None, label: str = ""
) -> tuple[list[dict], EncodeStats, bool]:
    """Encode rows for ``objective_cls``; returns (items, stats, cache_hit).

    With ``cache_dir``, identical work (same rows, tokenizer, encoding and formatting settings)
    is done once and shared, e.g. by every job of a sweep.
    """

    def encode() -> tuple[list[dict], EncodeStats]:
        return encode_rows(rows, lambda r: objective_cls.encode(r, tokenizer, data_cfg))

    if cache_dir is None:
        return (*encode(), False)
    encoder = f"{objective_cls.__module__}.{objective_cls.__qualname__}.encode"
    items, stats, hit = cached_encode(cache_dir, cache_key(rows, tokenizer, encoder, data_cfg), encode, label)
    if hit:  # encode_rows warned when it ran; a cache hit must say the same
        stats.warn_identical(label)
    return items, stats, hit
