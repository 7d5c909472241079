"""The LightningDataModule: encoded items -> length-bucketed, collated batches."""

from __future__ import annotations

from typing import Callable, Sequence

import lightning as L
from torch.utils.data import DataLoader

from alignx.data.batching import BucketBatchSampler


class AlignDataModule(L.LightningDataModule):
    """Serves already-encoded items; tokenisation happens once, before training starts."""

    def __init__(
        self,
        train_items: Sequence[dict],
        val_items: Sequence[dict],
        collate: Callable[[Sequence[dict]], dict],
        *,
        batch_size: int,
        eval_batch_size: int,
        bucketing: bool = True,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.train_items = list(train_items)
        self.val_items = list(val_items)
        self.collate = collate
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.bucketing = bucketing
        self.seed = seed
        self.num_workers = num_workers

    def _loader(self, items: Sequence[dict], batch_size: int, shuffle: bool) -> DataLoader:
        trainer = getattr(self, "trainer", None)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        sampler = BucketBatchSampler(
            [len(it["input_ids"]) for it in items],
            batch_size,
            shuffle=shuffle,
            bucketing=self.bucketing,
            seed=self.seed,
            rank=rank,
            world_size=world,
        )
        return DataLoader(items, batch_sampler=sampler, collate_fn=self.collate, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_items, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_items, self.eval_batch_size, shuffle=False)
