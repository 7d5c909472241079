"""Process reward model loss: binary cross-entropy on per-step scores (pure functions).

A process reward model (PRM) scores each step of a solution: the scalar head's output at the
step's last token is a logit ``s`` for "this step is correct" (Lightman et al. 2023, "Let's
verify step by step"). The loss is the mean over all steps of the batch of
``BCE(σ(s), y) = -(y · log σ(s) + (1 - y) · log(1 - σ(s)))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: the label value marking a position that is not a step end (as in SFT labels)
NOT_A_STEP = -100


def step_bce_loss(values: torch.Tensor, step_labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """BCE of per-token scores ``values`` [B, T] against ``step_labels`` [B, T].

    ``step_labels`` holds 0 or 1 at each step's last token and :data:`NOT_A_STEP` elsewhere; the
    loss is the mean BCE-with-logits over the labelled positions. Detached 0-dim metrics:

    * ``step_accuracy``: share of steps with ``(s > 0) == y``;
    * ``first_error_accuracy``: share of rows whose predicted first wrong step (the first with
      ``s <= 0``, or none) is the labelled one (the first with ``y = 0``, or none);
    * ``positive_rate``: share of steps labelled 1 (the majority baseline is max(p, 1 - p));
    * ``steps``: number of labelled steps in the batch.
    """
    if values.shape != step_labels.shape:
        raise ValueError(f"values {tuple(values.shape)} and step_labels {tuple(step_labels.shape)} differ in shape")
    mask = step_labels != NOT_A_STEP
    if not bool(mask.any()):
        raise ValueError("step_bce_loss: no labelled step in the batch")
    logits = values[mask].float()
    targets = step_labels[mask].float()
    loss = F.binary_cross_entropy_with_logits(logits, targets)
    with torch.no_grad():
        predicted = (values.float() > 0).long()
        first_hits = []
        for row in range(values.size(0)):
            m = mask[row]
            if not bool(m.any()):
                continue
            first_hits.append(_first_zero(predicted[row][m]) == _first_zero(step_labels[row][m]))
        metrics = {
            "step_accuracy": ((logits > 0).float() == targets).float().mean(),
            "first_error_accuracy": torch.tensor(sum(first_hits) / len(first_hits)),
            "positive_rate": targets.mean(),
            "steps": torch.tensor(float(targets.numel())),
        }
    return loss, metrics


def _first_zero(labels: torch.Tensor) -> int:
    """Index of the first 0 in ``labels`` (a 1-D 0/1 tensor), or its length when there is none."""
    zeros = (labels == 0).nonzero()
    return int(zeros[0, 0]) if zeros.numel() else int(labels.numel())
