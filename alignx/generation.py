"""Batched sampling with a KV cache (left-padded prompts), shared by evaluation and RL."""

from __future__ import annotations

from typing import Any, Sequence

import torch


@torch.no_grad()
def generate(
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
) -> list[str]:
    """Complete each prompt; returns only the new text (special tokens stripped), cut at EOS.

    Sampling is seeded without touching the global RNG, so evaluating mid-run does not change
    the training trajectory.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation appends on the right, so pad on the left
    outputs: list[str] = []
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for i in range(0, len(prompts), batch_size):
                chunk = list(prompts[i : i + batch_size])
                enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=not prompt_is_templated)
                enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
                kwargs: dict[str, Any] = dict(
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    use_cache=True,
                )
                if greedy:
                    kwargs.update(do_sample=False)
                else:
                    kwargs.update(do_sample=True, temperature=temperature, top_k=top_k or None, top_p=top_p)
                out = model.generate(**enc, **kwargs)
                new = out[:, enc["input_ids"].shape[1] :]
                outputs.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return outputs
