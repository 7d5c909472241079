"""Log-probs and cross entropy from hidden states (alignx.ops.chunked) against the plain path.

The plain path is what the objectives compute today: ``hidden @ weight.T (+ bias)`` -> log-softmax
-> gather (and :func:`sequence_logps` / :func:`sft_loss` on those logits). Values and gradients
must agree to 1e-5 in float32 and 1e-10 in float64; one case is worked out by hand; the memory
claim is checked by counting what autograd saves and the largest tensor any op produces.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import approx
from torch.utils._python_dispatch import TorchDispatchMode

from alignx.losses.preference import completion_logits_mean, sequence_logps
from alignx.losses.sft import sft_loss
from alignx.ops import (
    IGNORE_INDEX,
    chunked_logprobs_and_entropy,
    chunked_token_logprobs,
    completion_logits_mean_from_hidden,
    cross_entropy_from_hidden,
    entropy_from_logits,
    sequence_logps_from_hidden,
)

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
B, T, H, V = 4, 7, 5, 11


def batch(dtype: torch.dtype, *, bias: bool, head_grad: bool, seed: int = 0):
    """Random hidden [B, T, H], head [V, H] (+ [V]) and labels with prompts, padding and one empty row."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g, dtype=dtype).requires_grad_(True)
    weight = torch.randn(V, H, generator=g, dtype=dtype).requires_grad_(head_grad)
    b = torch.randn(V, generator=g, dtype=dtype).requires_grad_(head_grad) if bias else None
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, :2] = IGNORE_INDEX  # prompt of 2
    labels[1, :4] = IGNORE_INDEX  # prompt of 4 ...
    labels[1, 6:] = IGNORE_INDEX  # ... and padding
    labels[2, :] = IGNORE_INDEX  # no labelled token at all
    labels[3, :1] = IGNORE_INDEX
    # after the shift: 5 + 2 + 0 + 6 = 13 labelled positions
    return hidden, weight, b, labels


def plain_sequence_logps(hidden, weight, bias, labels, temperature=1.0):
    """Reference in the input dtype: full logits, log_softmax, gather, masked sum."""
    logits = hidden @ weight.T if bias is None else hidden @ weight.T + bias
    logp = torch.log_softmax(logits[:, :-1] / temperature, dim=-1)
    y = labels[:, 1:]
    mask = y != IGNORE_INDEX
    picked = logp.gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1), mask.sum(-1)


def grads(out: torch.Tensor, tensors) -> list[torch.Tensor]:
    """Gradients of a weighted sum of ``out`` (distinct weights, so each row's gradient counts)."""
    w = torch.linspace(0.5, 2.0, out.numel(), dtype=out.dtype).reshape(out.shape)
    return list(torch.autograd.grad((out * w).sum(), [t for t in tensors if t is not None and t.requires_grad]))


def close(a: torch.Tensor, b: torch.Tensor, tol: float) -> None:
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk_size", [1, 4, 5, 13, 100])  # 13 labelled positions: 5 does not divide, 13 = N, 100 > N
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("head_grad", [True, False])  # False: a frozen LM head (LoRA), the precomputed backward
def test_sequence_logps_equal_plain_path(dtype, chunk_size, temperature, bias, head_grad):
    hidden, weight, b, labels = batch(dtype, bias=bias, head_grad=head_grad)
    got, n = sequence_logps_from_hidden(hidden, weight, labels, bias=b, temperature=temperature, chunk_size=chunk_size)
    want, n_want = plain_sequence_logps(hidden, weight, b, labels, temperature)
    assert got.dtype == dtype
    assert n.tolist() == n_want.tolist() == [5, 2, 0, 6]
    assert got[2].item() == 0.0  # the row with no labelled token
    close(got, want, TOL[dtype])
    params = [hidden, weight, b]
    got_g, want_g = grads(got, params), grads(want, params)
    assert len(got_g) == (3 if bias and head_grad else 2 if head_grad else 1)
    for g, w in zip(got_g, want_g):
        assert g.dtype == dtype
        close(g, w, TOL[dtype])
    assert got_g[0][2].abs().max().item() == 0.0  # no gradient reaches the empty row's hidden states


@pytest.mark.parametrize("chunk_size", [3, 13])
def test_sequence_logps_equal_losses_sequence_logps(chunk_size):
    """The op's contract: exactly what alignx.losses' ``sequence_logps`` gives on the plain logits (float32)."""
    hidden, weight, b, labels = batch(torch.float32, bias=True, head_grad=True, seed=1)
    got, n = sequence_logps_from_hidden(hidden, weight, labels, bias=b, chunk_size=chunk_size)
    want, n_want = sequence_logps(hidden @ weight.T + b, labels)
    assert torch.equal(n, n_want)
    close(got, want, 1e-5)
    for g, w in zip(grads(got, [hidden, weight, b]), grads(want, [hidden, weight, b])):
        close(g, w, 1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk_size", [2, 13, 50])
@pytest.mark.parametrize("head_grad", [True, False])
def test_cross_entropy_equals_plain_path(dtype, chunk_size, head_grad):
    hidden, weight, b, labels = batch(dtype, bias=True, head_grad=head_grad, seed=2)
    loss, n = cross_entropy_from_hidden(hidden, weight, labels, bias=b, chunk_size=chunk_size)
    sums, counts = plain_sequence_logps(hidden, weight, b, labels)
    want = -sums.sum() / counts.sum()
    assert n.item() == 13
    close(loss, want, TOL[dtype])
    params = [hidden, weight, b]
    for g, w in zip(torch.autograd.grad(loss, [p for p in params if p.requires_grad]),
                    torch.autograd.grad(want, [p for p in params if p.requires_grad])):
        close(g, w, TOL[dtype])
    if dtype == torch.float32:  # and sft_loss itself, which computes in float32
        want_sft, n_sft = sft_loss(hidden @ weight.T + b, labels)
        assert torch.equal(n, n_sft)
        close(loss, want_sft, 1e-5)


def test_cross_entropy_without_labelled_tokens_is_zero():
    hidden, weight, b, labels = batch(torch.float64, bias=True, head_grad=True)
    labels[:] = IGNORE_INDEX
    loss, n = cross_entropy_from_hidden(hidden, weight, labels, bias=b, chunk_size=4)
    assert n.item() == 0 and loss.item() == 0.0
    for g in torch.autograd.grad(loss, [hidden, weight, b]):
        assert g.abs().max().item() == 0.0


@pytest.mark.parametrize("bias", [False, True])
def test_completion_logits_mean_equals_losses(bias):
    hidden, weight, b, labels = batch(torch.float64, bias=bias, head_grad=True, seed=7)
    got = completion_logits_mean_from_hidden(hidden, weight, labels, bias=b)
    logits = hidden @ weight.T if b is None else hidden @ weight.T + b
    # completion_logits_mean works in float32; the float64 reference is the same mean taken in float64
    y = labels[:, 1:] != IGNORE_INDEX
    want = (logits[:, :-1].mean(-1) * y).sum(-1) / y.sum(-1).clamp(min=1)
    close(got, want.detach(), 1e-10)
    close(got.float(), completion_logits_mean(logits.float(), labels), 1e-5)
    assert got.grad_fn is None and got[2].item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk_size", [3, 13, 40])
def test_logprobs_and_entropy_equal_plain_path(dtype, chunk_size):
    g = torch.Generator().manual_seed(8)
    hidden, weight = torch.randn(13, H, generator=g, dtype=dtype), torch.randn(V, H, generator=g, dtype=dtype)
    bias = torch.randn(V, generator=g, dtype=dtype)
    labels = torch.randint(0, V, (13,), generator=g)
    labels[[2, 7]] = IGNORE_INDEX
    logps, entropy = chunked_logprobs_and_entropy(hidden, weight, labels, bias=bias, temperature=0.7, chunk_size=chunk_size)
    logits = (hidden @ weight.T + bias) / 0.7
    want = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[:, None]).squeeze(-1) * (labels != IGNORE_INDEX)
    close(logps, want, TOL[dtype])
    close(entropy, entropy_from_logits(logits), TOL[dtype])
    assert logps[2].item() == 0.0 and entropy[2].item() > 0.0


def test_hand_computed():
    """V=3, H=2, no bias. Rows h1 = [1, 0] and h2 = [0, 1] with head rows W0 = [1, 0], W1 = [0, 1],
    W2 = [1, 1] give logits z1 = [1, 0, 1] and z2 = [0, 1, 1]; a third row is ignored.

    Labels 0 and 2: both log-probs are 1 - log(e + 1 + e) = 1 - log(2e + 1).
    With τ = 2 the logits halve: 0.5 - log(2·e^0.5 + 1).

    Gradients at τ = 1 (∂ log p_i / ∂z_ij = 1[j = y_i] - p_ij), with p1 = [e, 1, e] / (2e + 1)
    and p2 = [1, e, e] / (2e + 1), s = 2e + 1:
      ∂/∂h1 = W0 - Σ p1_j W_j = [1, 0] - [2e, 1 + e] / s = [1, -(1 + e)] / s
      ∂/∂h2 = W2 - Σ p2_j W_j = [1, 1] - [1 + e, 2e] / s = [e, 1] / s
      ∂/∂W  = Σ_i (onehot_i - p_i) ⊗ h_i:  row 1 fills column 0, row 2 column 1:
              W0: [(e + 1), -1] / s,  W1: [-1, -e] / s,  W2: [-e, (e + 1)] / s
      ∂/∂bias = Σ_i (onehot_i - p_i) = ([e + 1, -1, -e] + [-1, -e, e + 1]) / s = [e, -1 - e, 1] / s
    """
    e, s = math.e, 2 * math.e + 1
    hidden = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, -2.0]], dtype=torch.float64, requires_grad=True)
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 2, IGNORE_INDEX])

    lp = chunked_token_logprobs(hidden, weight, labels, bias=bias, chunk_size=2)
    approx(lp, [1 - math.log(s), 1 - math.log(s), 0.0])
    g_h, g_w, g_b = torch.autograd.grad(lp.sum(), [hidden, weight, bias])
    approx(g_h, [[1 / s, -(1 + e) / s], [e / s, 1 / s], [0.0, 0.0]])
    approx(g_w, [[(e + 1) / s, -1 / s], [-1 / s, -e / s], [-e / s, (e + 1) / s]])
    approx(g_b, [e / s, (-1 - e) / s, 1 / s])

    hot = chunked_token_logprobs(hidden.detach(), weight.detach(), labels, temperature=2.0, chunk_size=1)
    approx(hot, [0.5 - math.log(2 * math.exp(0.5) + 1), 0.5 - math.log(2 * math.exp(0.5) + 1), 0.0])

    # frozen head: the hidden-state gradient prepared in the forward pass is the same
    (g_h_frozen,) = torch.autograd.grad(chunked_token_logprobs(hidden, weight.detach(), labels, chunk_size=2).sum(), [hidden])
    approx(g_h_frozen, [[1 / s, -(1 + e) / s], [e / s, 1 / s], [0.0, 0.0]])

    # entropy of p1 = [e, 1, e] / s: H = log s - Σ p z = log s - (e·1 + 1·0 + e·1) / s = log s - 2e / s
    _, ent = chunked_logprobs_and_entropy(hidden.detach(), weight.detach(), labels, chunk_size=2)
    approx(ent[:2], [math.log(s) - 2 * e / s, math.log(s) - 2 * e / s])


@pytest.mark.parametrize("head_grad", [True, False])
def test_gradcheck(head_grad):
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=head_grad)
    bias = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=head_grad)
    labels = torch.tensor([1, 3, IGNORE_INDEX, 0, 2])
    assert torch.autograd.gradcheck(
        lambda h, w, b: chunked_token_logprobs(h, w, labels, bias=b, temperature=0.7, chunk_size=2),
        (hidden, weight, bias),
    )


# ---------------------------------------------------------------- memory: what is kept and what is built

MB, MT, MH, MV, CHUNK, N_LAB = 4, 20, 8, 257, 16, 64


def memory_batch(head_grad: bool):
    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(MB, MT, MH, generator=g, requires_grad=True)
    weight = torch.randn(MV, MH, generator=g, requires_grad=head_grad)
    labels = torch.randint(0, MV, (MB, MT), generator=g)
    labels[:, :4] = IGNORE_INDEX  # shifted labels are positions 1..19, the first 3 ignored: 4 x 16 = 64 labelled
    return hidden, weight, labels


class LargestOutput(TorchDispatchMode):
    """Records the element count of the largest tensor any aten op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("head_grad", [True, False])
def test_nothing_n_by_v_is_saved_for_backward(head_grad):
    hidden, weight, labels = memory_batch(head_grad)
    n_by_v = N_LAB * MV

    def saved(fn) -> list[torch.Tensor]:
        kept: list[torch.Tensor] = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
            fn()
        return kept

    plain = saved(lambda: sequence_logps(hidden @ weight.T, labels))
    assert max(t.numel() for t in plain) >= n_by_v  # the probe does see the plain path's [N, V] logits

    chunked = saved(lambda: sequence_logps_from_hidden(hidden, weight, labels, chunk_size=CHUNK))
    assert max(t.numel() for t in chunked) <= max(MV * MH, MB * MT * MH)  # the inputs, nothing vocabulary-sized
    if not head_grad:  # the frozen head keeps nothing but the [N, H] gradient direction (and the index)
        assert max(t.numel() for t in chunked) <= N_LAB * MH
    assert sum(t.numel() * t.element_size() for t in chunked) < n_by_v * 4 // 2


@pytest.mark.parametrize("head_grad", [True, False])
def test_no_op_builds_more_than_a_chunk_of_logits(head_grad):
    """Forward and backward: no intermediate exceeds chunk_size x V elements (the plain path builds N x V)."""
    hidden, weight, labels = memory_batch(head_grad)
    with LargestOutput() as plain:
        out, _ = sequence_logps(hidden @ weight.T, labels)
        out.sum().backward()
    assert plain.largest >= N_LAB * MV

    hidden.grad = weight.grad = None
    with LargestOutput() as chunked:
        out, _ = sequence_logps_from_hidden(hidden, weight, labels, chunk_size=CHUNK)
        out.sum().backward()
    assert chunked.largest <= CHUNK * MV < N_LAB * MV
    assert hidden.grad is not None and (weight.grad is not None) == head_grad


# ---------------------------------------------------------------- dtypes, devices, arguments

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_bfloat16_accumulates_in_float32(device):
    hidden, weight, b, labels = batch(torch.float32, bias=True, head_grad=True, seed=5)
    h16 = hidden.detach().to(device, torch.bfloat16).requires_grad_(True)
    w16 = weight.detach().to(device, torch.bfloat16).requires_grad_(True)
    b16 = b.detach().to(device, torch.bfloat16).requires_grad_(True)
    got, n = sequence_logps_from_hidden(h16, w16, labels.to(device), bias=b16, chunk_size=3)
    assert got.dtype == torch.float32 and n.tolist() == [5, 2, 0, 6]
    # the plain path on the same bfloat16 logits, upcast before the log-softmax as sequence_logps does
    want, _ = sequence_logps(h16 @ w16.T + b16, labels.to(device))
    close(got, want, 2e-2)
    for g, w in zip(grads(got, [h16, w16, b16]), grads(want, [h16, w16, b16])):
        assert g.dtype == torch.bfloat16
        torch.testing.assert_close(g.float(), w.float(), rtol=5e-2, atol=5e-2)


#: every device this machine has: the CPU always, a GPU where one is present (no test is skipped)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_float32_on_each_device_equals_plain_path(device):
    hidden, weight, b, labels = batch(torch.float32, bias=True, head_grad=True, seed=6)
    hidden, weight, b = (x.detach().to(device).requires_grad_(True) for x in (hidden, weight, b))
    got, _ = sequence_logps_from_hidden(hidden, weight, labels.to(device), bias=b, chunk_size=5)
    want, _ = plain_sequence_logps(hidden, weight, b, labels.to(device))
    close(got, want, 1e-4)  # TF32 may be on for CUDA matmuls
    for g, w in zip(grads(got, [hidden, weight, b]), grads(want, [hidden, weight, b])):
        close(g, w, 1e-4)


def test_no_grad_forward_keeps_no_graph():
    hidden, weight, b, labels = batch(torch.float32, bias=True, head_grad=False)
    with torch.no_grad():
        got, _ = sequence_logps_from_hidden(hidden, weight, labels, bias=b, chunk_size=4)
    assert got.grad_fn is None
    close(got, plain_sequence_logps(hidden, weight, b, labels)[0].detach(), 1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"chunk_size": 0}, "chunk_size must be >= 1"),
        ({"chunk_size": 4, "temperature": 0.0}, "temperature must be > 0"),
    ],
)
def test_bad_arguments(kwargs, message):
    hidden, weight = torch.randn(3, 2), torch.randn(5, 2)
    with pytest.raises(ValueError, match=message):
        chunked_token_logprobs(hidden, weight, torch.tensor([0, 1, 2]), **kwargs)


def test_bad_shapes():
    with pytest.raises(ValueError, match=r"weight \[V, H\]"):
        chunked_token_logprobs(torch.randn(3, 2), torch.randn(5, 4), torch.tensor([0, 1, 2]), chunk_size=2)
    with pytest.raises(ValueError, match=r"labels must be \[N\]"):
        chunked_token_logprobs(torch.randn(3, 2), torch.randn(5, 2), torch.tensor([0, 1]), chunk_size=2)
    with pytest.raises(ValueError, match=r"bias must be \[V\]"):
        chunked_token_logprobs(torch.randn(3, 2), torch.randn(5, 2), torch.tensor([0, 1, 2]), bias=torch.randn(4), chunk_size=2)
    with pytest.raises(ValueError, match=r"labels \[B, T\]"):
        sequence_logps_from_hidden(torch.randn(2, 3, 4), torch.randn(5, 4), torch.zeros(2, 4, dtype=torch.long), chunk_size=2)
