"""Dataset mixtures: several datasets (builtin tasks, files, Hub datasets) mixed into one, by rate.

``dataset=mixture`` (``conf/dataset/mixture.yaml``) holds ``sources: {name: <dataset node> +
weight}``; each source is loaded by its own registered loader, then every split is drawn from the
sources at the rates :func:`mixing_rates` gives (FLAN / T5 task balancing):

* examples-proportional with a cap ``K`` (``dataset.mixing_cap``; null = no cap): a source of
  ``n_i`` rows counts as ``m_i = min(n_i, K)`` rows, so a huge source cannot swamp the others;
* a source's ``weight`` ``w_i`` multiplies its size: ``e_i = w_i * m_i``;
* temperature ``T`` (``dataset.mixing_temperature``): ``r_i = e_i^(1/T) / sum_j e_j^(1/T)``.
  ``T = 1`` is proportional to ``e_i``; ``T -> inf`` tends to uniform over the sources with rows.

A split of ``N`` rows (``dataset.n_<split>``; null = ``sum_i m_i``) takes ``c_i`` rows of
source ``i``: ``N * r_i`` rounded by largest remainder (:func:`mixture_counts`). A source asked
for more rows than it has repeats them (a fresh seeded permutation per pass). Every row carries
``source`` (its source's name); rows are shuffled together. All of it is deterministic in the
seed, the split and the source names.
"""

from __future__ import annotations

import math
import random
from typing import Any, Callable, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

from alignx.data.sources import SPLITS, SplitRows
from alignx.errors import ConfigError
from alignx.registry import load_plugins

#: the row column that names the source a mixed row came from
SOURCE_COLUMN = "source"
#: keys of a source entry that belong to the mixture, not to the source's own loader
MIXTURE_KEYS = ("weight",)


def mixing_rates(
    sizes: Mapping[str, int], weights: Mapping[str, float], cap: int | None = None, temperature: float = 1.0
) -> dict[str, float]:
    """The share of the mixture each source gets: ``r_i = (w_i * min(n_i, cap))^(1/T) / sum_j (...)``.

    ``sizes`` and ``weights`` are keyed by source name (same keys); ``cap`` None means no cap;
    ``temperature`` > 0 (``math.inf`` gives uniform rates over the sources with ``w_i * n_i > 0``).
    A source with no rows or weight 0 gets rate 0. Raises :class:`ConfigError` on a negative
    weight, a cap < 1, a temperature <= 0 or when every source has size or weight 0.
    """
    if set(sizes) != set(weights):
        raise ValueError(f"sizes and weights name different sources: {sorted(sizes)} vs {sorted(weights)}")
    for name, w in weights.items():
        if not (w >= 0 and math.isfinite(w)):
            raise ConfigError(f"dataset.sources.{name}.weight must be a finite number >= 0, got {w}")
    if cap is not None and cap < 1:
        raise ConfigError(f"dataset.mixing_cap must be >= 1 (or null: no cap), got {cap}")
    if not temperature > 0:
        raise ConfigError(f"dataset.mixing_temperature must be > 0, got {temperature}")
    effective = {k: weights[k] * (min(n, cap) if cap is not None else n) for k, n in sizes.items()}
    if not any(e > 0 for e in effective.values()):
        raise ConfigError(f"dataset.sources: every source has no rows or weight 0 ({dict(sizes)} rows, weights {dict(weights)})")
    if math.isinf(temperature):
        scaled = {k: 1.0 if e > 0 else 0.0 for k, e in effective.items()}
    else:
        # in log space: e^(1/T) overflows for small T
        logs = {k: math.log(e) / temperature for k, e in effective.items() if e > 0}
        top = max(logs.values())
        scaled = {k: math.exp(logs[k] - top) if k in logs else 0.0 for k in effective}
    total = sum(scaled.values())
    return {k: s / total for k, s in scaled.items()}


def mixture_counts(rates: Mapping[str, float], total: int) -> dict[str, int]:
    """``total`` rows apportioned by ``rates`` (summing to 1): floors of ``total * r_i``, then one
    more row each to the largest remainders (ties: source order). A rate of 0 gets 0 rows."""
    exact = {k: total * r for k, r in rates.items()}
    counts = {k: math.floor(x) for k, x in exact.items()}
    short = total - sum(counts.values())
    by_remainder = sorted((k for k in rates if rates[k] > 0), key=lambda k: -(exact[k] - counts[k]))
    for k in by_remainder[:short]:
        counts[k] += 1
    return counts


def draw(n_rows: int, count: int, rng: random.Random) -> list[int]:
    """``count`` indices into ``n_rows`` rows: a seeded permutation, repeated (freshly permuted)
    while more rows are asked for than there are."""
    if count and not n_rows:
        raise ValueError(f"cannot draw {count} rows from a source without rows")
    out: list[int] = []
    while len(out) < count:
        order = list(range(n_rows))
        rng.shuffle(order)
        out.extend(order[: count - len(out)])
    return out


def _plain(node: Any) -> dict:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)


def source_nodes(cfg: Mapping) -> dict[str, dict]:
    """``dataset.sources`` as {name: the source's own dataset node (``weight`` removed)}, checked.

    A source must be a mapping naming a registered ``source`` and leave no mandatory (``???``)
    value unset; each problem is a :class:`ConfigError` naming ``dataset.sources.<name>.<key>``.
    """
    sources = cfg.get("sources")
    if not sources:
        raise ConfigError(
            "dataset.sources is empty: a mixture needs at least one source, e.g. "
            "+dataset@dataset.sources.sentiment=sentiment +dataset@dataset.sources.math=arithmetic"
        )
    registry = load_plugins()
    valid = registry.names("dataset")
    out = {}
    for name, node in sources.items():
        key = f"dataset.sources.{name}"
        if not isinstance(node, (Mapping, DictConfig)):
            raise ConfigError(f"{key} must be a dataset node ({{source: ..., ...}}), got {node!r}")
        if isinstance(node, DictConfig):
            unset = [k for k in node if OmegaConf.is_missing(node, k)]
            if unset:
                raise ConfigError(f"{key}.{unset[0]} must be set (it is ???)")
        source = node.get("source")
        if source is None or str(source) not in valid:
            raise ConfigError(f"{key}.source={source!r} is not a dataset source; valid: {', '.join(valid)}")
        out[str(name)] = {k: v for k, v in _plain(node).items() if k not in MIXTURE_KEYS}
    return out


def source_weights(cfg: Mapping) -> dict[str, float]:
    """Each source's ``weight``, or ``dataset.default_weight`` where it sets none."""
    out = {}
    for name, node in cfg["sources"].items():
        value = node.get("weight")
        value = cfg["default_weight"] if value is None else value
        try:
            out[str(name)] = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"dataset.sources.{name}.weight must be a number >= 0, got {value!r}") from None
    return out


def mix(
    loaded: Mapping[str, Sequence[dict]], rates: Mapping[str, float], total: int, seed: int, split: str
) -> tuple[list[tuple[str, int]], dict[str, int]]:
    """Which rows a mixed split takes: [(source, index into that source's rows)], shuffled, and the counts per source."""
    counts = mixture_counts(rates, total)
    picks = [(name, i) for name in loaded
             for i in draw(len(loaded[name]), counts[name], random.Random(f"{seed}/{split}/{name}"))]
    random.Random(f"{seed}/{split}/mixture").shuffle(picks)
    return picks, counts


def load_mixture(cfg: Mapping, kind: str, split: str, seed: int) -> SplitRows:
    """Rows of ``split`` mixed from ``dataset.sources`` (see the module docstring).

    Keys: ``sources`` ({name: dataset node + ``weight``}), ``default_weight``, ``mixing_cap``,
    ``mixing_temperature``, ``n_train``/``n_val``/``n_test`` (null = the capped sizes' sum). In
    the test split every source's ``label_noise`` is 0 (held-out evaluation compares with the truth).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {list(SPLITS)}")
    nodes = source_nodes(cfg)
    task = cfg.get("task")
    other = {name: n["task"] for name, n in nodes.items() if n.get("task") not in (None, task)}
    if task is not None and other:
        # dataset.task names the reward of every source without a task of its own: a source of another task contradicts it
        raise ConfigError(
            f"dataset.task={task} scores evaluation samples with that task's gold reward, but the mixture's sources "
            f"{other} are other tasks; set dataset.task=null (each source is then scored by its own task) or mix "
            f"sources of task {task} only"
        )
    weights = source_weights(cfg)
    cap = cfg.get("mixing_cap")
    registry = load_plugins()
    loaded: dict[str, SplitRows] = {}
    for name, node in nodes.items():
        if split == "test" and node.get("label_noise"):
            node = {**node, "label_noise": 0.0}
        loader: Callable = registry.get("dataset", str(node["source"]))
        rows = loader(node, kind, split, seed)
        loaded[name] = rows if isinstance(rows, SplitRows) else SplitRows(rows, split=split)
    sizes = {name: len(rows) for name, rows in loaded.items()}
    if not any(sizes.values()):  # e.g. no val split anywhere: an empty split, as a single source gives
        return SplitRows([], split=split)
    rates = mixing_rates(sizes, weights, None if cap is None else int(cap), float(cfg["mixing_temperature"]))
    n = cfg.get(f"n_{split}")
    total = int(n) if n is not None else sum(min(s, int(cap)) if cap is not None else s for s in sizes.values())
    if total < 0:
        raise ConfigError(f"dataset.n_{split} must be >= 0 (or null), got {total}")
    picks, _ = mix(loaded, rates, total, seed, split)
    rows = [{**loaded[name][i], SOURCE_COLUMN: name} for name, i in picks]
    locations = [loaded[name].location(i) for name, i in picks]
    return SplitRows(rows, locations=locations, split=split)


def source_counts(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Rows per source (the ``source`` column of mixed rows), sorted by name; {} for unmixed rows."""
    counts: dict[str, int] = {}
    for row in rows:
        name = row.get(SOURCE_COLUMN)
        if name is not None:
            counts[str(name)] = counts.get(str(name), 0) + 1
    return dict(sorted(counts.items()))
