"""Soundness audits: checks that a robustness number comes from a sound attack.

A robust accuracy that comes from a weak or masked attack looks like success, so every
evaluation runs these and reports them; a failure makes ``robust-w2s eval`` exit 1.
Each audit returns an :class:`Audit` (name, passed, one-line detail).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

TOLERANCE = 1e-6          # float slack on the epsilon-ball and [0, 1] bounds
MIN_NONZERO_GRADIENTS = 0.99
LARGE_EPS = 32 / 255      # an Linf budget at which any image classifier should be broken
CHANCE_MARGIN = 0.10      # "about chance": at most chance + 10 points at LARGE_EPS
STRENGTH_ORDER = ("pgd", "apgd", "autoattack")  # each later attack should be at least as strong


@dataclass(frozen=True)
class Audit:
    name: str
    passed: bool
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


def in_threat_model(max_distance_over_eps: float, min_pixel: float, max_pixel: float, eps: float) -> Audit:
    """Every adversarial example within the Linf ball of radius eps and inside [0, 1]."""
    passed = max_distance_over_eps <= TOLERANCE and min_pixel >= -TOLERANCE and max_pixel <= 1 + TOLERANCE
    return Audit("in_threat_model", passed,
                 f"max ||x'-x||_inf - eps = {max_distance_over_eps:.2e}, pixels in [{min_pixel:.4f}, {max_pixel:.4f}]")


def monotone_in_eps(accuracy_by_eps: dict[float, float]) -> Audit:
    """Robust accuracy must not increase with epsilon (a larger ball contains the smaller)."""
    ordered = sorted(accuracy_by_eps.items())
    rises = [(a, b) for (a, acc_a), (b, acc_b) in zip(ordered, ordered[1:]) if acc_b > acc_a + 1e-12]
    detail = ", ".join(f"{255 * e:g}/255: {100 * acc:.1f}%" for e, acc in ordered)
    return Audit("monotone_in_eps", not rises, detail + (f"; rises after {255 * rises[0][0]:g}/255" if rises else ""))


def nested(clean_correct: torch.Tensor, robust_by_attack: dict[str, torch.Tensor]) -> Audit:
    """Per sample: robust under a stronger attack => robust under a weaker one => clean-correct."""
    run = [a for a in STRENGTH_ORDER if a in robust_by_attack]
    violations = []
    for attack in run:
        count = (robust_by_attack[attack] & ~clean_correct).sum().item()
        if count:
            violations.append(f"{count} {attack}-robust but clean-wrong")
    for weaker, stronger in zip(run, run[1:]):
        count = (robust_by_attack[stronger] & ~robust_by_attack[weaker]).sum().item()
        if count:
            violations.append(f"{count} {stronger}-robust but not {weaker}-robust")
    chain = " => ".join(list(reversed(run)) + ["clean"])
    return Audit("nested", not violations, f"{chain}: " + ("; ".join(violations) or "holds for every sample"))


def large_eps_breaks(accuracy: float, n_classes: int) -> Audit:
    """At eps = 32/255 an attack that works takes accuracy to about chance or below."""
    chance = 1 / n_classes
    return Audit("large_eps_breaks", accuracy <= chance + CHANCE_MARGIN,
                 f"PGD accuracy at {255 * LARGE_EPS:g}/255 = {100 * accuracy:.1f}% (chance {100 * chance:.1f}%)")


def nonzero_gradients(fraction: float) -> Audit:
    """Input gradients of the loss must be non-zero: zero gradients mean a masked attack."""
    return Audit("nonzero_gradients", fraction >= MIN_NONZERO_GRADIENTS,
                 f"{100 * fraction:.1f}% of samples have a non-zero input gradient")


def nonzero_gradient_mask(classifier: nn.Module, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """bool [B]: whether d CE / d pixels is non-zero per sample (fp32, eval mode)."""
    pixels = pixels.detach().float().requires_grad_(True)
    with torch.autocast(device_type=pixels.device.type, enabled=False):
        loss = F.cross_entropy(classifier(pixels).float(), labels, reduction="sum")
    (gradient,) = torch.autograd.grad(loss, pixels)
    return gradient.flatten(1).abs().amax(dim=1) > 0
