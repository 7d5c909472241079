"""Chain of Hindsight (Liu et al. 2023): supervised fine-tuning on preference pairs written with feedback.

Each pairs row becomes one sequence that shows both responses, each after a natural-language
feedback phrase (``objective.positive_phrase`` before the chosen one, ``objective.negative_phrase``
before the rejected one), in an order drawn per row from the job's seed
(:mod:`alignx.data.hindsight`). The loss is SFT's: the next-token cross entropy on the responses'
tokens only (:meth:`~alignx.objectives.Objective.completion_cross_entropy`, so chunked log-probs and
padding-free batches apply unchanged). At evaluation the policy completes the prompt followed by the
positive phrase (:meth:`CoH.generation_prompt`). Recipe: ``docs/losses.md`` ("Chain of Hindsight").
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

from alignx.data.hindsight import encode_hindsight, pick_orders
from alignx.errors import ConfigError
from alignx.objectives.sft import SFT

#: the keys CoH reads (defaults in conf/objective/coh.yaml)
PHRASE_KEYS = ("positive_phrase", "negative_phrase")


class CoH(SFT):
    """Chain of Hindsight: SFT's loss on hindsight sequences built from pairs rows."""

    name: ClassVar[str] = "coh"
    data_kind: ClassVar[str] = "pairs"
    config_keys: ClassVar[frozenset[str]] = frozenset(PHRASE_KEYS)
    encode_keys: ClassVar[frozenset[str]] = frozenset(PHRASE_KEYS)

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Before any work: only CoH's keys (a typo is named with the closest one), each phrase a
        non-empty string, the two phrases different, and ``data.completion_only_loss`` true (the
        loss is on the responses only, by the method's definition)."""
        super().check_config(cfg)  # only CoH's keys (answered before any import by the CLI)
        node = cfg.objective
        for key in PHRASE_KEYS:
            value = node.get(key)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"objective.{key} must be a non-empty string (objective=coh), got {value!r}")
        if node.positive_phrase == node.negative_phrase:
            raise ConfigError(
                f"objective.positive_phrase and objective.negative_phrase must differ (objective=coh), both are "
                f"{node.positive_phrase!r}"
            )
        if not cfg.data.completion_only_loss:
            raise ConfigError(
                "data.completion_only_loss=false: objective=coh trains on the responses only (the prompt and the "
                "feedback phrases are never labels); leave data.completion_only_loss=true"
            )

    @classmethod
    def encode(
        cls, row: Mapping[str, Any], tokenizer: Any, data_cfg: Mapping[str, Any], objective_cfg: Mapping[str, Any]
    ) -> tuple[dict | None, str]:
        """Both hindsight orders of a pairs row (:func:`~alignx.data.hindsight.encode_hindsight`)."""
        return encode_hindsight(
            row, tokenizer, data_cfg, str(objective_cfg["positive_phrase"]), str(objective_cfg["negative_phrase"])
        )

    @classmethod
    def prepare_items(cls, items: list[dict], cfg: Mapping[str, Any], seed: int) -> list[dict]:
        """One order per row, good or bad answer first with probability 1/2, drawn from ``seed``."""
        return pick_orders(items, seed)

    @classmethod
    def generation_prompt(cls, prompt: str, cfg: Any) -> str:
        """The prompt followed by ``objective.positive_phrase``: the policy answers as it learnt to
        after positive feedback."""
        return prompt + str(cfg.objective.positive_phrase)
