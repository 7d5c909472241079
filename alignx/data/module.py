"""The LightningDataModule: encoded items -> length-bucketed, collated batches."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import lightning as L
from torch.utils.data import DataLoader

from alignx.data.batching import BucketBatchSampler
from alignx.errors import DataError


def item_lengths(items: Sequence[Mapping[str, Any]], owner: str = "the encoder") -> list[int]:
    """``len(item["input_ids"])`` of every item: the lengths length bucketing batches by.

    An item without ``input_ids`` is a :class:`DataError` naming ``owner`` (who encoded the
    items, e.g. ``objective 'rrhf'``), the missing key and the two remedies.
    """
    for i, item in enumerate(items):
        if "input_ids" not in item:
            raise DataError(
                f"encoded item {i + 1} has no 'input_ids' (its keys: {sorted(item)}); data.length_bucketing=true "
                "batches items by len(item['input_ids']). Return 'input_ids' from encode (a token-id list as long "
                "as the item, e.g. its longest sequence) or set data.length_bucketing=false",
                source=owner,
            )
    return [len(item["input_ids"]) for item in items]


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
    """Serves already-encoded items; tokenisation happens once, before training starts.

    With ``bucketing`` every item must carry ``input_ids`` (see :func:`item_lengths`); ``owner``
    names who encoded the items in that error. ``curriculum``: the training items are already in
    curriculum order (``data.curriculum``), so training batches keep it (no shuffling, no bucketing).
    """

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
        owner: str = "the encoder",
        curriculum: bool = False,
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
        #: who encoded the items, named in errors about them (e.g. ``objective 'dpo'``)
        self.owner = owner
        self.curriculum = curriculum
        if bucketing:  # fail before fitting, not at the first batch
            item_lengths(self.train_items, owner)
            item_lengths(self.val_items, owner)

    def _loader(self, items: Sequence[dict], batch_size: int, shuffle: bool) -> DataLoader:
        trainer = getattr(self, "trainer", None)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        # without bucketing the sampler never compares lengths: items need no input_ids then
        lengths = item_lengths(items, self.owner) if self.bucketing else [0] * len(items)
        sampler = BucketBatchSampler(
            lengths,
            batch_size,
            shuffle=shuffle,
            bucketing=self.bucketing,
            seed=self.seed,
            rank=rank,
            world_size=world,
            ordered=self.curriculum and shuffle,
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
