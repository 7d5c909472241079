"""The shared base of every objective: optimisation, logging, the data hooks, and the job contract.

A concrete objective declares which row kind it trains on, how a row is encoded and
collated, and implements :meth:`Objective.step` (batch -> loss and metrics) with the pure
functions in :mod:`alignx.losses`. Everything else (optimizer and schedule from config,
metric logging with train/ and val/ prefixes) lives here once.

Everything the job (:mod:`alignx.job`) and ``alignx eval`` ask of an objective is declared on
:class:`Objective` with its default and documented there: class attributes
(:attr:`~Objective.generates_text`, :attr:`~Objective.eval_kind`,
:attr:`~Objective.merge_adapter_on_save`, ...), classmethods run before any model exists
(:meth:`~Objective.row_kind`, :meth:`~Objective.test_kind`, :meth:`~Objective.check_config`,
:meth:`~Objective.stages`, ...), and instance state read after training
(:attr:`~Objective.step_metrics`, :attr:`~Objective.final_metrics`). The job reads nothing else.
"""

from __future__ import annotations

import copy
import inspect
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, ClassVar, Iterator, Mapping, NamedTuple, Sequence

import lightning as L
import torch

from alignx.checkpoint import rng_state, set_rng_state
from alignx.config import check_known_keys, objective_keys
from alignx.data.batching import SOURCE_INDEX, collate_sft, collate_with_sources, source_names
from alignx.data.module import AlignDataModule
from alignx.data.tokenize import encode_sft_row
from alignx.errors import ConfigError
from alignx.losses.preference import completion_logits_mean, sequence_logps
from alignx.losses.sft import sft_loss
from alignx.models.adapters import is_peft
from alignx.models.compute import compile_model
from alignx.models.lm_head import head_inputs
from alignx.models.packing import enable_padding_free, pack, packed
from alignx.models.reference import PrecomputeReferenceLogps
from alignx.ops.chunked import (
    completion_logits_mean_from_hidden,
    cross_entropy_from_hidden,
    sequence_logps_from_hidden,
)
from alignx.registry import load_plugins


class CompletionLogps(NamedTuple):
    """What :meth:`Objective.completion_logps` returns for a batch of B sequences."""

    #: summed log-probability of each sequence's labelled (completion) tokens [B]
    logps: torch.Tensor
    #: how many labelled tokens each sequence has [B] (long)
    n_tokens: torch.Tensor
    #: mean logit over the vocabulary and the labelled positions [B], detached (the ``logits/*``
    #: metrics); None unless asked for
    logits_mean: torch.Tensor | None


class RowLoss(NamedTuple):
    """Each item's share of a batch's loss, for ``train/loss/<source>``: the batch loss is
    ``total.sum() / weight.sum()``, and that of any subset of items the same sums over the subset."""

    #: each item's summed loss [B] (SFT: the NLL summed over its labelled tokens; a pair: its loss), detached
    total: torch.Tensor
    #: the units each item's loss is a mean over [B] (SFT: its labelled tokens; a pair: 1)
    weight: torch.Tensor


#: the key of :meth:`Objective.step`'s metrics under which an objective with
#: :attr:`Objective.per_row_loss` returns a :class:`RowLoss` (it is not logged as a metric)
ROW_LOSS = "row_loss"


class Objective(L.LightningModule):
    """Base LightningModule of alignx objectives."""

    #: registry name = config-group option = MLflow tag value
    name: ClassVar[str] = ""
    #: which rows the objective trains on (see alignx.tasks.base.ROW_KINDS)
    data_kind: ClassVar[str] = "sft"
    #: the objective key whose value chooses the row kind instead (a reward model's
    #: ``objective.data_kind``: pairs or ranked), one of :attr:`row_kinds`; None: always
    #: :attr:`data_kind`. Declared rather than computed so the command line can read it from source
    row_kind_key: ClassVar[str | None] = None
    #: the row kinds ``objective.<row_kind_key>`` may name
    row_kinds: ClassVar[tuple[str, ...]] = ()
    #: keys the objective's config node may hold (besides ``name``), each with its default in the
    #: objective's YAML; checked before any work. None: undeclared (nothing is checked)
    config_keys: ClassVar[frozenset[str] | None] = None
    #: ``{key: registry kind}``: the objective's node also holds the options of the component
    #: ``objective.<key>`` selects (the registered object's ``options``), e.g. DPO's
    #: ``{"loss": "preference_loss"}``; declared here, not computed in an override, so the command
    #: line applies the same rule from source before importing the objective
    option_keys_from: ClassVar[Mapping[str, str]] = {}
    #: the trained model is a policy, so evaluation samples completions from it; False for a
    #: scorer (a reward model), which evaluation instead scores on held-out rows of :attr:`eval_kind`
    generates_text: ClassVar[bool] = True
    #: for objectives that do not generate text: the held-out row kind evaluation scores
    #: (a reward model: ``"pairs"``, giving ``eval/rm_accuracy``); None = no evaluation
    eval_kind: ClassVar[str | None] = None
    #: with an adapter, the saved artifact must be one plain model (also ``<output_dir>/merged``),
    #: e.g. a reward model that PPO loads as its reward and value model
    merge_adapter_on_save: ClassVar[bool] = False
    #: the ``objective.*`` keys :meth:`encode` reads: exactly these reach it (as ``objective_cfg``)
    #: and their values are part of the tokenised-data cache key; each must be set in the
    #: objective's YAML (docs/data.md)
    encode_keys: ClassVar[frozenset[str]] = frozenset()
    #: bump it when what :meth:`encode` returns changes through code outside the packages the
    #: tokenised-data cache key covers (those defining the objective and its ``encode``; an
    #: external helper library, a tokenizer patch): cached items of other versions are then
    #: not served (docs/data.md)
    encode_version: ClassVar[str] = "1"
    #: :meth:`step` returns each item's loss (``metrics[ROW_LOSS]``, a :class:`RowLoss`) on batches
    #: that carry :data:`~alignx.data.batching.SOURCE_INDEX`, which :meth:`datamodule` adds to the
    #: batches of a dataset mixture for such objectives; training then logs ``train/loss/<source>``
    #: (docs/data.md, "Dataset mixtures"). Other datasets' batches never carry it: no cost there
    per_row_loss: ClassVar[bool] = False
    #: the sources of a dataset mixture's items (train and val), sorted, set by :meth:`bind` for an
    #: objective with :attr:`per_row_loss`; the values of ``batch[SOURCE_INDEX]`` index it
    source_names: tuple[str, ...] = ()
    #: ``model.logprob_chunk_size`` of the job, set per instance by :meth:`bind`: None = log-probs
    #: from the model's logits; N = from its final hidden states, N labelled positions at a time,
    #: never the [B, T, V] logits (:meth:`completion_logps`, :meth:`completion_cross_entropy`)
    logprob_chunk_size: int | None = None
    #: ``model.padding_free`` of the job, set per instance by :meth:`bind`: the forward passes of
    #: :meth:`completion_logps` and :meth:`completion_cross_entropy` run on the batch's real tokens
    #: only, packed into one row with attention kept per row (:mod:`alignx.models.packing`)
    padding_free: bool = False

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
        #: what the job knows beyond the objective's node; set by :meth:`bind` before fitting
        self.context: JobContext | None = None
        #: metrics of the last training step that Lightning's logged metrics do not carry (online
        #: RL's per-iteration table); the job adds them to its result
        self.step_metrics: dict[str, float] = {}
        #: metrics computed once training ended (e.g. a reward model's normalisation statistics);
        #: the job logs them at the last step
        self.final_metrics: dict[str, float] = {}

    # -- model and data hooks ------------------------------------------------------------
    @classmethod
    def row_kind(cls, cfg: Mapping[str, Any]) -> str:
        """The row kind this objective trains on, given its config node: :attr:`data_kind`, or the
        value of ``objective.<row_kind_key>`` when :attr:`row_kind_key` is declared."""
        if cls.row_kind_key is None:
            return cls.data_kind
        kind = str(cfg[cls.row_kind_key])
        if kind not in cls.row_kinds:
            raise ConfigError(f"objective.{cls.row_kind_key}='{kind}' is not a row kind objective={cls.name} "
                              f"trains on. Valid: {', '.join(cls.row_kinds)}")
        return kind

    @classmethod
    def test_kind(cls, cfg: Any) -> str | None:
        """The row kind evaluation reads from the held-out split (``cfg`` is the whole job config).

        A policy is evaluated on demonstrations where a builtin task has them (so perplexity is
        comparable across objectives), else on held-out rows of the kind it trains on (a
        pairs-only file has no sft rows: its chosen completions serve as references). A scorer
        reads :attr:`eval_kind`.
        """
        if not cls.generates_text:
            return cls.eval_kind
        return "sft" if str(cfg.dataset.source) == "builtin" else cls.row_kind(cfg.objective)

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
        """A hook over all encoded items of a split, after per-row encoding (default: unchanged).

        ``cfg`` is the objective's config node. It runs on every job, after the tokenised-data
        cache (its result is not cached), so it may read any objective key and draw from ``seed``.
        """
        return items

    @classmethod
    def encode(
        cls, row: Mapping[str, Any], tokenizer: Any, data_cfg: Mapping[str, Any], objective_cfg: Mapping[str, Any]
    ) -> tuple[dict | None, str]:
        """Encode one validated row of :meth:`row_kind`; returns (item, status), item None when dropped.

        ``data_cfg`` holds the encoding settings (``max_length``, ``truncation``,
        ``completion_only_loss``, ``chat_template``: :data:`alignx.data.cache.ENCODING_KEYS`) and
        ``objective_cfg`` the keys of :attr:`encode_keys`; both are plain dicts and part of the
        cache key. ``status`` is ``"kept"``, ``"truncated"`` or ``"dropped"``. The item is a dict
        of JSON values (it is stored as JSON: tuples become lists), with ``input_ids`` (a list
        whose length is the item's size) for length bucketing. The contract: docs/data.md.
        Default: an SFT item (:func:`alignx.data.tokenize.encode_sft_row`).
        """
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
        """A list of encoded items -> one batch of tensors (default: :func:`alignx.data.batching.collate_sft`).

        The default training and validation steps read ``batch["input_ids"].size(0)`` as the
        batch size, so a batch carries ``input_ids`` (docs/data.md).
        """
        return partial(collate_sft, pad_id=tokenizer.pad_token_id)

    @classmethod
    def datamodule(cls, train_items: list[dict], val_items: list[dict], tokenizer: Any, cfg: Any) -> L.LightningDataModule:
        """The data module the trainer iterates (default: length-bucketed batches of encoded items;
        with ``data.curriculum`` the train items' own easy-to-hard order, unshuffled). Items of a
        dataset mixture carry their source into the batch (:data:`~alignx.data.batching.SOURCE_INDEX`)
        for an objective with :attr:`per_row_loss`."""
        collate = cls.collate_fn(tokenizer)
        names = source_names(train_items, val_items) if cls.per_row_loss else ()
        if names:
            collate = partial(collate_with_sources, collate, {name: i for i, name in enumerate(names)})
        return AlignDataModule(
            train_items,
            val_items,
            collate,
            batch_size=int(cfg.data.batch_size),
            eval_batch_size=int(cfg.data.eval_batch_size),
            bucketing=bool(cfg.data.length_bucketing),
            seed=int(cfg.seed),
            num_workers=int(cfg.data.num_workers),
            owner=f"objective '{cls.name}'",
            curriculum=str(cfg.data.curriculum) != "none",
        )

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Fail before any work on a config this objective cannot run (``cfg`` is the whole job
        config). Default: objective keys outside :attr:`config_keys`, ``name`` and the options
        of the components :attr:`option_keys_from` selects (when :attr:`config_keys` is declared)
        are named with the closest valid one (:func:`alignx.config.objective_keys`). Subclasses
        extend it and call ``super().check_config(cfg)`` as a statement of its own: the command
        line then runs the same key check before importing the objective."""
        if cls.config_keys is None:
            return
        node = cfg.objective
        allowed = objective_keys(node, cls.config_keys, cls.option_keys_from, _registered_options)
        if allowed is None:
            unset = next(k for k in cls.option_keys_from if node.get(k) is None)
            raise ConfigError(
                f"objective.{unset} must be set: it selects the {cls.option_keys_from[unset]} whose options "
                f"objective={cls.name} reads"
            )
        check_known_keys([str(k) for k in node.keys()], allowed, "objective.")

    @classmethod
    def generation_prompt(cls, prompt: str, cfg: Any) -> str:
        """The text the policy completes for ``prompt`` (already rendered, chat template applied) at
        evaluation and sampling; ``cfg`` is the whole job config. Default: ``prompt`` unchanged.

        An objective that trains the policy to answer after a conditioning text (Chain of
        Hindsight's positive feedback phrase, a rating-conditioned attribute prompt) returns the
        prompt with that text added. The evaluation suite generates from it; rewards, reward models
        and the samples table still see ``prompt`` itself.
        """
        return prompt

    @classmethod
    def stages(cls, cfg: Any) -> list[dict] | None:
        """An objective that is several trainings (iterative methods: SPIN, ...) returns them as
        pipeline stages (``[{name, overrides}]``, see :mod:`alignx.pipeline`); the job then runs
        them in order as nested MLflow runs, with the stage cache. ``cfg`` is the whole job
        config. Default: None, one training run."""
        return None

    def bind(self, job: "JobContext") -> None:
        """What the job calls before fitting: keeps ``job`` as :attr:`context`, reads
        ``model.logprob_chunk_size`` into :attr:`logprob_chunk_size` and ``model.padding_free`` into
        :attr:`padding_free` (switching the model's attention, or a ConfigError naming the key for
        a model that cannot), compiles the policy's layers with ``trainer.compile``, then :meth:`attach`."""
        self.context = job
        # the same names, in the same order, as the index datamodule() gives the batches
        self.source_names = source_names(job.train_items, job.val_items) if self.per_row_loss else ()
        size = job.cfg.model.logprob_chunk_size
        self.logprob_chunk_size = None if size is None else int(size)
        self.padding_free = bool(job.cfg.model.padding_free)
        if self.padding_free:
            enable_padding_free(self.model)
        if job.cfg.trainer.compile:
            # after the reference copy was made (at construction): only the trained policy is compiled
            compile_model(self.model)
        self.attach(job)

    def attach(self, job: "JobContext") -> None:
        """A hook with what the job knows beyond the objective's node (full config, registry,
        encoded items, output dir), called once before fitting. Default: nothing."""

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters the optimizer updates (default: the policy's trainable ones)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    # -- log-probs of completions ----------------------------------------------------------
    def completion_logps(
        self,
        model: torch.nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        *,
        logits_mean: bool = False,
    ) -> CompletionLogps:
        """Summed completion log-probs of ``model`` for each of B sequences, their token counts and,
        with ``logits_mean``, their mean logits (see :class:`CompletionLogps`).

        ``labels`` [B, T] are the input ids with prompt and padding set to IGNORE_INDEX (unshifted).
        With :attr:`logprob_chunk_size` None this is :func:`~alignx.losses.sequence_logps` on the
        model's logits; with N it is computed from the final hidden states N labelled positions at
        a time (:mod:`alignx.ops.chunked`), equal up to float rounding, without the [B, T, V]
        logits. With :attr:`padding_free` the model runs on the real tokens only (same values up
        to float rounding). Gradients flow as far as the caller's grad mode allows.
        """
        if self.logprob_chunk_size is None:
            logits = self._logits(model, input_ids, attention_mask)
            logps, n_tokens = sequence_logps(logits, labels)
            return CompletionLogps(logps, n_tokens, completion_logits_mean(logits, labels) if logits_mean else None)
        h = head_inputs(model, input_ids, attention_mask, padding_free=self.padding_free)
        logps, n_tokens = sequence_logps_from_hidden(h.hidden, h.weight, labels, bias=h.bias, chunk_size=self.logprob_chunk_size)
        means = completion_logits_mean_from_hidden(h.hidden, h.weight, labels, bias=h.bias) if logits_mean else None
        return CompletionLogps(logps, n_tokens, means)

    def completion_cross_entropy(self, model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, n_tokens)``: the mean next-token NLL of ``model`` over the batch's labelled
        tokens (:func:`~alignx.losses.sft_loss`), from the logits or, with :attr:`logprob_chunk_size`
        set, from the final hidden states by chunks (as :meth:`completion_logps`)."""
        if self.logprob_chunk_size is None:
            return sft_loss(self._logits(model, batch["input_ids"], batch["attention_mask"]), batch["labels"])
        h = head_inputs(model, batch["input_ids"], batch["attention_mask"], padding_free=self.padding_free)
        return cross_entropy_from_hidden(h.hidden, h.weight, batch["labels"], bias=h.bias, chunk_size=self.logprob_chunk_size)

    def _logits(self, model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The [B, T, V] logits of the model's forward, padded or padding-free (zeros at padding)."""
        # use_cache=False: a training forward has no use for the key/value cache transformers builds by default
        if not self.padding_free:
            return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        batch = pack(input_ids, attention_mask)
        with packed(model, batch):
            logits = model(**batch.forward_kwargs, use_cache=False).logits
        return batch.unpack(logits)

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
        rows = metrics.pop(ROW_LOSS, None)
        loss = self._global_mean(loss, self.loss_weight(batch, metrics))
        size = batch["input_ids"].size(0)
        # synced: under DDP rank 0 logs the whole global batch's values, not its own shard's
        sync = self._trainer is not None and self.trainer.world_size > 1
        self.log("train/loss", loss, prog_bar=True, batch_size=size, sync_dist=sync)
        if rows is not None and SOURCE_INDEX in batch:
            for name, value in self.source_losses(rows, batch[SOURCE_INDEX]).items():
                self.log(f"train/loss/{name}", value, batch_size=size)
        if self._trainer is not None and self.trainer.optimizers:
            self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=size)
        self.log_dict({f"train/{k}": v for k, v in metrics.items()}, batch_size=size, sync_dist=sync)
        return loss

    # -- exact resume --------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Adds the RNG states, so a resumed run draws what the uninterrupted one would have.
        Subclasses that override this call ``super()``."""
        checkpoint["alignx_rng"] = rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._rng_to_restore = checkpoint.get("alignx_rng")

    def on_train_start(self) -> None:
        # restored here, not at load: nothing between the checkpoint's save point and the next
        # training batch may consume random numbers, and Lightning does work in between
        state = getattr(self, "_rng_to_restore", None)
        if state is not None:
            set_rng_state(state)
            self._rng_to_restore = None

    def source_losses(self, rows: RowLoss, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{source: loss of the batch's items from that source}`` (``index``: each item's
        :data:`~alignx.data.batching.SOURCE_INDEX`), for the sources with items in the global batch.

        Each value is what :meth:`step` would return as the loss on those items alone:
        ``sum(total) / sum(weight)`` over them. Under DDP the sums are reduced over the ranks first,
        so every rank returns the same sources and values for the whole global batch.
        """
        n = len(self.source_names)
        sums = torch.zeros(2, n, dtype=torch.float32, device=rows.total.device)
        index = index.to(rows.total.device)
        sums[0].index_add_(0, index, rows.total.detach().float())
        sums[1].index_add_(0, index, rows.weight.detach().float())
        if self._trainer is not None and self.trainer.world_size > 1:
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        present = (sums[1] > 0).tolist()
        return {name: sums[0, i] / sums[1, i] for i, name in enumerate(self.source_names) if present[i]}

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        loss, metrics = self.step(batch)
        metrics.pop(ROW_LOSS, None)  # per-source evaluation is the suite's (eval/<source>/...)
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
    #: where shared caches live (``<outputs_root>/cache``); None: no caching
    outputs_root: Any = None
    #: extra encoded rows an objective asked for (see :meth:`Objective.auxiliary_kinds`)
    auxiliary: dict[str, list[dict]] = field(default_factory=dict)


def _registered_options(kind: str, name: str) -> tuple[str, ...]:
    """The config options of registered component ``name`` of ``kind`` (see :attr:`Objective.option_keys_from`)."""
    return tuple(load_plugins().get(kind, name).options)


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
        self.beta = float(cfg["beta"])
        self.precompute_ref = bool(cfg["precompute_ref_logps"]) and self.needs_reference()
        self._precompute: PrecomputeReferenceLogps | None = None
        # Held outside the module tree on purpose: Lightning switches every submodule to train
        # mode at fit start (dropout on in the reference) and would checkpoint its weights.
        self._ref: list[torch.nn.Module] = []
        if self.needs_reference() and not self.precompute_ref and not is_peft(model):
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

    def configure_callbacks(self) -> list[Any]:
        """With ``precompute_ref_logps``, the callback that computes (or loads from the shared
        cache) every item's reference log-probs at fit start."""
        if not self.precompute_ref:
            return []
        cfg = self.context.cfg if self.context is not None else None
        cache = cfg is not None and bool(cfg.data.cache) and self.context.outputs_root is not None
        self._precompute = PrecomputeReferenceLogps(
            self.context.outputs_root / "cache" / "ref_logps" if cache else None,
            int(cfg.data.eval_batch_size) if cfg is not None else 64,
            progress=bool(cfg.trainer.enable_progress_bar) if cfg is not None else False,
        )
        return [self._precompute]

    def on_fit_end(self) -> None:
        if self._precompute is not None:
            self.final_metrics.update(
                {f"data/{split}/ref_logps_cache_hit": float(hit) for split, hit in self._precompute.hits.items()}
            )

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
        elif is_peft(self.model):
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
                return self.completion_logps(ref, batch["input_ids"], batch["attention_mask"], batch["labels"]).logps
            finally:
                ref.train(was_training)
