"""Soundness audits: checks that a robustness number comes from a sound attack and sound bookkeeping.

A robust accuracy that comes from a weak or masked attack looks like success, so every evaluation
runs these and reports them; a failure makes ``robust-w2s eval`` exit 1. Each audit is an invariant
that a sound evaluation cannot fail (``large_eps_breaks``, the one statistical audit, fails a sound
one with probability below ``FALSE_ALARM_BOUND``) and that a broken attack or broken bookkeeping
does fail. Where attacks or radii disagree per sample, which sound attacks do (they start from
different points), the disagreement is information in the detail text, never a failure.
Each audit returns an :class:`Audit` (name, passed, one-line detail).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

TOLERANCE = 1e-6          # float slack on the epsilon-ball and [0, 1] bounds
MIN_NONZERO_GRADIENTS = 0.99
LARGE_EPS = 32 / 255      # an Linf budget at which any image classifier should be broken
FALSE_ALARM_BOUND = 1e-6  # large_eps_breaks fails an attack that reaches chance with at most this probability
STRENGTH_ORDER = ("pgd", "apgd", "autoattack")  # weaker to stronger, for the information on disagreements


@dataclass(frozen=True)
class Audit:
    name: str
    passed: bool
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


def _eps(eps: float) -> str:
    return f"{255 * eps:g}/255"


def in_threat_model(max_distance_over_eps: float, min_pixel: float, max_pixel: float, eps: float) -> Audit:
    """Every adversarial example within the Linf ball of radius eps and inside [0, 1]."""
    passed = max_distance_over_eps <= TOLERANCE and min_pixel >= -TOLERANCE and max_pixel <= 1 + TOLERANCE
    return Audit("in_threat_model", passed,
                 f"max ||x'-x||_inf - eps = {max_distance_over_eps:.2e}, pixels in [{min_pixel:.4f}, {max_pixel:.4f}]")


def nested(clean_correct: torch.Tensor, robust_by_attack: dict[str, torch.Tensor],
           unconfirmed_claims: dict[str, int] | None = None) -> Audit:
    """Per sample and attack at one eps: robust under the attack => clean-correct.

    ``clean_correct`` and every ``robust_by_attack[name]`` are bool [N] over the same samples.
    Information only (sound attacks disagree per sample): how many samples each stronger attack
    of ``STRENGTH_ORDER`` left robust that a weaker one broke, and ``unconfirmed_claims``: per
    attack, samples it reported broken whose returned image the runner found still correct
    (counted robust: the runner's own forward pass decides).
    """
    run = [a for a in STRENGTH_ORDER if a in robust_by_attack]
    run += sorted(set(robust_by_attack) - set(run))
    violations = [f"{count} {attack}-robust but clean-wrong" for attack in run
                  if (count := int((robust_by_attack[attack] & ~clean_correct).sum()))]
    notes = [f"{stronger} left {count} robust that {weaker} broke"
             for i, weaker in enumerate(run) for stronger in run[i + 1:]
             if (count := int((robust_by_attack[stronger] & ~robust_by_attack[weaker]).sum()))]
    notes += [f"{attack}: {count} claimed successes not confirmed (counted robust)"
              for attack, count in (unconfirmed_claims or {}).items() if count]
    holds = f"holds for every sample and attack ({', '.join(run)})"
    detail = "robust => clean-correct: " + ("; ".join(violations) or holds)
    return Audit("nested", not violations, detail + (f"; information: {'; '.join(notes)}" if notes else ""))


def monotone_in_eps(clean_correct: torch.Tensor, robust: dict[tuple[str, float], torch.Tensor],
                    worst: dict[float, torch.Tensor]) -> Audit:
    """The worst case at each eps is exactly: clean-correct and robust under every attack at every radius <= eps.

    An adversarial example found at a smaller radius lies in every larger ball, so the reported
    worst case counts it; the curve of worst-case accuracies is then non-increasing per sample, by
    construction, and this audit checks that bookkeeping. ``robust[attack, eps]`` and ``worst[eps]``
    are bool [N] over the samples of ``clean_correct``. Information only: samples every attack at an
    eps left robust that a smaller radius broke (sound attacks from different starts do that).
    """
    violations, notes = [], []
    for eps in sorted(worst):
        own = clean_correct.clone()
        for (_, radius), mask in robust.items():
            if radius == eps:
                own &= mask
        expected = own.clone()
        for (_, radius), mask in robust.items():
            if radius < eps:
                expected &= mask
        if count := int((worst[eps] & ~expected).sum()):
            violations.append(f"{count} counted robust at {_eps(eps)} but clean-wrong or broken at <= {_eps(eps)}")
        if count := int((expected & ~worst[eps]).sum()):
            violations.append(f"{count} counted broken at {_eps(eps)} that no attack at <= {_eps(eps)} broke")
        if count := int((own & ~expected).sum()):
            notes.append(f"{count} kept by every attack at {_eps(eps)} but broken at a smaller radius")
    curve = ", ".join(f"{_eps(eps)}: {100 * mask.float().mean().item():.1f}%" for eps, mask in sorted(worst.items()))
    detail = f"worst case over attacks and radii <= eps: {curve}"
    detail += f"; {'; '.join(violations)}" if violations else ""
    return Audit("monotone_in_eps", not violations, detail + (f"; information: {'; '.join(notes)}" if notes else ""))


def binomial_tails(n: int, p: float) -> list[float]:
    """[P(X >= k) for k in 0..n] for X ~ Binomial(n, p), 0 < p < 1: exact up to float rounding
    (terms summed in log space, so any n)."""
    log_pmf = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p)
               + (n - i) * math.log1p(-p) for i in range(n + 1)]
    top = max(log_pmf)
    tails, running = [0.0] * (n + 1), 0.0
    for k in range(n, -1, -1):
        running += math.exp(log_pmf[k] - top)
        tails[k] = min(1.0, math.exp(top) * running)
    return tails


def large_eps_breaks(correct: int, n: int, n_classes: int, attack: str = "pgd") -> Audit:
    """The attack at 32/255 takes accuracy to chance or below: a one-sided binomial test.

    ``correct`` of ``n`` audited images stay correct under ``attack`` at ``LARGE_EPS`` (each
    evaluated attack is audited so, so that one that does nothing fails its own row). An attack that
    works leaves each image correct with probability at most chance = 1 / n_classes, so it keeps
    ``correct`` or more with probability at most P(X >= correct), X ~ Binomial(n, chance); the
    audit fails when that is below ``FALSE_ALARM_BOUND``. A masked attack that keeps most images
    fails it; with few images and few classes no count may be extreme enough (the detail says so).
    """
    chance = 1 / n_classes
    tails = binomial_tails(n, chance)
    critical = next((k for k, tail in enumerate(tails) if tail < FALSE_ALARM_BOUND), None)
    rule = f"fails at >= {critical}" if critical is not None else f"cannot fail with {n} images"
    return Audit("large_eps_breaks", tails[correct] >= FALSE_ALARM_BOUND,
                 f"{attack} at {_eps(LARGE_EPS)} kept {correct}/{n} correct (chance {100 * chance:.1f}%): "
                 f"P(>= {correct} | chance) = {tails[correct]:.2g}; {rule} (false-alarm bound {FALSE_ALARM_BOUND:g})")


def nonzero_gradients(fraction: float) -> Audit:
    """Input gradients of the logit margin must be non-zero: zero means locally constant logits (masking)."""
    return Audit("nonzero_gradients", fraction >= MIN_NONZERO_GRADIENTS,
                 f"{100 * fraction:.1f}% of samples have a non-zero input gradient of the logit margin")


def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logit_y - max_{j != y} logit_j, [B] from logits [B, K] and int labels [B]."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return true - others.amax(dim=1)


def nonzero_gradient_mask(classifier: nn.Module, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """bool [B]: whether d margin / d pixels is non-zero per sample (fp32, autocast off).

    The margin, not the cross-entropy: with a large logit scale (CLIP's is 100) the fp32 softmax
    of a confident sample is exactly one-hot, so the cross-entropy's gradient is exactly zero on
    a smooth model. The margin's gradient is zero only where the logits are locally constant in
    the input, which is what gradient masking is.
    """
    pixels = pixels.detach().float().requires_grad_(True)
    with torch.autocast(device_type=pixels.device.type, enabled=False), torch.enable_grad():
        total = margin(classifier(pixels).float(), labels).sum()
        (gradient,) = torch.autograd.grad(total, pixels)
    return gradient.flatten(1).abs().amax(dim=1) > 0
