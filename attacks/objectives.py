"""Attack objectives: ``objective(output, target) -> scalar``, SUMMED over the batch.

The sum (not the mean) keeps each sample's gradient independent of the batch size: with a
mean, per-sample gradients shrink by 1/B and can underflow to zero in low precision, which
makes a model look robust when the attack simply received no signal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._registry import Registry


def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Summed cross-entropy ``sum_b -sum_k q_bk log softmax(logits_b)_k``.

    ``logits``: [B, K] (any real values). ``target``: int64 labels [B] (q = one-hot) or
    probabilities [B, K] (soft labels, e.g. a teacher's softmax; rows sum to 1).
    Returns a float32 scalar.

    >>> cross_entropy(torch.zeros(3, 2), torch.tensor([0, 1, 0]))  # 3 * log 2
    tensor(2.0794)
    """
    logits = logits.float()
    if target.dim() == 1 and not target.is_floating_point():
        return F.cross_entropy(logits, target, reduction="sum")
    if target.shape != logits.shape:
        raise ValueError(
            f"cross_entropy target must be labels [B] or probabilities {tuple(logits.shape)}, "
            f"got {tuple(target.shape)} ({target.dtype})"
        )
    return -(target.float() * F.log_softmax(logits, dim=-1)).sum()


def kl_divergence(logits: Tensor, target_probs: Tensor) -> Tensor:
    """Summed ``sum_b KL(q_b || softmax(logits_b))`` (PMG-AFT's consistency terms).

    ``logits``: [B, K]; ``target_probs``: [B, K] probabilities (zeros allowed: 0 log 0 = 0).
    Returns a float32 scalar >= 0, zero when softmax(logits) == q.

    >>> kl_divergence(torch.zeros(2, 4), torch.full((2, 4), 0.25)).abs() < 1e-6
    tensor(True)
    """
    if target_probs.shape != logits.shape:
        raise ValueError(
            f"kl_divergence target must have shape {tuple(logits.shape)}, "
            f"got {tuple(target_probs.shape)}"
        )
    log_probs = F.log_softmax(logits.float(), dim=-1)
    return F.kl_div(log_probs, target_probs.float(), reduction="sum")


def feature_distance(features: Tensor, target_features: Tensor) -> Tensor:
    """Summed squared L2 distance ``sum_b ||f_b - t_b||_2^2`` (FARE, Schlarmann et al. 2024).

    ``features``, ``target_features``: [B, D] embeddings (unnormalized, any real values).
    Returns a float32 scalar.

    >>> feature_distance(torch.ones(2, 3), torch.zeros(2, 3))
    tensor(6.)
    """
    if target_features.shape != features.shape:
        raise ValueError(
            f"feature_distance target must have shape {tuple(features.shape)}, "
            f"got {tuple(target_features.shape)}"
        )
    return (features.float() - target_features.float()).pow(2).sum()


OBJECTIVES = Registry(
    "objective", {"ce": cross_entropy, "kl": kl_divergence, "l2": feature_distance}
)
"""Objectives by config name; an unknown name raises ValueError listing the valid ones."""
