"""The LightningDataModule: encoded items -> length-bucketed, collated batches."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import lightning as L
from torch.utils.data import DataLoader

from alignx.data.batching import BucketBatchSampler


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position within an epoch is saved in checkpoints (Lightning's stateful-loader hook).

    The position is what the trainer has actually trained on, read from its progress counters
    (``progress()``), not how far the iterator ran: Lightning fetches one batch ahead.
    """

    def __init__(self, *args: Any, progress: Callable[[], tuple[int, int]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._progress = progress

    def state_dict(self) -> dict[str, int]:
        epoch, done = self._progress() if self._progress is not None else (self.batch_sampler.epoch, 0)
        return {"epoch": int(epoch), "batches_done": int(done)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.resume_at(int(state["epoch"]), int(state["batches_done"]))


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
        if not shuffle:
            return DataLoader(items, batch_sampler=sampler, collate_fn=self.collate, num_workers=self.num_workers)
        return ResumableDataLoader(
            items, batch_sampler=sampler, collate_fn=self.collate, num_workers=self.num_workers,
            progress=self._train_progress if trainer is not None else None,
        )

    def _train_progress(self) -> tuple[int, int]:
        """(epoch, batches trained on in it) when a checkpoint is saved: the fit loop's counters."""
        loop = self.trainer.fit_loop
        return loop.epoch_progress.current.processed, loop.epoch_loop.batch_progress.current.processed

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_items, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_items, self.eval_batch_size, shuffle=False)
