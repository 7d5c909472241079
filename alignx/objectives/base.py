"""The shared base of every objective: optimisation, logging and the data hooks.

A concrete objective declares which row kind it trains on, how a row is encoded and
collated, and implements :meth:`Objective.step` (batch -> loss and metrics) with the pure
functions in :mod:`alignx.losses`. Everything else (optimizer and schedule from config,
metric logging with train/ and val/ prefixes) lives here once.
"""

from __future__ import annotations

import copy
import inspect
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, ClassVar, Iterator, Mapping, Sequence

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

    # -- model and data hooks ------------------------------------------------------------
    @classmethod
    def row_kind(cls, cfg: Mapping[str, Any]) -> str:
        """The row kind this objective trains on, given its config node (default: :attr:`data_kind`)."""
        return cls.data_kind

    @classmethod
    def prepare_model(cls, model: torch.nn.Module, tokenizer: Any, cfg: Mapping[str, Any]) -> torch.nn.Module:
        """Adapt the built model before adapters are added (e.g. swap the LM head for a reward head)."""
        return model

    @classmethod
    def auxiliary_kinds(cls, cfg: Mapping[str, Any]) -> dict[str, str]:
        """Extra training rows the objective needs besides :meth:`row_kind`: {name: row kind}
        (e.g. PPO-ptx's demonstrations). They reach :meth:`attach`, encoded as SFT items."""
        return {}

    @classmethod
    def prepare_items(cls, items: list[dict], cfg: Mapping[str, Any], seed: int) -> list[dict]:
        """A hook over all encoded items of a split, after per-row encoding (default: unchanged)."""
        return items

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

    @classmethod
    def datamodule(cls, train_items: list[dict], val_items: list[dict], tokenizer: Any, cfg: Any) -> L.LightningDataModule:
        """The data module the trainer iterates (default: length-bucketed batches of encoded items)."""
        from alignx.data.module import AlignDataModule

        return AlignDataModule(
            train_items,
            val_items,
            cls.collate_fn(tokenizer),
            batch_size=int(cfg.data.batch_size),
            eval_batch_size=int(cfg.data.eval_batch_size),
            bucketing=bool(cfg.data.length_bucketing),
            seed=int(cfg.seed),
            num_workers=int(cfg.data.num_workers),
        )

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Fail before any work on a config this objective cannot run (``cfg`` is the whole job
        config). Default: objective keys outside :attr:`config_keys` (when it lists any) are
        named with the closest valid one. Subclasses extend it and call ``super()``."""
        if cls.config_keys:
            from alignx.config import _unknown

            _unknown([str(k) for k in cfg.objective.keys()], cls.config_keys | {"name"}, "objective.")

    @classmethod
    def stages(cls, cfg: Any) -> list[dict] | None:
        """An objective that is several trainings (iterative methods: SPIN, ...) returns them as
        pipeline stages (``[{name, overrides}]``, see :mod:`alignx.pipeline`); the job then runs
        them in order as nested MLflow runs, with the stage cache. ``cfg`` is the whole job
        config. Default: None, one training run."""
        return None

    def attach(self, job: "JobContext") -> None:
        """Called by ``train`` before fitting with what the job knows beyond the objective's node
        (full config, registry, encoded items, output dir). Default: nothing."""

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters the optimizer updates (default: the policy's trainable ones)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    # -- training ------------------------------------------------------------------------
    def step(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Compute (loss, metrics) for a batch. Subclasses implement this with pure loss functions."""
        raise NotImplementedError(f"{type(self).__name__} must implement step()")

    def loss_weight(self, batch: Mapping[str, torch.Tensor], metrics: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """How many units the batch's loss is a mean over (default: its rows; SFT: its tokens).

        Under data parallelism each rank's loss is re-weighted by its share of the global
        units, so N processes optimise exactly the loss one process would on the whole batch
        (DDP averages gradients; a plain per-rank mean would weight a rank with fewer tokens up).
        """
        return torch.tensor(float(batch["input_ids"].size(0)), device=self.device)

    def _global_mean(self, loss: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        trainer = self._trainer
        if trainer is None or trainer.world_size <= 1:
            return loss
        weight = weight.detach().float()
        total = trainer.strategy.reduce(weight.clone(), reduce_op="sum")
        return loss * weight * trainer.world_size / total.clamp(min=1e-12)

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, metrics = self.step(batch)
        loss = self._global_mean(loss, self.loss_weight(batch, metrics))
        size = batch["input_ids"].size(0)
        # synced: under DDP rank 0 logs the whole global batch's values, not its own shard's
        sync = self._trainer is not None and self.trainer.world_size > 1
        self.log("train/loss", loss, prog_bar=True, batch_size=size, sync_dist=sync)
        if self._trainer is not None and self.trainer.optimizers:
            self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=size)
        self.log_dict({f"train/{k}": v for k, v in metrics.items()}, batch_size=size, sync_dist=sync)
        return loss

    # -- exact resume --------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Adds the RNG states, so a resumed run draws what the uninterrupted one would have.
        Subclasses that override this call ``super()``."""
        from alignx.checkpoint import rng_state

        checkpoint["alignx_rng"] = rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._rng_to_restore = checkpoint.get("alignx_rng")

    def on_train_start(self) -> None:
        # restored here, not at load: nothing between the checkpoint's save point and the next
        # training batch may consume random numbers, and Lightning does work in between
        state = getattr(self, "_rng_to_restore", None)
        if state is not None:
            from alignx.checkpoint import set_rng_state

            set_rng_state(state)
            self._rng_to_restore = None

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        loss, metrics = self.step(batch)
        size = batch["input_ids"].size(0)
        self.log("val/loss", loss, prog_bar=True, batch_size=size, sync_dist=True)
        self.log_dict({f"val/{k}": v for k, v in metrics.items()}, batch_size=size, sync_dist=True)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.trainable_parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = _call_accepted(self.scheduler_factory, optimizer, num_training_steps=self.total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


@dataclass
class JobContext:
    """What :meth:`Objective.attach` receives: the job's config and data beyond the objective node."""

    cfg: Any
    registry: Any
    train_items: list[dict]
    val_items: list[dict]
    output_dir: Any = None
    #: extra encoded rows an objective asked for (see :meth:`Objective.auxiliary_kinds`)
    auxiliary: dict[str, list[dict]] = field(default_factory=dict)


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


class ReferenceObjective(Objective):
    """Base of objectives scored against a frozen reference policy (DPO family, KTO).

    Where the reference comes from, cheapest first:

    * ``objective.precompute_ref_logps=true``: reference log-probabilities are computed once at
      fit start (the policy has not moved yet, so it *is* the reference) and cached on disk;
      no reference is kept in memory during training;
    * an adapter: the same model with its adapters disabled (no second copy);
    * full fine-tuning: a frozen copy made at construction.

    Subclasses set :meth:`needs_reference` false for reference-free losses. Collated batches
    hold ``k`` sequences per item in ``k`` blocks of ``B`` rows (DPO: chosen then rejected);
    precomputed values travel as ``batch["ref_logps"]`` in the same layout.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, cfg: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(model, tokenizer, cfg, **kwargs)
        self.beta = float(cfg.get("beta", 0.1))
        self.precompute_ref = bool(cfg.get("precompute_ref_logps", False)) and self.needs_reference()
        # Held outside the module tree on purpose: Lightning switches every submodule to train
        # mode at fit start (dropout on in the reference) and would checkpoint its weights.
        self._ref: list[torch.nn.Module] = []
        if self.needs_reference() and not self.precompute_ref and not _is_peft(model):
            self._ref.append(copy.deepcopy(model).eval().requires_grad_(False))

    def needs_reference(self) -> bool:
        """False for reference-free losses (no reference is built or computed)."""
        return True

    @property
    def ref_model(self) -> torch.nn.Module | None:
        """The frozen reference copy (full fine-tuning only); None when adapters or no reference serve."""
        return self._ref[0] if self._ref else None

    def on_fit_start(self) -> None:
        if self.ref_model is not None:
            self.ref_model.to(self.device).eval()

    @contextmanager
    def reference(self) -> Iterator[torch.nn.Module | None]:
        """The reference policy as a module, for the duration of the block.

        Yields None when it is not in memory (reference-free, or full fine-tuning with
        precomputed log-probs after training started).
        """
        if not self.needs_reference():
            yield None
        elif self.ref_model is not None:
            yield self.ref_model
        elif _is_peft(self.model):
            with self.model.disable_adapter():
                yield self.model
        else:
            yield None

    @torch.no_grad()
    def reference_logps(self, batch: Mapping[str, torch.Tensor], *, at_start: bool = False) -> torch.Tensor:
        """Summed completion log-probs of every sequence in ``batch`` under the reference.

        Uses ``batch["ref_logps"]`` when precomputed. ``at_start`` (precomputation before any
        update) lets full fine-tuning use the policy itself, which still equals the reference.
        """
        if "ref_logps" in batch:
            return batch["ref_logps"]
        with self.reference() as ref:
            if ref is None and at_start:
                ref = self.model
            if ref is None:
                raise RuntimeError(
                    "reference log-probs were configured to be precomputed (objective.precompute_ref_logps) "
                    "but this batch has none"
                )
            was_training = ref.training
            ref.eval()
            try:
                logits = ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            finally:
                ref.train(was_training)
        from alignx.losses.preference import sequence_logps

        return sequence_logps(logits, batch["labels"])[0]


def _is_peft(model: torch.nn.Module) -> bool:
    from alignx.models.adapters import is_peft

    return is_peft(model)
