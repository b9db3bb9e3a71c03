"""Projected gradient descent (Madry et al. 2018, https://arxiv.org/abs/1706.06083)."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from ._common import check_norm, check_precision, eval_mode, forward_at, l2_norms, per_sample, project
from .eps import parse_eps
from .objectives import OBJECTIVES, cross_entropy

Objective = Callable[[Tensor, Tensor], Tensor]
Attack = Callable[[nn.Module, Tensor, Tensor], Tensor]

# Step size of evaluation PGD-k as a fraction of eps (TeCoA's and FARE's evaluation setting): with
# k >= 8 steps the iterate can cross the ball twice, so the attack is not limited by its step size.
EVAL_STEP_FRACTION = 0.25


def pgd(
    model: nn.Module,
    images: Tensor,
    target: Tensor,
    *,
    eps: float | str,
    alpha: float | str | None = None,
    steps: int = 10,
    norm: str = "linf",
    objective: Objective | str = cross_entropy,
    random_start: bool = True,
    descend: bool = False,
    generator: torch.Generator | None = None,
    start_noise_std: float | None = None,
    precision: str = "fp32",
) -> Tensor:
    """PGD on ``objective(model(x'), target)`` within ``||x' - images|| <= eps``, x' in [0, 1].

    Each step, in torchattacks' order: gradient g of the SUMMED objective w.r.t. the
    perturbation; x' += alpha * sign(g) (Linf) or alpha * g / ||g||_2 per sample (L2)
    (minus the step when ``descend=True``); project onto the eps-ball; clamp to [0, 1];
    detach. The start is x' = images, or with ``random_start`` a point drawn from
    ``generator``: uniform in the Linf ball, or a random direction scaled by U(0, 1) * eps
    for L2; or, with ``start_noise_std``, x + std * N(0, I) projected onto the ball (the
    Adv-W2S start x + 0.001 * N(0, I)).

    Args:
        model: maps [B, C, H, W] images in [0, 1] to an output ([B, K] logits or [B, D]
            features). Run in eval mode at ``precision``, whatever autocast the caller set;
            its train/eval flags are restored afterwards and no ``.grad`` is accumulated on
            its parameters.
        images: [B, C, H, W] in [0, 1], any float dtype.
        target: what ``objective`` compares the output with (labels [B], probabilities
            [B, K], features [B, D]).
        eps: budget in pixel units, a number or a string such as "4/255" (0: no attack).
        alpha: step size; default 2.5 * eps / steps (Madry et al.).
        steps: number of gradient steps (0: return the start point).
        norm: "linf" or "l2".
        objective: ``f(output, target) -> scalar`` summed over the batch, or a name in
            ``OBJECTIVES`` ("ce", "kl", "l2").
        random_start: start from a random point in the ball instead of ``images``.
        descend: minimize the objective instead of maximizing it.
        generator: source of the random start. The caller's global RNG is never used; with
            None a fresh generator seeded 0 is used, so pass one generator across calls
            (e.g. each training step) to get a different start each call.
        start_noise_std: if given, start from x + start_noise_std * N(0, I) (projected onto
            the ball, clamped to [0, 1]) instead of the ``random_start`` rule; 0 starts at x.
        precision: of the model's forward passes. "fp32" (autocast off) for evaluations;
            "bf16" (bf16 autocast) for training-time attacks (DESIGN.md section 3). The
            output, the objective and the input gradient are fp32 either way.

    Returns:
        Adversarial images, detached, with the shape and dtype of ``images``.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        >>> x, y = torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
        >>> x_adv = pgd(model, x, y, eps="4/255", steps=5)
        >>> bool((x_adv - x).abs().max() <= 4 / 255 + 1e-6)
        True
    """
    norm = check_norm(norm)
    precision = check_precision(precision)
    eps = parse_eps(eps, upper=1.0 if norm == "linf" else None)
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    alpha = 2.5 * eps / max(steps, 1) if alpha is None else parse_eps(alpha, upper=None)
    if isinstance(objective, str):
        objective = OBJECTIVES[objective]
    if start_noise_std is not None and (not math.isfinite(start_noise_std) or start_noise_std < 0):
        raise ValueError(f"start_noise_std must be a finite number >= 0, got {start_noise_std!r}")
    if eps == 0 or (steps == 0 and not random_start and start_noise_std is None):
        return images.detach().clone()
    if generator is None:
        generator = torch.Generator().manual_seed(0)

    clean = images.detach().to(torch.float32)
    direction = -1.0 if descend else 1.0
    # enable_grad: callers often attack from inside torch.no_grad() (evaluation code).
    with eval_mode(model), torch.enable_grad():
        if start_noise_std is not None:
            adversarial = _noise_start(clean, eps, norm, start_noise_std, generator)
        else:
            adversarial = _random_start(clean, eps, norm, generator) if random_start else clean
        for _ in range(steps):
            adversarial = adversarial.detach().requires_grad_(True)
            loss = objective(forward_at(model, adversarial, precision), target)
            if loss.dim() != 0:
                raise ValueError(f"objective must return a scalar, got shape {tuple(loss.shape)}")
            # Gradient w.r.t. x' equals the gradient w.r.t. the perturbation x' - x;
            # autograd.grad (not backward) leaves the parameters' .grad untouched.
            (grad,) = torch.autograd.grad(loss, adversarial)
            step = _ascent_direction(grad, norm)
            adversarial = project(adversarial.detach() + direction * alpha * step, clean, eps, norm)
    return adversarial.detach().to(images.dtype)


def _random_start(clean: Tensor, eps: float, norm: str, generator: torch.Generator) -> Tensor:
    """A random point of the eps-ball around ``clean``, clamped to [0, 1]."""
    # Drawn on the generator's device, then moved: a CPU generator can drive a GPU attack
    # and gives the same start on either device.
    def draw(sampler, shape):
        return sampler(shape, generator=generator, device=generator.device).to(clean.device)

    if norm == "linf":
        delta = (2 * draw(torch.rand, clean.shape) - 1) * eps
    else:
        direction = draw(torch.randn, clean.shape)
        direction = direction / per_sample(l2_norms(direction).clamp_min(1e-12), direction)
        delta = direction * per_sample(draw(torch.rand, clean.shape[:1]) * eps, direction)
    return project(clean + delta, clean, eps, norm)


def _noise_start(clean: Tensor, eps: float, norm: str, std: float, generator: torch.Generator) -> Tensor:
    """x + std * N(0, I), projected onto the eps-ball and clamped to [0, 1]."""
    if std == 0:
        return clean
    noise = torch.randn(clean.shape, generator=generator, device=generator.device).to(clean.device)
    return project(clean + std * noise, clean, eps, norm)


def _ascent_direction(grad: Tensor, norm: str) -> Tensor:
    """Steepest-ascent unit step: sign(g) for Linf, g / ||g||_2 per sample for L2."""
    if norm == "linf":
        return grad.sign()
    # A sample with zero gradient gets a zero step rather than NaN.
    lengths = l2_norms(grad).clamp_min(torch.finfo(grad.dtype).tiny)
    return grad / per_sample(lengths, grad)


def evaluation_pgd(*, eps: float | str, steps: int, generator: torch.Generator | None = None,
                   norm: str = "linf") -> Attack:
    """PGD-k as evaluations run it: ``attack(model, images, labels) -> adversarial images``.

    Cross-entropy against the labels, step size ``EVAL_STEP_FRACTION * eps`` (eps / 4), one
    random start drawn from ``generator`` (shared across calls, so each batch gets its own start).
    Every evaluation of the project (the eval suite, its audits, the training-time check and the
    world's measurements) attacks through this one function.

    Example:
        >>> attack = evaluation_pgd(eps="4/255", steps=20)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        >>> attack(model, torch.rand(2, 3, 2, 2), torch.tensor([0, 1])).shape
        torch.Size([2, 3, 2, 2])
    """
    eps = parse_eps(eps, upper=1.0 if check_norm(norm) == "linf" else None)

    def attack(model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        return pgd(model, images, labels, eps=eps, alpha=EVAL_STEP_FRACTION * eps, steps=steps, norm=norm,
                   generator=generator)
    return attack
