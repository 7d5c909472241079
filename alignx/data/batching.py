"""Collation and length-bucketed batching."""

from __future__ import annotations

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

    Each epoch: shuffle all indices, cut them into pools of ``pool_batches`` global batches,
    sort each pool by length and cut it into global batches of ``batch_size * world_size`` rows,
    then shuffle the batches. Padding drops to near the minimum while batch composition stays
    random. Rank ``r`` trains on rows ``r::world_size`` of each global batch, so N processes with
    ``batch_size`` B see exactly the batches one process with ``batch_size`` N*B sees (the
    basis of DDP's loss-curve equivalence); a last global batch too small to give every rank a
    row is dropped.

    Resumable: :meth:`resume_at` makes the next iteration of that epoch skip the batches a
    checkpointed run already trained on.
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
