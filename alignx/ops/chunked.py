"""Token log-probabilities and cross entropy from hidden states, without the full logits.

A causal LM's logits are ``hidden @ weight.T (+ bias)``: for B sequences of T tokens and a
vocabulary of V ids that is a [B, T, V] tensor, and autograd keeps it (or its log-softmax) alive
until the backward pass. At V = 32k-150k it dominates both the time and the memory of a step,
although the losses only need one number per labelled position: ``log p(label)``.

The functions here take the final hidden states and the LM head's weight (and bias) instead of
the logits, select the labelled positions first, and project them to the vocabulary ``chunk_size``
positions at a time. Each chunk's logits live only while that chunk is processed; what is kept for
the backward pass is the hidden states, the label ids and one logsumexp per position. Peak extra
memory is therefore O(chunk_size x V) instead of O(N x V) for N labelled positions. Values and
gradients equal the plain path (``hidden @ weight.T`` -> log-softmax -> gather) up to floating
point rounding (``docs/losses.md``, "Log-probs without the full logits").
"""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import once_differentiable

from alignx.ops.logprobs import IGNORE_INDEX


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half/bfloat16/float32 inputs, float64 for float64: logsumexp never runs in 16 bits."""
    return torch.promote_types(dtype, torch.float32)


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """``(h @ weight.T + bias) / τ`` for one chunk, in the accumulation dtype (a fresh tensor we may modify)."""
    logits = h @ weight.T if bias is None else torch.addmm(bias, h, weight.T)
    z = logits.to(_accumulation_dtype(logits.dtype))  # a copy, or the matmul's own output: ours either way
    return z.div_(temperature) if temperature != 1.0 else z


class _ChunkedTokenLogprobs(torch.autograd.Function):
    """log p(label) per row of ``hidden``, chunk by chunk; the backward recomputes each chunk's logits.

    With ``z = (hidden @ weight.T + bias) / τ``, ``out_i = z_{i, y_i} - logsumexp_j z_ij`` and
    ``∂out_i/∂z_ij = 1[j = y_i] - softmax(z_i)_j``. The backward rebuilds ``softmax(z_i)`` from
    the saved logsumexp and one recomputed chunk of logits, then forms the chunk's logit gradient
    ``g = grad_out_i · (onehot - softmax) / τ`` and folds it into the hidden/weight/bias gradients
    before moving to the next chunk.

    When neither the weight nor the bias needs a gradient (a frozen LM head, as with LoRA) the
    hidden-state gradient direction ``(weight_{y_i} - softmax(z_i) @ weight) / τ`` does not depend
    on ``grad_out``; the forward then computes it while the chunk's logits are at hand and saves it
    ([N, H]), so the backward is one multiplication and no logits are recomputed.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        labels: torch.Tensor,
        temperature: float,
        chunk_size: int,
        grad_enabled: bool,
    ) -> torch.Tensor:
        acc = _accumulation_dtype(hidden.dtype)
        n = hidden.size(0)
        valid = labels != IGNORE_INDEX
        safe = torch.where(valid, labels, torch.zeros_like(labels))
        out = torch.empty(n, dtype=acc, device=hidden.device)
        lse = torch.empty(n, dtype=acc, device=hidden.device)
        head_grad = ctx.needs_input_grad[1] or (bias is not None and ctx.needs_input_grad[2])
        precompute = grad_enabled and ctx.needs_input_grad[0] and not head_grad
        direction = torch.empty(n, hidden.size(1), dtype=acc, device=hidden.device) if precompute else None
        for start in range(0, n, chunk_size):
            end = min(start + chunk_size, n)
            z = _chunk_logits(hidden[start:end], weight, bias, temperature)
            y = safe[start:end, None]
            lse_c = torch.logsumexp(z, dim=-1)
            out[start:end] = z.gather(-1, y).squeeze(-1) - lse_c
            lse[start:end] = lse_c
            if direction is not None:
                p = z.sub_(lse_c[:, None]).exp_()  # softmax, in place of the chunk's logits
                expected = (p.to(weight.dtype) @ weight).to(acc)
                direction[start:end] = (weight[safe[start:end]].to(acc) - expected) / temperature
        out = out * valid
        ctx.temperature, ctx.chunk_size, ctx.has_bias = temperature, chunk_size, bias is not None
        ctx.hidden_dtype = hidden.dtype
        if direction is not None:
            ctx.save_for_backward(direction * valid[:, None])
            ctx.precomputed = True
        else:
            ctx.save_for_backward(hidden, weight, bias, safe, valid, lse)
            ctx.precomputed = False
        return out

    @staticmethod
    @once_differentiable  # the backward is hand-written with in-place ops: no second derivative
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        if ctx.precomputed:
            (direction,) = ctx.saved_tensors
            grad_hidden = (grad_out[:, None].to(direction.dtype) * direction).to(ctx.hidden_dtype)
            return grad_hidden, None, None, None, None, None, None
        hidden, weight, bias, safe, valid, lse = ctx.saved_tensors
        tau, chunk = ctx.temperature, ctx.chunk_size
        acc = lse.dtype
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = ctx.has_bias and ctx.needs_input_grad[2]
        grad_hidden = torch.empty_like(hidden) if need_h else None
        # the head's gradient sums over every chunk: accumulate it in float32 (or float64) whatever the weight dtype
        grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_bias = torch.zeros(weight.size(0), dtype=acc, device=weight.device) if need_b else None
        go = (grad_out.to(acc) * valid) / tau  # ignored positions contribute nothing
        for start in range(0, hidden.size(0), chunk):
            end = min(start + chunk, hidden.size(0))
            h = hidden[start:end]
            z = _chunk_logits(h, weight, bias, tau)
            g_c = go[start:end, None]
            # g = grad_out · (onehot(y) - softmax(z)) / τ, built in place of the recomputed logits
            g = z.sub_(lse[start:end, None]).exp_().mul_(-g_c)
            g.scatter_add_(-1, safe[start:end, None], g_c)
            g_in = g.to(hidden.dtype)
            if grad_hidden is not None:
                torch.mm(g_in, weight, out=grad_hidden[start:end])
            if grad_weight is not None and weight.dtype == acc:
                grad_weight.addmm_(g_in.T, h)  # no [V, H] temporary per chunk
            elif grad_weight is not None:
                grad_weight += (g_in.T @ h).to(acc)
            if grad_bias is not None:
                grad_bias += g.sum(0)
        return (
            grad_hidden,
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(bias.dtype),
            None,
            None,
            None,
            None,
        )


def chunked_token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int,
) -> torch.Tensor:
    """log p(label_i) for each row of ``hidden``, without materialising the [N, V] logits.

    ``hidden`` [N, H] are final hidden states (after the model's last norm), ``weight`` [V, H] and
    ``bias`` [V] the LM head, ``labels`` [N] the token each row predicts (already aligned: row i
    predicts ``labels[i]``). With logits ``z_i = (weight @ hidden_i + bias) / τ`` (τ = ``temperature``),
    the result is ``log p_i = z_{i, label_i} - logsumexp_j z_ij``, i.e. the label's logit over τ
    minus the logsumexp of all logits over τ. Rows whose label is IGNORE_INDEX give 0 and no gradient.

    The rows are projected to the vocabulary ``chunk_size`` at a time and the logsumexp is taken
    in float32 (float64 for float64 inputs); the result has that dtype. For the backward only the
    inputs and one logsumexp per row are kept: the backward recomputes each chunk's logits (one
    extra matmul per chunk) instead of holding them all, so the extra memory at any moment is
    O(chunk_size x V) rather than O(N x V). Gradients flow to ``hidden``, ``weight`` and ``bias``
    as far as they require them; with a frozen head the forward prepares the [N, H] hidden-state
    gradient itself and nothing is recomputed.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.size(1) != weight.size(1):
        raise ValueError(f"hidden must be [N, H] and weight [V, H]; got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if labels.shape != hidden.shape[:1]:
        raise ValueError(f"labels must be [N] = [{hidden.size(0)}], got {tuple(labels.shape)}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias must be [V] = [{weight.size(0)}], got {tuple(bias.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    # autograd runs forward() with gradients off, so it is told here whether a backward can follow
    grad_enabled = torch.is_grad_enabled()
    return _ChunkedTokenLogprobs.apply(hidden, weight, bias, labels, float(temperature), int(chunk_size), grad_enabled)


def _labelled_positions(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Causal shift, then the labelled positions: (rows, their hidden states [N, H], their labels [N], mask [B, T-1])."""
    if hidden.dim() != 3 or labels.shape != hidden.shape[:2]:
        raise ValueError(f"hidden must be [B, T, H] and labels [B, T]; got {tuple(hidden.shape)} and {tuple(labels.shape)}")
    # the hidden state at t predicts the token at t + 1 (same convention as shift_for_next_token)
    hidden, labels = hidden[:, :-1], labels[:, 1:]
    mask = labels != IGNORE_INDEX
    rows, cols = mask.nonzero(as_tuple=True)
    return rows, hidden[rows, cols], labels[rows, cols], mask


def sequence_logps_from_hidden(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probability per sequence, from hidden states [B, T, H].

    The same result as ``sequence_logps(hidden @ weight.T + bias, labels)`` in alignx.losses
    without the [B, T, V] logits: ``labels`` [B, T] are *unshifted* (the input ids with prompt and
    padding set to IGNORE_INDEX), the causal shift is applied here, and only labelled positions are
    projected (see :func:`chunked_token_logprobs` for the chunking and the memory bound). Returns
    ``(sum_logp [B], n_tokens [B])``; a sequence with no labelled token gives 0 and 0.
    """
    rows, h, y, mask = _labelled_positions(hidden, labels)
    lp = chunked_token_logprobs(h, weight, y, bias=bias, temperature=temperature, chunk_size=chunk_size)
    sums = torch.zeros(labels.size(0), dtype=lp.dtype, device=lp.device).index_add(0, rows, lp)
    return sums, mask.sum(-1)


def cross_entropy_from_hidden(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token negative log-likelihood over labelled tokens, from hidden states [B, T, H].

    The same result as ``sft_loss(hidden @ weight.T + bias, labels)`` in alignx.losses without
    the [B, T, V] logits: ``-Σ log p(label) / n_tokens`` over every labelled position of the
    batch (a mean over tokens, not sequences; 0 when there are none). Returns
    ``(loss, n_tokens)``; the chunking and memory bound are those of :func:`chunked_token_logprobs`.
    """
    _, h, y, mask = _labelled_positions(hidden, labels)
    lp = chunked_token_logprobs(h, weight, y, bias=bias, chunk_size=chunk_size)
    n_tokens = mask.sum()
    return -lp.sum() / n_tokens.clamp(min=1), n_tokens


def completion_logits_mean_from_hidden(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean logit over the vocabulary and the labelled positions per sequence, detached, [B].

    The same result as ``completion_logits_mean(hidden @ weight.T + bias, labels)`` in
    alignx.losses (the ``logits/chosen`` and ``logits/rejected`` metrics) without the logits: the
    mean of a position's logits over the vocabulary is its hidden state times the mean head row,
    plus the mean bias. Same causal shift and mask as :func:`sequence_logps_from_hidden`; a
    sequence with no labelled token gives 0.
    """
    with torch.no_grad():
        acc = _accumulation_dtype(hidden.dtype)
        mean_row = weight.to(acc).mean(0)
        per_pos = hidden[:, :-1].to(acc) @ mean_row
        if bias is not None:
            per_pos = per_pos + bias.to(acc).mean()
        mask = (labels[:, 1:] != IGNORE_INDEX).to(acc)
        return (per_pos * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def chunked_logprobs_and_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(label_i) and the entropy of each row's distribution, detached, in one chunked pass.

    For bookkeeping without gradients (scoring rollouts: their old log-probs and the entropy
    metric). With ``z_i`` as in :func:`chunked_token_logprobs` and ``p_i = softmax(z_i)``, the
    entropy is ``H_i = logsumexp_j z_ij - Σ_j p_ij z_ij``. Rows labelled IGNORE_INDEX give a
    log-prob of 0 (their entropy is still computed). Extra memory O(chunk_size x V).
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.size(1) != weight.size(1):
        raise ValueError(f"hidden must be [N, H] and weight [V, H]; got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if labels.shape != hidden.shape[:1]:
        raise ValueError(f"labels must be [N] = [{hidden.size(0)}], got {tuple(labels.shape)}")
    if temperature <= 0 or chunk_size < 1:
        raise ValueError(f"temperature must be > 0 and chunk_size >= 1, got {temperature} and {chunk_size}")
    with torch.no_grad():
        acc = _accumulation_dtype(hidden.dtype)
        valid = labels != IGNORE_INDEX
        safe = torch.where(valid, labels, torch.zeros_like(labels))
        logps = torch.empty(hidden.size(0), dtype=acc, device=hidden.device)
        entropy = torch.empty_like(logps)
        for start in range(0, hidden.size(0), chunk_size):
            end = min(start + chunk_size, hidden.size(0))
            z = _chunk_logits(hidden[start:end], weight, bias, temperature)
            lse = torch.logsumexp(z, dim=-1)
            logps[start:end] = z.gather(-1, safe[start:end, None]).squeeze(-1) - lse
            p = torch.softmax(z, dim=-1)
            entropy[start:end] = lse - (p * z).sum(-1)
        return logps * valid, entropy
