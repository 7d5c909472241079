"""Batched sampling with a KV cache from left-padded prompts, shared by evaluation and online RL.

:func:`sample` is the one generation path: token ids in (left-padded prompts), a
:class:`Rollout` out (right-padded responses cut after their first EOS, with masks). RL
objectives use the ids directly; :func:`generate` wraps it for text in, text out (evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from alignx.ops.rl import truncate_after_eos


@dataclass
class Rollout:
    """Prompts and their sampled responses, as one batch of token ids.

    ``prompt_ids`` [B, P] are left-padded (``prompt_mask`` marks real tokens), so every response
    starts at column P; ``response_ids`` [B, R] are right-padded: everything after the first EOS is
    the pad id and ``response_mask`` is true up to and including that EOS (everywhere for a
    response cut by the length limit, whose ``has_eos`` is false).
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    has_eos: torch.Tensor

    @property
    def input_ids(self) -> torch.Tensor:
        """Prompt + response ids [B, P + R]: the input of policy, reference and value forwards."""
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask.long(), self.response_mask.long()], dim=1)

    @property
    def prompt_width(self) -> int:
        return int(self.prompt_ids.size(1))

    def select(self, index: torch.Tensor) -> "Rollout":
        """The rows ``index`` (e.g. a minibatch), as a new Rollout."""
        return Rollout(*(t[index] for t in (self.prompt_ids, self.prompt_mask, self.response_ids, self.response_mask, self.has_eos)))

    def to(self, device: torch.device | str) -> "Rollout":
        return Rollout(*(t.to(device) for t in (self.prompt_ids, self.prompt_mask, self.response_ids, self.response_mask, self.has_eos)))


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into ``(ids [B, P], mask [B, P])`` (generation appends on the right)."""
    if not sequences:
        raise ValueError("left_pad needs at least one sequence")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        if len(seq):
            ids[i, width - len(seq) :] = torch.as_tensor(list(seq), dtype=torch.long)
            mask[i, width - len(seq) :] = 1
    return ids, mask


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only (``cumsum - 1``, 0 on left padding).

    Left-padded prompts would otherwise start at a different position per row, and the
    log-probs of a training forward would not match those the sampler saw.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def rollout_seed(seed: int, rank: int, step: int) -> int:
    """The sampling seed of one rollout: distinct per process (``seed + rank · const``) and per step.

    A function of (seed, rank, step) rather than a running RNG, so a run resumed at step k samples
    exactly what the uninterrupted run sampled at step k.
    """
    return ((int(seed) + 100_003 * int(rank)) * 1_000_003 + int(step)) % (2**63 - 1)


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    eos_id: int,
    pad_id: int,
    max_new_tokens: int = 32,
    greedy: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = 0,
    use_cache: bool = True,
) -> Rollout:
    """Sample one response per (left-padded) prompt row; returns a :class:`Rollout` on the model's device.

    Temperature, top-k (0 = off) and top-p (1.0 = off) apply in that order; ``greedy`` takes
    the argmax. Generation stops for a row at EOS (or ``max_new_tokens``). Sampling is seeded
    inside a forked RNG: the global RNG (and so the training trajectory) is left untouched;
    ``seed=None`` draws from the current RNG instead (a caller seeding several calls once).
    ``use_cache=False`` recomputes the whole prefix at every step (for benchmarks).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not greedy and temperature <= 0:
        raise ValueError(f"temperature must be > 0 for sampling, got {temperature} (use greedy decoding instead)")

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    kwargs: dict[str, Any] = dict(
        max_new_tokens=int(max_new_tokens),
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        use_cache=use_cache,
    )
    if greedy:
        kwargs.update(do_sample=False)
    else:
        # explicit values, 0 and 1.0 included: None would fall back to a hub model's generation_config (e.g. top_k=50),
        # and the log-probs RL computes from the full distribution would no longer be those of the sampler
        model_top_k = getattr(getattr(model, "generation_config", None), "top_k", None)
        kwargs.update(do_sample=True, temperature=float(temperature), top_p=float(top_p),
                      top_k=int(top_k) if top_k or model_top_k else None)
    try:
        if seed is None:
            out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, **kwargs)
        else:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(int(seed))
                out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, **kwargs)
    finally:
        model.train(was_training)
    response, mask, has_eos = truncate_after_eos(out[:, prompt_ids.size(1) :], eos_id, pad_id)
    return Rollout(prompt_ids, prompt_mask.long(), response, mask, has_eos)


def decode_responses(tokenizer: Any, rollout: Rollout) -> list[str]:
    """The responses as text, cut at EOS, special tokens stripped."""
    ids = rollout.response_ids.masked_fill(~rollout.response_mask.bool(), tokenizer.pad_token_id)
    return tokenizer.batch_decode(ids.cpu(), skip_special_tokens=True)


def encode_prompts(tokenizer: Any, prompts: Sequence[str], *, templated: bool = False) -> list[list[int]]:
    """Token ids of each prompt (BOS added unless the prompt is chat-templated, which carries its own)."""
    return [list(ids) for ids in tokenizer(list(prompts), add_special_tokens=not templated)["input_ids"]]


@torch.no_grad()
def generate_rollouts(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 32,
    greedy: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    batch_size: int = 64,
    seed: int = 0,
    prompt_is_templated: bool = False,
) -> tuple[list[str], list[Rollout]]:
    """Complete each prompt: the new text (special tokens stripped, cut at EOS) and, per batch of
    ``batch_size`` prompts, the :class:`Rollout` it was decoded from.

    The rollouts keep what the text loses (the EOS, special tokens, byte sequences that are not
    valid UTF-8), so log-probs of exactly the sampled sequences can be taken. Sampling is seeded
    in a forked RNG without touching the global one, so evaluating mid-run does not change the
    training trajectory.
    """
    encoded = encode_prompts(tokenizer, prompts, templated=prompt_is_templated)
    texts: list[str] = []
    rollouts: list[Rollout] = []
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int(seed))
        for i in range(0, len(encoded), batch_size):
            ids, mask = left_pad(encoded[i : i + batch_size], tokenizer.pad_token_id)
            rollout = sample(
                model, ids, mask,
                eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
                max_new_tokens=max_new_tokens, greedy=greedy, temperature=temperature,
                top_k=top_k, top_p=top_p, seed=None,
            )
            texts.extend(decode_responses(tokenizer, rollout))
            rollouts.append(rollout)
    return texts, rollouts


def generate(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], **kwargs: Any) -> list[str]:
    """Complete each prompt; returns only the new text (the text half of :func:`generate_rollouts`,
    which documents the keyword arguments)."""
    return generate_rollouts(model, tokenizer, prompts, **kwargs)[0]
