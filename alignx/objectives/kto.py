"""KTO: alignment from unpaired desirable/undesirable completions (Ethayarajh et al. 2024)."""

from __future__ import annotations

import logging
import random
from functools import partial
from typing import Any, Callable, ClassVar, Mapping, Sequence

import torch

from alignx.data.batching import collate_sft
from alignx.data.tokenize import encode_prompt_completions
from alignx.errors import ConfigError
from alignx.losses.preference import kto_loss, kto_reference_point
from alignx.objectives.base import ReferenceObjective
from alignx.objectives.dpo import required
from alignx.ops.logprobs import IGNORE_INDEX

log = logging.getLogger("alignx")

#: keep λ_D·n_D / (λ_U·n_U) in this range (docs/losses.md, "KTO")
WEIGHT_RATIO_RANGE = (1.0, 4.0 / 3.0)


def encode_unpaired(row: Mapping[str, Any], tokenizer: Any, data_cfg: Mapping[str, Any]) -> tuple[dict | None, str]:
    """Tokenise a prompt/completion/label row; prompt and completion ids are kept apart so the
    mismatched (x_i, y_j) pairs of the KL reference point can be built from them."""
    seqs, status = encode_prompt_completions(row, [row["completion"]], tokenizer, data_cfg)
    if seqs is None:
        return None, status
    (p, c), = seqs
    return {"input_ids": p + c, "labels": [IGNORE_INDEX] * len(p) + c, "prompt_len": len(p), "label": bool(row["label"])}, status


def pair_mismatched(items: list[dict], seed: int) -> list[dict]:
    """Give every item a fixed mismatched sequence: its prompt with another item's completion.

    The pairing is a seeded derangement (a cycle through a shuffled order), fixed for the run so
    the reference log-probs of the mismatched sequences can be precomputed and cached.
    Mismatched sequences never exceed the longest matched one (the completion end is cut).
    """
    if not items:
        return items
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    limit = max(len(it["input_ids"]) for it in items)
    for pos, i in enumerate(order):
        j = order[(pos + 1) % len(order)]
        prompt = items[i]["input_ids"][: items[i]["prompt_len"]]
        completion = items[j]["input_ids"][items[j]["prompt_len"] :][: max(1, limit - len(prompt))]
        items[i]["kl_input_ids"] = prompt + completion
        items[i]["kl_labels"] = [IGNORE_INDEX] * len(prompt) + completion
    return items


def collate_unpaired(items: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Matched sequences then mismatched ones, one padded batch of 2B, plus ``desirable`` [B]
    (and ``ref_logps`` [2B] when precomputed)."""
    seqs = [{"input_ids": it["input_ids"], "labels": it["labels"]} for it in items]
    seqs += [{"input_ids": it["kl_input_ids"], "labels": it["kl_labels"]} for it in items]
    batch = collate_sft(seqs, pad_id)
    batch["desirable"] = torch.tensor([it["label"] for it in items], dtype=torch.bool)
    if all("ref_logps" in it for it in items):
        batch["ref_logps"] = torch.tensor([it["ref_logps"][j] for j in (0, 1) for it in items], dtype=torch.float32)
    return batch


class KTO(ReferenceObjective):
    """Kahneman–Tversky optimisation on unpaired rows (``label`` true = desirable).

    The reference point z0 is the policy/reference KL estimated on mismatched (x_i, y_j) pairs of
    the batch, with no gradient through it. Reference handling as in DPO (disabled adapter,
    frozen copy, or precomputed log-probs).
    """

    name: ClassVar[str] = "kto"
    data_kind: ClassVar[str] = "unpaired"
    config_keys: ClassVar[frozenset[str]] = frozenset(
        {"beta", "desirable_weight", "undesirable_weight", "precompute_ref_logps"}
    )

    def __init__(self, model: torch.nn.Module, tokenizer: Any, cfg: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(model, tokenizer, cfg, **kwargs)
        weights = required(cfg, ["desirable_weight", "undesirable_weight"], "KTO's loss weights")
        self.desirable_weight = float(weights["desirable_weight"])
        self.undesirable_weight = float(weights["undesirable_weight"])

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Before any work: only KTO's keys, each set, ``beta > 0`` and non-negative weights."""
        super().check_config(cfg)
        node = required(cfg.objective, sorted(cls.config_keys), "read by objective=kto")
        if float(node["beta"]) <= 0:
            raise ConfigError(f"objective.beta must be > 0 for objective=kto, got {node['beta']}")
        for key in ("desirable_weight", "undesirable_weight"):
            if float(node[key]) < 0:
                raise ConfigError(f"objective.{key} must be >= 0, got {node[key]}")

    @classmethod
    def encode(
        cls, row: Mapping[str, Any], tokenizer: Any, data_cfg: Mapping[str, Any], objective_cfg: Mapping[str, Any]
    ) -> tuple[dict | None, str]:
        return encode_unpaired(row, tokenizer, data_cfg)

    @classmethod
    def prepare_items(cls, items: list[dict], cfg: Mapping[str, Any], seed: int) -> list[dict]:
        items = pair_mismatched([dict(it) for it in items], seed)
        n_d = sum(1 for it in items if it["label"])
        n_u = len(items) - n_d
        weights = required(cfg, ["desirable_weight", "undesirable_weight"], "KTO's loss weights")
        w_d, w_u = float(weights["desirable_weight"]), float(weights["undesirable_weight"])
        if items and n_u and n_d:
            ratio = (w_d * n_d) / (w_u * n_u)
            lo, hi = WEIGHT_RATIO_RANGE
            if not lo <= ratio <= hi:
                log.warning(
                    "KTO: desirable_weight*n_desirable / (undesirable_weight*n_undesirable) = %.2f*%d / (%.2f*%d) = %.2f "
                    "is outside the recommended [%.2f, %.2f]; consider objective.desirable_weight=%.2f",
                    w_d, n_d, w_u, n_u, ratio, lo, hi, w_u * n_u / n_d,
                )
        elif items:
            log.warning("KTO: the data has only %s rows; KTO needs both desirable and undesirable examples",
                        "desirable" if n_d else "undesirable")
        return items

    @classmethod
    def collate_fn(cls, tokenizer: Any) -> Callable[[Sequence[dict]], dict]:
        return partial(collate_unpaired, pad_id=tokenizer.pad_token_id)

    def step(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        n = batch["desirable"].size(0)
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        policy = self.completion_logps(self.model, ids[:n], mask[:n], labels[:n], logits_mean=True)
        logps = policy.logps
        with torch.no_grad():  # z0 carries no gradient, so the mismatched forward needs none
            kl_logps = self.completion_logps(self.model, ids[n:], mask[n:], labels[n:]).logps
        ref = self.reference_logps(batch).to(logps.dtype)
        z0 = kto_reference_point(kl_logps, ref[n:])
        desirable = batch["desirable"]
        losses = kto_loss(
            logps, ref[:n], desirable, z0, beta=self.beta,
            desirable_weight=self.desirable_weight, undesirable_weight=self.undesirable_weight,
        )
        rewards = (self.beta * (logps - ref[:n])).detach()
        logit_means = policy.logits_mean
        metrics: dict[str, torch.Tensor] = {"kl": z0.detach()}
        for side, sel in (("chosen", desirable), ("rejected", ~desirable)):
            if bool(sel.any()):
                metrics[f"rewards/{side}"] = rewards[sel].mean()
                metrics[f"logps/{side}"] = logps.detach()[sel].mean()
                metrics[f"logits/{side}"] = logit_means[sel].mean()
        if "rewards/chosen" in metrics and "rewards/rejected" in metrics:
            metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
        return losses.mean(), metrics
