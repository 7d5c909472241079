"""Collation and length-bucketed batching.

The public collators (building blocks for plugin objectives' ``collate_fn``; see ``docs/data.md``)
turn a list of encoded items into one batch of tensors, right-padded to the batch's longest
sequence:

* :func:`collate_sft`: items of :func:`alignx.data.tokenize.encode_sft_row`;
* :func:`collate_pairs`: items of :func:`alignx.data.tokenize.encode_pair`;
* :func:`collate_ranked`: items of :func:`alignx.data.tokenize.encode_ranked`;
* :func:`collate_ranked_lm`: items of :func:`alignx.data.tokenize.encode_ranked_lm`.

Padded label positions are :data:`IGNORE_INDEX`. :class:`BucketBatchSampler` batches items of
similar ``len(item["input_ids"])``.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch.utils.data import Sampler

from alignx.data.mixture import SOURCE_COLUMN
from alignx.losses.reward import ranking_pairs
from alignx.ops.logprobs import IGNORE_INDEX

__all__ = ["IGNORE_INDEX", "SOURCE_INDEX", "BucketBatchSampler", "collate_pairs", "collate_ranked", "collate_ranked_lm", "collate_sft",
           "collate_with_sources", "padding_fraction", "source_names"]

#: the batch key of each item's source (a dataset mixture's rows): index into :func:`source_names`, [B] long
SOURCE_INDEX = "source_index"


def collate_sft(items: Sequence[Mapping[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Items with ``input_ids`` and ``labels`` -> ``input_ids``, ``attention_mask``, ``labels`` [B, T].

    Right-padded to the longest item: ``input_ids`` with ``pad_id``, ``labels`` with
    :data:`IGNORE_INDEX`, ``attention_mask`` 1 on real tokens.
    """
    width = max(len(it["input_ids"]) for it in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for i, it in enumerate(items):
        n = len(it["input_ids"])
        ids[i, :n] = torch.tensor(it["input_ids"])
        labels[i, :n] = torch.tensor(it["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def collate_pairs(items: Sequence[Mapping[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pair items -> chosen rows then rejected rows, in one padded batch of 2B: one forward serves both.

    ``input_ids``, ``attention_mask``, ``labels`` [2B, T] (rows ``:B`` chosen, ``B:`` rejected, see
    :func:`collate_sft`). Precomputed reference log-probs (``item["ref_logps"] = [chosen,
    rejected]`` on every item) come along as ``ref_logps`` [2B] in the same order.
    """
    seqs = [{"input_ids": it["chosen_input_ids"], "labels": it["chosen_labels"]} for it in items]
    seqs += [{"input_ids": it["rejected_input_ids"], "labels": it["rejected_labels"]} for it in items]
    batch = collate_sft(seqs, pad_id)
    if all("ref_logps" in it for it in items):
        batch["ref_logps"] = torch.tensor([it["ref_logps"][j] for j in (0, 1) for it in items], dtype=torch.float32)
    return batch


def collate_ranked(items: Sequence[Mapping[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Ranked items -> every response of every item in one padded batch (one forward per response).

    ``input_ids``, ``attention_mask`` [N, T] (N = the items' responses, item by item), plus the
    comparisons of :func:`alignx.losses.reward.ranking_pairs`: ``better``, ``worse`` (indices into
    the N responses) and ``group`` (the item of each comparison) [P], and ``margin`` [P] (float;
    0 for items without one) when any item carries a ``margin``.
    """
    flat = [{"input_ids": s, "labels": s} for it in items for s in it["seqs"]]
    batch = collate_sft(flat, pad_id)
    del batch["labels"]
    better, worse, group = ranking_pairs([it["ranks"] for it in items])
    batch["better"] = torch.tensor(better, dtype=torch.long)
    batch["worse"] = torch.tensor(worse, dtype=torch.long)
    batch["group"] = torch.tensor(group, dtype=torch.long)
    if any("margin" in it for it in items):
        batch["margin"] = torch.tensor([float(items[g].get("margin", 0.0)) for g in group], dtype=torch.float32)
    return batch


def collate_ranked_lm(items: Sequence[Mapping[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Ranked items with labels -> K slots per item in one padded batch, item-major.

    ``input_ids``, ``attention_mask``, ``labels`` [B*K, T] (row ``b*K + k`` is item b's response
    k, so ``.view(B, K)`` of any per-row value groups it by item; see :func:`collate_sft`), ``ranks``
    [B, K] (float) and ``valid`` [B, K] (bool). K is the most responses any item has; an item with
    fewer gets filler slots (one ``pad_id`` token, attended to so no attention row is empty, no
    label, rank +inf) marked invalid, which the listwise losses skip.
    """
    k = max(len(it["seqs"]) for it in items)
    flat: list[dict[str, Any]] = []
    ranks = torch.full((len(items), k), float("inf"), dtype=torch.float32)
    valid = torch.zeros((len(items), k), dtype=torch.bool)
    for b, it in enumerate(items):
        n = len(it["seqs"])
        flat += [{"input_ids": s, "labels": lab} for s, lab in zip(it["seqs"], it["seq_labels"])]
        flat += [{"input_ids": [pad_id], "labels": [IGNORE_INDEX]}] * (k - n)
        ranks[b, :n] = torch.tensor([float(r) for r in it["ranks"]])
        valid[b, :n] = True
    batch = collate_sft(flat, pad_id)
    batch["ranks"] = ranks
    batch["valid"] = valid
    return batch


def source_names(*item_lists: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """The sources the items came from (their ``source``, a dataset mixture's row column), sorted;
    () unless every item carries one (an objective's ``prepare_items`` may build items without it)."""
    items = [it for items in item_lists for it in items]
    if not items or not all(SOURCE_COLUMN in it for it in items):
        return ()
    return tuple(sorted({str(it[SOURCE_COLUMN]) for it in items}))


def collate_with_sources(
    collate: Callable[[Sequence[Mapping[str, Any]]], dict], index: Mapping[str, int], items: Sequence[Mapping[str, Any]]
) -> dict:
    """``collate(items)`` plus :data:`SOURCE_INDEX`: ``index[item["source"]]`` of each item, in item order [B].

    One entry per item, whatever the batch's row layout (a pairs batch has 2B sequences): row ``i``
    of an objective's per-row loss (:class:`alignx.objectives.base.RowLoss`) is item ``i``.
    """
    batch = collate(items)
    batch[SOURCE_INDEX] = torch.tensor([index[str(it[SOURCE_COLUMN])] for it in items], dtype=torch.long)
    return batch


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar-length rows, in random order, sharded across data-parallel ranks.

    Each epoch: shuffle all indices, cut them into pools of ``pool_batches`` global batches,
    sort each pool by length and cut it into global batches of ``batch_size * world_size`` rows,
    then shuffle the batches. Padding drops to near the minimum while batch composition stays
    random. Rank ``r`` trains on rows ``r::world_size`` of each global batch, so N processes with
    ``batch_size`` B see exactly the batches one process with ``batch_size`` N*B sees (the
    basis of DDP's loss-curve equivalence); a last global batch too small to give every rank a
    row is dropped.

    Resumable: :meth:`resume_at` makes the next iteration of that epoch skip the batches a
    checkpointed run already trained on.

    ``ordered`` (a curriculum, :mod:`alignx.data.curriculum`): batches are consecutive rows in
    the given order, every epoch, with neither shuffling nor length bucketing.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        shuffle: bool = True,
        bucketing: bool = True,
        seed: int = 0,
        pool_batches: int = 50,
        rank: int = 0,
        world_size: int = 1,
        ordered: bool = False,
    ) -> None:
        self.lengths = list(lengths)
        self.ordered = ordered
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.bucketing = bucketing
        self.seed = seed
        self.rank = rank
        self.world_size = max(1, world_size)
        self.global_batch = batch_size * self.world_size
        self.pool = pool_batches * self.global_batch
        self.epoch = 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Skip the first ``batches_done`` batches when epoch ``epoch`` is next iterated."""
        self._resume = (int(epoch), int(batches_done))

    def global_batches(self) -> list[list[int]]:
        """This epoch's batches before sharding (what a single process with the global batch size sees)."""
        rng = random.Random(self.seed * 100_003 + self.epoch)
        idx = list(range(len(self.lengths)))
        if self.ordered:  # a curriculum: the rows' own order is the point
            return [b for b in (idx[i : i + self.global_batch] for i in range(0, len(idx), self.global_batch))
                    if len(b) >= self.world_size]
        if self.shuffle:
            rng.shuffle(idx)
        if self.bucketing:
            pools = [sorted(idx[i : i + self.pool], key=self.lengths.__getitem__) for i in range(0, len(idx), self.pool)]
            idx = [i for pool in pools for i in pool]
        batches = [idx[i : i + self.global_batch] for i in range(0, len(idx), self.global_batch)]
        if self.shuffle:
            rng.shuffle(batches)
        return [b for b in batches if len(b) >= self.world_size]

    def _batches(self) -> list[list[int]]:
        batches = self.global_batches()
        if self.world_size > 1:
            batches = [b[self.rank :: self.world_size] for b in batches]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches()
        if self._resume is not None:
            epoch, done = self._resume
            self._resume = None
            if epoch == self.epoch:
                batches = batches[done:]
        yield from batches

    def __len__(self) -> int:
        n = len(self.lengths)
        full, rest = divmod(n, self.global_batch)
        return full + (1 if rest >= self.world_size else 0)


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of token slots that are padding for these batches (to report the bucketing gain)."""
    total = sum(max(lengths[i] for i in b) * len(b) for b in batches if b)
    return 1.0 - sum(lengths) / total if total else 0.0
