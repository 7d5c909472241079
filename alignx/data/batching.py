"""Collation and length-bucketed batching."""

from __future__ import annotations

import math
import random
from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from alignx.ops.logprobs import IGNORE_INDEX


def collate_sft(items: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad ``input_ids`` (with ``pad_id``) and ``labels`` (with IGNORE_INDEX) to the batch max."""
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


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar-length rows, in random order, sharded across data-parallel ranks.

    Each epoch: shuffle all indices, cut them into pools of ``pool_batches`` batches, sort each
    pool by length and cut it into batches, then shuffle the batches. Padding drops to near the
    minimum while batch composition stays random. With ``world_size`` > 1 every rank gets the
    same number of batches (the remainder is dropped), as DDP requires.
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
    ) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.bucketing = bucketing
        self.seed = seed
        self.pool = pool_batches * batch_size
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        rng = random.Random(self.seed * 100_003 + self.epoch)
        idx = list(range(len(self.lengths)))
        if self.shuffle:
            rng.shuffle(idx)
        if self.bucketing:
            pools = [sorted(idx[i : i + self.pool], key=self.lengths.__getitem__) for i in range(0, len(idx), self.pool)]
            idx = [i for pool in pools for i in pool]
        batches = [idx[i : i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
        if self.shuffle:
            rng.shuffle(batches)
        if self.world_size > 1:
            usable = (len(batches) // self.world_size) * self.world_size
            batches = batches[:usable][self.rank :: self.world_size]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._batches()

    def __len__(self) -> int:
        n = math.ceil(len(self.lengths) / self.batch_size)
        return n // self.world_size if self.world_size > 1 else n


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of token slots that are padding for these batches (to report the bucketing gain)."""
    total = sum(max(lengths[i] for i in b) * len(b) for b in batches if b)
    return 1.0 - sum(lengths) / total if total else 0.0
