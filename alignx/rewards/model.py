"""A trained reward model as a reward function: ``(prompts, completions) -> list[float]``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from alignx.errors import ModelLoadError
from alignx.rewards.factory import reward_factory


class RewardModelScorer:
    """Score completions with a saved reward model (``objective=rm`` output, or any
    ``AutoModelForSequenceClassification`` with ``num_labels=1``).

    Texts are built as in training: prompt tokens, completion tokens, EOS; the reward is read at
    the EOS and the normalisation offset saved with the model (``alignx_reward_offset``) is added.
    Usable wherever alignx takes a reward function (evaluation, later RL objectives).
    """

    def __init__(
        self, path: str | Path, *, device: str | None = None, batch_size: int = 32, max_length: int | None = None
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not str(path):
            raise ValueError("path is empty: give the directory of a saved objective=rm model")
        path = Path(path).expanduser()
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"reward model directory '{path}' has no config.json (expected a saved objective=rm model)")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path).eval()
        if getattr(self.model.config, "num_labels", None) != 1:
            raise ModelLoadError(f"'{path}' is a classifier with {self.model.config.num_labels} labels, not a reward model (num_labels=1)")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device)
        self.offset = float(getattr(self.model.config, "alignx_reward_offset", 0.0) or 0.0)
        self.batch_size = batch_size
        self.max_length = max_length

    @classmethod
    def from_model(cls, model: torch.nn.Module, tokenizer: Any, *, batch_size: int = 32) -> "RewardModelScorer":
        """A scorer around an in-memory reward model (e.g. right after training), offset included."""
        scorer = cls.__new__(cls)
        scorer.tokenizer, scorer.model = tokenizer, model
        scorer.device = next(model.parameters()).device
        config = getattr(model, "config", None) or model.get_base_model().config
        scorer.offset = float(getattr(config, "alignx_reward_offset", 0.0) or 0.0)
        scorer.batch_size, scorer.max_length = batch_size, None
        return scorer

    def encode(self, prompt: str, completion: str, prompt_is_templated: bool = False) -> list[int]:
        tok = self.tokenizer
        p = list(tok(prompt, add_special_tokens=not prompt_is_templated)["input_ids"])
        c = list(tok(completion, add_special_tokens=False)["input_ids"]) + [tok.eos_token_id]
        ids = p + c
        if self.max_length and len(ids) > self.max_length:  # keep the end: the reward is read at EOS
            ids = ids[-self.max_length :]
        return ids

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], completions: Sequence[str], *, prompt_is_templated: bool = False) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"one prompt per completion expected, got {len(prompts)} and {len(completions)}")
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        scores: list[float] = []
        for start in range(0, len(prompts), self.batch_size):
            seqs = [self.encode(p, c, prompt_is_templated) for p, c in zip(prompts[start : start + self.batch_size],
                                                                            completions[start : start + self.batch_size])]
            width = max(map(len, seqs))
            ids = torch.full((len(seqs), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, s in enumerate(seqs):
                ids[i, : len(s)] = torch.tensor(s)
                mask[i, : len(s)] = 1
            out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            scores.extend((out.squeeze(-1).float() + self.offset).tolist())
        return scores


#: the registered reward ``rm``: a trained reward model, its options the scorer's arguments
rm_reward = reward_factory(RewardModelScorer, help={
    "path": "the directory of a saved objective=rm model",
    "device": "where to run it: cpu, cuda, cuda:1 (null: cuda when available)",
    "batch_size": "completions scored per forward",
    "max_length": "keep at most this many tokens of prompt + completion, from the end (null: all)",
})
