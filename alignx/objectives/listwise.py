"""Listwise ranking objectives on K ranked responses per prompt: PRO and RRHF.

Both score each response by the policy's own completion log-probability, length-normalised by
default (``objective.length_normalize``; no reference model, no reward model at training time),
add a ranking loss over the K responses of a prompt (:mod:`alignx.losses.listwise`) and an SFT
term on the best response. They differ only in the ranking loss, so one base
(:class:`ListwiseObjective`) holds the data path and the step and each subclass names its loss.
Formulas: ``docs/losses.md`` ("Listwise ranking: PRO and RRHF").
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, ClassVar, Mapping, Sequence

import torch

from alignx.data.batching import collate_ranked_lm
from alignx.data.tokenize import encode_ranked_lm
from alignx.errors import ConfigError
from alignx.losses.listwise import best_response, pro_loss, ranking_accuracy, rrhf_loss
from alignx.objectives.base import Objective

#: the keys every listwise objective reads (defaults in conf/objective/<name>.yaml)
LISTWISE_KEYS = frozenset({"sft_weight", "length_normalize"})


class ListwiseObjective(Objective):
    """The shared base of PRO and RRHF: K completion-masked responses per ranked row, one forward.

    A batch holds B prompts' K responses as B*K rows (:func:`~alignx.data.batching.collate_ranked_lm`).
    Each response is scored by its completion log-prob, divided by its token count with
    ``objective.length_normalize``; the loss is ``mean_b rank_loss_b + sft_weight · mean_b NLL_b``
    with ``NLL_b`` the per-token NLL of prompt b's best response. Subclasses implement
    :meth:`rank_loss` (scores, ranks, valid -> per-prompt loss [B]).
    """

    data_kind: ClassVar[str] = "ranked"
    config_keys: ClassVar[frozenset[str]] = LISTWISE_KEYS

    def __init__(self, model: torch.nn.Module, tokenizer: Any, cfg: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(model, tokenizer, cfg, **kwargs)
        self.sft_weight = float(cfg["sft_weight"])
        self.length_normalize = bool(cfg["length_normalize"])

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Fail before any work on unknown keys or a negative ``objective.sft_weight``."""
        super().check_config(cfg)  # only this objective's keys (answered before any import by the CLI)
        if float(cfg.objective.sft_weight) < 0:
            raise ConfigError(f"objective.sft_weight must be >= 0 (objective={cls.name}), got {cfg.objective.sft_weight}")

    @classmethod
    def encode(
        cls, row: Mapping[str, Any], tokenizer: Any, data_cfg: Mapping[str, Any], objective_cfg: Mapping[str, Any]
    ) -> tuple[dict | None, str]:
        return encode_ranked_lm(row, tokenizer, data_cfg)

    @classmethod
    def collate_fn(cls, tokenizer: Any) -> Callable[[Sequence[dict]], dict]:
        return partial(collate_ranked_lm, pad_id=tokenizer.pad_token_id)

    def rank_loss(self, scores: torch.Tensor, ranks: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The ranking loss per prompt [B] from scores, ranks and valid [B, K]."""
        raise NotImplementedError(f"{type(self).__name__} must implement rank_loss()")

    def loss_weight(self, batch: Mapping[str, torch.Tensor], metrics: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The loss is a mean over prompts (the batch's B items, not its B*K rows)."""
        return torch.tensor(float(batch["ranks"].size(0)), device=self.device)

    def step(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ranks, valid = batch["ranks"], batch["valid"]
        b, k = ranks.shape
        out = self.completion_logps(self.model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        logps = out.logps.view(b, k)
        avg = logps / out.n_tokens.view(b, k).clamp(min=1)
        scores = avg if self.length_normalize else logps
        rank = self.rank_loss(scores, ranks, valid).mean()
        best = best_response(ranks, valid).unsqueeze(1)
        sft = -avg.gather(1, best).squeeze(1).mean()  # per-token NLL of each prompt's best response
        metrics = {
            "rank_loss": rank.detach(),
            "sft_loss": sft.detach(),
            "ranking_accuracy": ranking_accuracy(scores, ranks, valid),
            "logps/best": logps.gather(1, best).detach().mean(),
        }
        return rank + self.sft_weight * sft, metrics


class PRO(ListwiseObjective):
    """Preference Ranking Optimization (Song et al. 2023): Plackett–Luce over the K ranked responses
    (:func:`~alignx.losses.listwise.pro_loss`, scores divided by ``objective.temperature``) plus SFT."""

    name: ClassVar[str] = "pro"
    config_keys: ClassVar[frozenset[str]] = LISTWISE_KEYS | {"temperature"}

    def __init__(self, model: torch.nn.Module, tokenizer: Any, cfg: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(model, tokenizer, cfg, **kwargs)
        self.temperature = float(cfg["temperature"])

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Also: ``objective.temperature`` > 0."""
        super().check_config(cfg)  # the listwise keys and values
        if float(cfg.objective.temperature) <= 0:
            raise ConfigError(f"objective.temperature must be > 0 (objective=pro), got {cfg.objective.temperature}")

    def rank_loss(self, scores: torch.Tensor, ranks: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return pro_loss(scores, ranks, valid, temperature=self.temperature)


class RRHF(ListwiseObjective):
    """Rank Responses to align Human Feedback (Yuan et al. 2023): hinge on every misordered pair of
    scores (:func:`~alignx.losses.listwise.rrhf_loss`) plus SFT on the best response."""

    name: ClassVar[str] = "rrhf"
    config_keys: ClassVar[frozenset[str]] = LISTWISE_KEYS

    def rank_loss(self, scores: torch.Tensor, ranks: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return rrhf_loss(scores, ranks, valid)
