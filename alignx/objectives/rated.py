"""Fine-tuning with rating feedback: rows that carry a scalar rating instead of a comparison.

Two objectives share one base (:class:`RatedObjective`): every rated row is a completion-masked
sequence, scored by the policy's summed completion log-prob, and the loss is a token-level NLL
with one weight per row (:func:`~alignx.losses.rating.weighted_nll`). They differ in where the
rating goes:

* :class:`RWR` (reward-weighted regression) puts it in the weight:
  ``w = B · softmax(rating / beta)`` over the batch (:func:`~alignx.losses.rating.rwr_weights`);
* :class:`SteerLM` (rating-conditioned SFT, Dong et al. 2023) puts it in the prompt: the rendered
  prompt gets an attribute string built from the bucketed rating (``" [quality: 3]"``), every
  weight is 1 (plain SFT), and at generation the prompt asks for the top level
  (:meth:`SteerLM.generation_prompt`).

Formulas: ``docs/losses.md`` ("Rating feedback").
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable, ClassVar, Mapping, Sequence

import torch

from alignx.data.batching import collate_sft
from alignx.data.tokenize import encode_prompt, fit_to_length, prompt_is_templated, prompt_text
from alignx.errors import ConfigError
from alignx.losses.rating import rwr_weights, weighted_nll
from alignx.objectives.base import Objective
from alignx.objectives.dpo import required
from alignx.ops.logprobs import IGNORE_INDEX


def encode_rated(
    row: Mapping[str, Any], tokenizer: Any, data_cfg: Mapping[str, Any], attribute: str = ""
) -> tuple[dict | None, str]:
    """Tokenise a rated row: ``input_ids`` (prompt + ``attribute`` + completion + EOS), ``labels``
    (prompt and attribute set to IGNORE_INDEX) and ``rating``.

    The prompt is the row's rendered prompt (:func:`~alignx.data.tokenize.prompt_text`, so a
    message-list prompt or ``data.chat_template`` goes through the chat template) with
    ``attribute`` appended to the text, exactly as generation appends it. The prompt is always
    masked (``data.completion_only_loss`` does not apply: the rating is about the completion).
    """
    chat = bool(data_cfg["chat_template"])
    p_ids = encode_prompt(prompt_text(row, tokenizer, chat) + attribute, tokenizer, prompt_is_templated(row, chat))
    c_ids = list(tokenizer(row["completion"], add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    keep = 1 if p_ids and p_ids[0] == tokenizer.bos_token_id else 0
    fitted = fit_to_length(p_ids, c_ids, int(data_cfg["max_length"]), str(data_cfg["truncation"]), keep)
    if fitted is None:
        return None, "dropped"
    p_ids, c_ids, status = fitted
    return {"input_ids": p_ids + c_ids, "labels": [IGNORE_INDEX] * len(p_ids) + c_ids, "rating": float(row["rating"])}, status


def collate_rated(items: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Rated items -> :func:`~alignx.data.batching.collate_sft`'s batch plus ``ratings`` [B] (float)."""
    batch = collate_sft(items, pad_id)
    batch["ratings"] = torch.tensor([float(it["rating"]) for it in items], dtype=torch.float32)
    return batch


def rating_level(rating: float, levels: int, low: float, high: float) -> int:
    """The bucket of ``rating`` among ``levels`` equal-width buckets of [low, high]: 0 .. levels-1.

    ``floor((rating - low) / (high - low) · (levels - 1) + 1/2)`` (nearest level, halves up) clamped
    to the range: ``low`` maps to 0, ``high`` to ``levels - 1``, and noisy ratings outside
    [low, high] to the end buckets.
    """
    level = math.floor((rating - low) / (high - low) * (levels - 1) + 0.5)
    return min(levels - 1, max(0, level))


class RatedObjective(Objective):
    """The shared base of objectives on rated rows: one forward, a per-row weighted token NLL.

    Subclasses choose :meth:`row_weights` (default: all 1, i.e. SFT) and may condition the prompt
    through :meth:`attribute` (default: none). Logged: ``nll`` (the unweighted per-token NLL),
    ``ppl``, ``tokens``, ``ratings/mean`` and ``ratings/weighted`` (the weight-averaged rating: what
    the loss pulls the policy towards).
    """

    data_kind: ClassVar[str] = "rated"

    @classmethod
    def attribute(cls, rating: float, objective_cfg: Mapping[str, Any]) -> str:
        """The text appended to a row's rendered prompt for this rating (default: none)."""
        return ""

    @classmethod
    def encode(
        cls, row: Mapping[str, Any], tokenizer: Any, data_cfg: Mapping[str, Any], objective_cfg: Mapping[str, Any]
    ) -> tuple[dict | None, str]:
        return encode_rated(row, tokenizer, data_cfg, cls.attribute(float(row["rating"]), objective_cfg))

    @classmethod
    def collate_fn(cls, tokenizer: Any) -> Callable[[Sequence[dict]], dict]:
        return partial(collate_rated, pad_id=tokenizer.pad_token_id)

    def row_weights(self, ratings: torch.Tensor) -> torch.Tensor:
        """The loss weight of each row of the batch [B] from its rating [B] (default: 1)."""
        return torch.ones_like(ratings)

    def step(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self.completion_logps(self.model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        ratings = batch["ratings"]
        weights = self.row_weights(ratings)
        loss = weighted_nll(out.logps, out.n_tokens, weights)
        tokens = out.n_tokens.sum().float()
        nll = (-out.logps.detach().sum() / tokens.clamp(min=1)).float()
        metrics = {
            "tokens": tokens,
            "nll": nll,
            "ppl": torch.exp(nll),
            "ratings/mean": ratings.mean(),
            "ratings/weighted": (weights * ratings).sum() / weights.sum(),
            **self.weight_metrics(weights),
        }
        return loss, metrics

    def weight_metrics(self, weights: torch.Tensor) -> dict[str, torch.Tensor]:
        """Extra metrics about the batch's row weights [B] (default: none)."""
        return {}

    def loss_weight(self, batch: Mapping[str, torch.Tensor], metrics: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The loss is a mean over the batch's completion tokens (as SFT's)."""
        return metrics["tokens"]


class RWR(RatedObjective):
    """Reward-weighted regression: SFT on rated rows, each weighted by ``exp(rating / beta)``
    normalised over the batch (:func:`~alignx.losses.rating.rwr_weights`). Also logs
    ``weights/max`` and ``weights/ess`` (the effective sample size as a fraction of the batch:
    1 = uniform weights, 1/B = one row carries all)."""

    name: ClassVar[str] = "rwr"
    config_keys: ClassVar[frozenset[str]] = frozenset({"beta"})

    def __init__(self, model: torch.nn.Module, tokenizer: Any, cfg: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(model, tokenizer, cfg, **kwargs)
        self.beta = float(required(cfg, ["beta"], "RWR's temperature")["beta"])

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Before any work: only RWR's keys, and ``objective.beta`` > 0."""
        super().check_config(cfg)
        beta = required(cfg.objective, ["beta"], "RWR's temperature")["beta"]
        if float(beta) <= 0:
            raise ConfigError(f"objective.beta must be > 0 for objective=rwr (the weights are exp(rating / beta)), got {beta}")

    def row_weights(self, ratings: torch.Tensor) -> torch.Tensor:
        return rwr_weights(ratings, self.beta)

    def weight_metrics(self, weights: torch.Tensor) -> dict[str, torch.Tensor]:
        w = weights
        return {"weights/max": w.max(), "weights/ess": w.sum() ** 2 / (w.numel() * (w**2).sum())}


#: the keys SteerLM's encode reads (defaults in conf/objective/steerlm.yaml)
STEERLM_KEYS = frozenset({"levels", "rating_min", "rating_max", "attribute"})


class SteerLM(RatedObjective):
    """Rating-conditioned SFT (SteerLM, Dong et al. 2023): each row's rendered prompt gets
    ``objective.attribute`` formatted with its rating's level (:func:`rating_level` over
    ``objective.levels`` buckets of [``rating_min``, ``rating_max``]); the loss is SFT on the
    completion (the attribute is masked like the prompt). At evaluation and sampling the policy
    is prompted with the top level (:meth:`generation_prompt`)."""

    name: ClassVar[str] = "steerlm"
    config_keys: ClassVar[frozenset[str]] = STEERLM_KEYS
    encode_keys: ClassVar[frozenset[str]] = STEERLM_KEYS

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Before any work: only SteerLM's keys, ``levels`` an integer >= 2, ``rating_max > rating_min``
        and ``attribute`` a string holding ``{level}``."""
        super().check_config(cfg)
        node = required(cfg.objective, sorted(STEERLM_KEYS), "read by objective=steerlm")
        levels = node["levels"]
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
            raise ConfigError(f"objective.levels must be an integer >= 2 (the number of rating buckets), got {levels!r}")
        if not float(node["rating_max"]) > float(node["rating_min"]):
            raise ConfigError(f"objective.rating_max must be > objective.rating_min, got {node['rating_max']} <= {node['rating_min']}")
        attribute = node["attribute"]
        if not isinstance(attribute, str) or "{level}" not in attribute:
            raise ConfigError(f"objective.attribute must be a string holding '{{level}}' (e.g. ' [quality: {{level}}]'), got {attribute!r}")

    @classmethod
    def level(cls, rating: float, objective_cfg: Mapping[str, Any]) -> int:
        """The level (bucket) of ``rating`` under the objective's ``levels``, ``rating_min``, ``rating_max``."""
        return rating_level(rating, int(objective_cfg["levels"]), float(objective_cfg["rating_min"]), float(objective_cfg["rating_max"]))

    @classmethod
    def attribute(cls, rating: float, objective_cfg: Mapping[str, Any]) -> str:
        return str(objective_cfg["attribute"]).format(level=cls.level(rating, objective_cfg))

    @classmethod
    def generation_prompt(cls, prompt: str, cfg: Any) -> str:
        """``prompt`` with the attribute of the top level (``objective.levels - 1``): ask for the best."""
        node = cfg.objective
        return prompt + str(node["attribute"]).format(level=int(node["levels"]) - 1)
