"""The shared base of every objective: optimisation, logging and the data hooks.

A concrete objective declares which row kind it trains on, how a row is encoded and
collated, and implements :meth:`Objective.step` (batch -> loss and metrics) with the pure
functions in :mod:`alignx.losses`. Everything else (optimizer and schedule from config,
metric logging with train/ and val/ prefixes) lives here once.
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import Any, Callable, ClassVar, Mapping, Sequence

import lightning as L
import torch

from alignx.data.batching import collate_sft
from alignx.data.tokenize import encode_sft_row


class Objective(L.LightningModule):
    """Base LightningModule of alignx objectives."""

    #: registry name = config-group option = MLflow tag value
    name: ClassVar[str] = ""
    #: which rows the objective trains on (see alignx.tasks.base.ROW_KINDS)
    data_kind: ClassVar[str] = "sft"
    #: keys the objective's config node may hold (besides ``name``); checked before any work
    config_keys: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        cfg: Mapping[str, Any],
        *,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        total_steps: int = 1,
    ) -> None:
        super().__init__()
        # from_pretrained returns eval mode and Lightning keeps whatever mode it is given: train
        # explicitly, so a checkpoint's dropout settings apply as configured
        self.model = model.train()
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.total_steps = max(1, int(total_steps))

    # -- data hooks ----------------------------------------------------------------------
    @classmethod
    def encode(cls, row: Mapping[str, Any], tokenizer: Any, data_cfg: Mapping[str, Any]) -> tuple[dict | None, str]:
        """Encode one row for this objective; returns (item or None if dropped, status)."""
        return encode_sft_row(
            row,
            tokenizer,
            max_length=int(data_cfg["max_length"]),
            truncation=str(data_cfg["truncation"]),
            completion_only=bool(data_cfg["completion_only_loss"]),
            chat_template=bool(data_cfg["chat_template"]),
        )

    @classmethod
    def collate_fn(cls, tokenizer: Any) -> Callable[[Sequence[dict]], dict]:
        return partial(collate_sft, pad_id=tokenizer.pad_token_id)

    # -- training ------------------------------------------------------------------------
    def step(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Compute (loss, metrics) for a batch. Subclasses implement this with pure loss functions."""
        raise NotImplementedError(f"{type(self).__name__} must implement step()")

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, metrics = self.step(batch)
        size = batch["input_ids"].size(0)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        if self._trainer is not None and self.trainer.optimizers:
            self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=size)
        self.log_dict({f"train/{k}": v for k, v in metrics.items()}, batch_size=size)
        return loss

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        loss, metrics = self.step(batch)
        size = batch["input_ids"].size(0)
        self.log("val/loss", loss, prog_bar=True, batch_size=size, sync_dist=True)
        self.log_dict({f"val/{k}": v for k, v in metrics.items()}, batch_size=size, sync_dist=True)

    def configure_optimizers(self) -> Any:
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = _call_accepted(self.scheduler_factory, optimizer, num_training_steps=self.total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _call_accepted(factory: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``factory`` with only the keyword arguments its signature accepts.

    Schedules differ in what they need (a constant schedule takes no step count), and
    a config should not have to repeat values alignx already knows.
    """
    target = factory.func if isinstance(factory, partial) else factory
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return factory(*args, **kwargs)
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return factory(*args, **kwargs)
    bound = set(factory.keywords) if isinstance(factory, partial) else set()
    return factory(*args, **{k: v for k, v in kwargs.items() if k in params and k not in bound})
