"""Direct preference optimisation and its relatives (cDPO, robust, hinge, IPO, SimPO, ORPO, plugins').

The loss is a registered component (registry kind ``preference_loss``, see
:mod:`alignx.losses.dpo_family`): ``objective.loss`` names it, and its spec says whether a
reference is needed, whether log-probs are per-token averaged, whether the chosen NLL is used and
which ``objective.*`` keys it reads. Formulas: ``docs/losses.md``.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, ClassVar, Mapping, Sequence

import torch

from alignx.data.batching import SOURCE_INDEX, collate_pairs
from alignx.data.tokenize import encode_pair
from alignx.errors import ConfigError, PluginError
from alignx.losses.dpo_family import PreferenceInputs, PreferenceLoss
from alignx.losses.preference import preference_metrics
from alignx.objectives.base import ROW_LOSS, ReferenceObjective, RowLoss
from alignx.registry import load_plugins


def preference_loss(name: str) -> PreferenceLoss:
    """The registered preference loss ``name``; ConfigError listing the valid names on a miss."""
    registry = load_plugins()
    try:
        spec = registry.get("preference_loss", name)
    except PluginError as exc:
        raise ConfigError(f"objective.loss: {exc}") from None
    if not isinstance(spec, PreferenceLoss):
        raise PluginError(
            f"preference_loss '{name}' is a {type(spec).__name__}, not an alignx.losses.PreferenceLoss; "
            "register PreferenceLoss(name, fn, ...) instead"
        )
    return spec


def required(node: Mapping[str, Any], keys: Sequence[str], why: str) -> dict[str, Any]:
    """``{key: node[key]}`` for every key, read strictly: a missing or null key is a ConfigError
    naming it (its default lives in the objective's YAML, never in code)."""
    missing = [k for k in keys if node.get(k) is None]
    if missing:
        listed = ", ".join(f"objective.{k}" for k in missing)
        how = " ".join(f"+objective.{k}=<value>" for k in missing)
        raise ConfigError(f"{listed} must be set ({why}): add it to the objective's YAML or pass {how}")
    return {k: node[k] for k in keys}


def loss_options(spec: PreferenceLoss, node: Mapping[str, Any]) -> dict[str, Any]:
    """The config values ``spec`` reads (its :attr:`~PreferenceLoss.options`), strictly."""
    return required(node, spec.options, f"read by objective.loss={spec.name}")


class DPO(ReferenceObjective):
    """Preference optimisation on chosen/rejected pairs; ``objective.loss`` picks the loss.

    The reference policy is the same model with adapters disabled when an adapter is used (no
    second copy in memory), else a frozen copy made at the start, or nothing when its
    log-probs are precomputed (``objective.precompute_ref_logps``); a loss whose spec says
    ``needs_reference=False`` (simpo, orpo) loads none.
    """

    name: ClassVar[str] = "dpo"
    data_kind: ClassVar[str] = "pairs"
    config_keys: ClassVar[frozenset[str]] = frozenset(
        {"loss", "beta", "label_smoothing", "simpo_gamma", "orpo_lambda", "precompute_ref_logps"}
    )
    #: the node also holds the options of the selected preference loss (its keyword parameters)
    option_keys_from: ClassVar[Mapping[str, str]] = {"loss": "preference_loss"}
    #: a mixture's pairs log train/loss/<source> (each pair weighs 1, as in the batch mean)
    per_row_loss: ClassVar[bool] = True

    def __init__(self, model: torch.nn.Module, tokenizer: Any, cfg: Mapping[str, Any], **kwargs: Any) -> None:
        self.loss_type = str(required(cfg, ["loss"], "the preference loss")["loss"])
        #: the registered loss (its spec says what the step computes)
        self.preference_loss = preference_loss(self.loss_type)
        #: the ``objective.*`` values the loss reads, passed to it by keyword
        self.loss_options = loss_options(self.preference_loss, cfg)
        super().__init__(model, tokenizer, cfg, **kwargs)

    def needs_reference(self) -> bool:
        return self.preference_loss.needs_reference

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Before any work: ``objective.loss`` is a registered preference loss (else the valid
        names are listed), the node holds only DPO's keys and the loss's options, every option is
        set, and the loss accepts their values (a one-pair dry run of it)."""
        node = cfg.objective
        spec = preference_loss(str(required(node, ["loss"], "the preference loss")["loss"]))
        super().check_config(cfg)  # only DPO's keys and the loss's options (option_keys_from)
        options = loss_options(spec, node)
        try:
            spec(spec.example_inputs(), options)
        except ValueError as exc:
            values = ", ".join(f"objective.{k}={v}" for k, v in options.items())
            raise ConfigError(f"objective.loss={spec.name} cannot run with {values}: {exc}") from None
        except TypeError as exc:  # the loss broke its contract (a plugin bug), not the user's config
            raise PluginError(f"{exc}") from None

    @classmethod
    def encode(
        cls, row: Mapping[str, Any], tokenizer: Any, data_cfg: Mapping[str, Any], objective_cfg: Mapping[str, Any]
    ) -> tuple[dict | None, str]:
        item, status = encode_pair(row, tokenizer, data_cfg)
        if item is not None:
            item["input_ids"] = item["chosen_input_ids"]  # the length batches are bucketed by
        return item, status

    @classmethod
    def collate_fn(cls, tokenizer: Any) -> Callable[[Sequence[dict]], dict]:
        return partial(collate_pairs, pad_id=tokenizer.pad_token_id)

    def step(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        n = batch["input_ids"].size(0) // 2
        spec = self.preference_loss
        policy = self.completion_logps(
            self.model, batch["input_ids"], batch["attention_mask"], batch["labels"], logits_mean=True
        )
        logps = policy.logps
        count = policy.n_tokens.clamp(min=1)
        avg = logps / count
        pol = avg if spec.length_normalised else logps
        ref = None
        if spec.needs_reference:
            ref = self.reference_logps(batch).to(logps.dtype)
            ref = ref / count if spec.length_normalised else ref
        nll = -avg[:n] if spec.needs_nll else None
        inputs = PreferenceInputs(
            chosen=pol[:n], rejected=pol[n:],
            ref_chosen=None if ref is None else ref[:n], ref_rejected=None if ref is None else ref[n:],
            chosen_nll=nll,
        )
        losses, chosen_r, rejected_r = spec(inputs, self.loss_options)
        metrics: dict[str, Any] = {}
        if SOURCE_INDEX in batch:
            metrics[ROW_LOSS] = RowLoss(losses.detach(), torch.ones_like(losses))
        if nll is not None:
            metrics["nll"] = nll.mean().detach()
        means = policy.logits_mean
        metrics.update(preference_metrics(chosen_r, rejected_r, logps[:n], logps[n:], means[:n], means[n:]))
        return losses.mean(), metrics
