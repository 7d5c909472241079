"""Reward modelling: a scalar head on a causal-LM backbone, trained on ranked responses."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any, Callable, ClassVar, Mapping, Sequence

import torch

from alignx.data.batching import collate_ranked
from alignx.data.tokenize import encode_ranked
from alignx.errors import ConfigError
from alignx.losses.reward import grouped_ranking_loss
from alignx.models.adapters import is_peft
from alignx.models.heads import add_reward_head, token_values
from alignx.models.packing import pack, packed
from alignx.objectives.base import Objective

log = logging.getLogger("alignx")

class RewardModel(Objective):
    """Bradley–Terry reward model: pairs (optional per-pair ``margin`` column) or K-wise rankings.

    ``objective.data_kind``: ``pairs`` or ``ranked`` (InstructGPT: all C(K, 2) comparisons of a
    prompt form one batch element, one forward per response). ``objective.center_coef`` adds
    ``c·mean((r_w + r_l)²)``. ``objective.normalize`` shifts rewards after training so the
    training completions score mean 0 (and std 1 with ``normalize_std``).
    ``objective.aux_confidence`` (alpha, 0 = off) mixes each label with the model's own hardened
    preference, for training on a weak supervisor's labels (Burns et al. 2023, see
    :func:`~alignx.losses.reward.auxiliary_confidence_loss`); alpha ramps up linearly from 0 over
    the first ``aux_confidence_warmup`` fraction of the training steps.
    """

    name: ClassVar[str] = "rm"
    data_kind: ClassVar[str] = "pairs"
    #: ``objective.data_kind`` chooses between comparisons of two completions and K-wise rankings
    row_kind_key: ClassVar[str | None] = "data_kind"
    row_kinds: ClassVar[tuple[str, ...]] = ("pairs", "ranked")
    generates_text: ClassVar[bool] = False
    merge_adapter_on_save: ClassVar[bool] = True
    #: held-out rows its evaluation reads: eval/rm_accuracy on test-split pairs
    eval_kind: ClassVar[str] = "pairs"
    #: read strictly; conf/objective/rm.yaml holds each one's default
    config_keys: ClassVar[frozenset[str]] = frozenset(
        {"data_kind", "center_coef", "normalize", "normalize_std", "normalize_samples", "aux_confidence",
         "aux_confidence_warmup"}
    )

    def __init__(self, model: torch.nn.Module, tokenizer: Any, cfg: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(model, tokenizer, cfg, **kwargs)
        self.center_coef = float(cfg["center_coef"])
        self.aux_confidence = float(cfg["aux_confidence"])
        self.aux_confidence_warmup = float(cfg["aux_confidence_warmup"])
        if not 0.0 <= self.aux_confidence <= 1.0:
            raise ConfigError(f"objective.aux_confidence must be in [0, 1] (the weight of the model's own "
                              f"hardened prediction), got {self.aux_confidence}")
        if not 0.0 <= self.aux_confidence_warmup <= 1.0:
            raise ConfigError(f"objective.aux_confidence_warmup must be a fraction of the training steps in [0, 1], "
                              f"got {self.aux_confidence_warmup}")
        #: reported once training ends (the normalisation applied)
        self.final_metrics: dict[str, float] = {}

    @classmethod
    def prepare_model(cls, model: torch.nn.Module, tokenizer: Any, cfg: Mapping[str, Any]) -> torch.nn.Module:
        return add_reward_head(model, tokenizer)

    @classmethod
    def encode(
        cls, row: Mapping[str, Any], tokenizer: Any, data_cfg: Mapping[str, Any], objective_cfg: Mapping[str, Any]
    ) -> tuple[dict | None, str]:
        return encode_ranked(row, tokenizer, data_cfg)

    @classmethod
    def collate_fn(cls, tokenizer: Any) -> Callable[[Sequence[dict]], dict]:
        return partial(collate_ranked, pad_id=tokenizer.pad_token_id)

    def rewards(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Scalar reward of every response in the batch, [N]: the head at each response's last token.

        With :attr:`padding_free` the backbone runs on the real tokens only, packed into one row
        (attention per response), and the head's output is read at each response's last token.
        """
        if not self.padding_free:
            return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits.squeeze(-1).float()
        rows = pack(batch["input_ids"], batch["attention_mask"])
        with packed(self.model, rows):
            values = token_values(self.model, **rows.forward_kwargs)
        return values[0, rows.last_index].float()

    def aux_alpha(self) -> float:
        """The auxiliary confidence weight at the current step: ``aux_confidence`` after the warmup."""
        if self.aux_confidence == 0.0 or self.aux_confidence_warmup == 0.0 or self._trainer is None:
            return self.aux_confidence
        ramp = self.global_step / (self.aux_confidence_warmup * self.total_steps)
        return self.aux_confidence * min(1.0, ramp)

    def step(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # validation scores the labels as given: the auxiliary term shapes training only
        alpha = self.aux_alpha() if self.training else 0.0
        loss, metrics = grouped_ranking_loss(
            self.rewards(batch), batch["better"], batch["worse"], batch["group"],
            margin=batch.get("margin"), center_coef=self.center_coef, aux_confidence=alpha,
        )
        if self.aux_confidence:
            metrics["aux_confidence"] = torch.tensor(alpha)
        return loss, metrics

    @torch.no_grad()
    def on_train_end(self) -> None:
        if not self.cfg["normalize"]:
            return
        datamodule = self.trainer.datamodule
        items = list(datamodule.train_items)[: int(self.cfg["normalize_samples"])]
        values = reward_statistics(self, items, int(datamodule.eval_batch_size))
        mean, std = values.mean().item(), values.std().item() if values.numel() > 1 else 1.0
        scale = 1.0 / max(std, 1e-6) if self.cfg["normalize_std"] else 1.0
        set_normalization(self.model, offset=-mean * scale, scale=scale)
        log.info("reward normalised on %d training completions: mean %.4f std %.4f -> offset %.4f, scale %.4f",
                 values.numel(), mean, std, -mean * scale, scale)
        self.final_metrics = {"rm/norm_mean_before": mean, "rm/norm_std_before": std,
                              "rm/norm_offset": -mean * scale, "rm/norm_scale": scale}


@torch.no_grad()
def reward_statistics(objective: RewardModel, items: Sequence[dict], batch_size: int) -> torch.Tensor:
    """Rewards (before any offset) of every response of ``items``, [N]."""
    was_training = objective.model.training
    objective.model.eval()
    out = []
    try:
        collate = objective.collate_fn(objective.tokenizer)
        for start in range(0, len(items), batch_size):
            batch = collate(items[start : start + batch_size])
            batch = {k: v.to(objective.device) for k, v in batch.items()}
            out.append(objective.rewards(batch).cpu())
    finally:
        objective.model.train(was_training)
    return torch.cat(out)


def set_normalization(model: torch.nn.Module, *, offset: float, scale: float) -> None:
    """Normalise the reward model: ``r' = scale · r + offset``.

    The scale is folded into the head's weights. Transformers' sequence-classification heads
    have no bias, so the offset is stored in the config as ``alignx_reward_offset`` (saved with
    the model) and added by :class:`alignx.rewards.model.RewardModelScorer`; with plain
    transformers, add ``model.config.alignx_reward_offset`` to the logits yourself.
    """
    base = model.get_base_model() if is_peft(model) else model
    head = _head(base)
    with torch.no_grad():
        for p in head.parameters():
            p.mul_(scale)
    base.config.alignx_reward_offset = float(offset)


def _head(model: torch.nn.Module) -> torch.nn.Module:
    for name in ("score", "classifier"):
        module = getattr(model, name, None)
        if module is not None:
            # under peft this is a ModulesToSaveWrapper: scaling all its copies scales the trained one
            return module
    raise ValueError(f"{type(model).__name__} has no 'score' or 'classifier' head")
