"""Direct preference optimisation and its relatives (cDPO, robust, hinge, IPO, SimPO, ORPO)."""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, ClassVar, Mapping, Sequence

import torch

from alignx.data.batching import collate_sft
from alignx.data.tokenize import (
    encode_prompt,
    fit_to_length,
    prompt_is_templated,
    prompt_text,
)
from alignx.errors import ConfigError
from alignx.losses.preference import (
    DPO_LOSS_TYPES,
    completion_logits_mean,
    dpo_loss,
    orpo_loss,
    preference_metrics,
    sequence_logps,
    simpo_loss,
)
from alignx.objectives.base import ReferenceObjective
from alignx.ops.logprobs import IGNORE_INDEX

REFERENCE_FREE = ("simpo", "orpo")
LOSSES = (*DPO_LOSS_TYPES, *REFERENCE_FREE)


def encode_prompt_completions(
    row: Mapping[str, Any], completions: Sequence[str], tokenizer: Any, data_cfg: Mapping[str, Any]
) -> tuple[list[tuple[list[int], list[int]]] | None, str]:
    """Tokenise one prompt with several completions (each closed by EOS) under the truncation policy.

    Returns ``([(prompt_ids, completion_ids), ...], status)`` or ``(None, "dropped")`` when any
    completion cannot fit (a row is kept or dropped whole).
    """
    chat = bool(data_cfg["chat_template"])
    p_ids = encode_prompt(prompt_text(row, tokenizer, chat), tokenizer, templated=prompt_is_templated(row, chat))
    keep = 1 if p_ids and p_ids[0] == tokenizer.bos_token_id else 0
    out, status = [], "kept"
    for text in completions:
        c_ids = list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
        fitted = fit_to_length(p_ids, c_ids, int(data_cfg["max_length"]), str(data_cfg["truncation"]), keep)
        if fitted is None:
            return None, "dropped"
        sp, sc, st = fitted
        status = "truncated" if st == "truncated" else status
        out.append((sp, sc))
    return out, status


def encode_pair(
    row: Mapping[str, Any], tokenizer: Any, data_cfg: Mapping[str, Any]
) -> tuple[dict[str, list[int]] | None, str]:
    """Tokenise a prompt/chosen/rejected row into two completion-masked sequences."""
    seqs, status = encode_prompt_completions(row, [row["chosen"], row["rejected"]], tokenizer, data_cfg)
    if seqs is None:
        return None, status
    out = {}
    for side, (sp, sc) in zip(("chosen", "rejected"), seqs):
        out[f"{side}_input_ids"] = sp + sc
        out[f"{side}_labels"] = [IGNORE_INDEX] * len(sp) + sc
    return out, status


def collate_pairs(items: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Chosen rows then rejected rows, in one padded batch of 2B: one forward serves both.

    Precomputed reference log-probs (``item["ref_logps"] = [chosen, rejected]``) come along as
    ``ref_logps`` [2B] in the same order.
    """
    seqs = [{"input_ids": it["chosen_input_ids"], "labels": it["chosen_labels"]} for it in items]
    seqs += [{"input_ids": it["rejected_input_ids"], "labels": it["rejected_labels"]} for it in items]
    batch = collate_sft(seqs, pad_id)
    if all("ref_logps" in it for it in items):
        batch["ref_logps"] = torch.tensor([it["ref_logps"][j] for j in (0, 1) for it in items], dtype=torch.float32)
    return batch


class DPO(ReferenceObjective):
    """Preference optimisation on chosen/rejected pairs; ``objective.loss`` picks the loss.

    The reference policy is the same model with adapters disabled when an adapter is used (no
    second copy in memory), else a frozen copy made at the start, or nothing when its
    log-probs are precomputed (``objective.precompute_ref_logps``); reference-free losses
    (simpo, orpo) load none.
    """

    name: ClassVar[str] = "dpo"
    data_kind: ClassVar[str] = "pairs"
    config_keys: ClassVar[frozenset[str]] = frozenset(
        {"loss", "beta", "label_smoothing", "simpo_gamma", "orpo_lambda", "precompute_ref_logps"}
    )

    def __init__(self, model: torch.nn.Module, tokenizer: Any, cfg: Mapping[str, Any], **kwargs: Any) -> None:
        self.loss_type = str(cfg.get("loss", "sigmoid"))
        if self.loss_type not in LOSSES:
            raise ConfigError(f"objective.loss='{self.loss_type}' is not a DPO loss. Valid: {', '.join(LOSSES)}")
        super().__init__(model, tokenizer, cfg, **kwargs)

    def needs_reference(self) -> bool:
        return self.loss_type not in REFERENCE_FREE

    @classmethod
    def encode(cls, row: Mapping[str, Any], tokenizer: Any, data_cfg: Mapping[str, Any]) -> tuple[dict | None, str]:
        item, status = encode_pair(row, tokenizer, data_cfg)
        if item is not None:
            item["input_ids"] = item["chosen_input_ids"]  # the length batches are bucketed by
        return item, status

    @classmethod
    def collate_fn(cls, tokenizer: Any) -> Callable[[Sequence[dict]], dict]:
        return partial(collate_pairs, pad_id=tokenizer.pad_token_id)

    def step(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        n = batch["input_ids"].size(0) // 2
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logps, n_tok = sequence_logps(logits, batch["labels"])
        avg = logps / n_tok.clamp(min=1)
        logit_means = completion_logits_mean(logits, batch["labels"])
        metrics: dict[str, torch.Tensor] = {}
        if self.loss_type == "simpo":
            losses, chosen_r, rejected_r = simpo_loss(
                avg[:n], avg[n:], beta=self.beta, gamma=float(self.cfg.get("simpo_gamma", 1.0))
            )
        elif self.loss_type == "orpo":
            nll = -avg[:n]
            losses, _ = orpo_loss(avg[:n], avg[n:], nll, lam=float(self.cfg.get("orpo_lambda", 0.1)))
            chosen_r, rejected_r = avg[:n].detach(), avg[n:].detach()
            metrics["nll"] = nll.mean().detach()
        else:
            ref_logps = self.reference_logps(batch).to(logps.dtype)
            pol, ref = (avg, ref_logps / n_tok.clamp(min=1)) if self.loss_type == "ipo" else (logps, ref_logps)
            losses, chosen_r, rejected_r = dpo_loss(
                pol[:n], pol[n:], ref[:n], ref[n:],
                beta=self.beta, loss_type=self.loss_type, label_smoothing=float(self.cfg.get("label_smoothing", 0.0)),
            )
        metrics.update(preference_metrics(chosen_r, rejected_r, logps[:n], logps[n:], logit_means[:n], logit_means[n:]))
        return losses.mean(), metrics
