"""The example plugin's own tests: its loss against a hand-computed value, its registration."""

import math

import torch

from alignx.registry import load_plugins
from alignx_example.objective import brevity, label_smoothed_nll


def test_label_smoothed_nll_matches_hand_computation():
    # one position (after the shift) with uniform logits over 4 classes:
    # NLL = ln 4 whatever the smoothing, because the uniform distribution is the target's mean
    logits = torch.zeros(1, 2, 4)
    labels = torch.tensor([[-100, 2]])
    assert math.isclose(float(label_smoothed_nll(logits, labels, 0.1)), math.log(4), rel_tol=1e-6)
    # peaked logits at position 0 (which predicts labels[1] = 2): p(target)=e^2/(e^2+3); eps=0 is plain NLL
    logits = torch.tensor([[[0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])
    expected = -math.log(math.exp(2) / (math.exp(2) + 3))
    assert math.isclose(float(label_smoothed_nll(logits, labels, 0.0)), expected, rel_tol=1e-6)


def test_brevity():
    assert brevity(["p", "p"], ["", "x" * 20]) == [1.0, 0.5]


def test_registered_through_entry_point():
    registry = load_plugins(reload=True)
    entries = {(e.kind, e.name): e.provider for e in registry.entries()}
    assert entries[("objective", "sft_ls")] == "alignx-example"
    assert entries[("reward", "brevity")] == "alignx-example"
