"""Inverse-adversarial refinement: the Adv-W2S teacher's source guidance refinement step."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._common import eval_mode, forward_at
from .objectives import cross_entropy
from .pgd import pgd


def inverse_adversarial(
    model: nn.Module,
    images: Tensor,
    *,
    eps: float | str,
    alpha: float | str | None = None,
    steps: int = 2,
    generator: torch.Generator | None = None,
    prediction: Tensor | None = None,
    start_noise_std: float | None = None,
    precision: str = "fp32",
) -> Tensor:
    """Move ``images`` TOWARDS the model's own prediction, making it more confident.

    x~ = x + d, d = argmin_{||d||_inf <= eps} CE(softmax(model(x + d)), onehot(argmax model(x)))
    solved by PGD descent (``pgd(..., descend=True)``), i.e. the inverse-adversarial
    refinement of the teacher input in Adv-W2S (DESIGN.md section 4, step 2). The clean
    prediction is taken once, without gradients, in eval mode.

    Args:
        model: maps [B, C, H, W] images in [0, 1] to logits [B, K].
        images: [B, C, H, W] in [0, 1].
        eps: Linf budget in pixel units (number or "1/255"-style string).
        alpha: step size; default 2.5 * eps / steps.
        steps: PGD descent steps.
        generator: source of the random start (see ``pgd``).
        prediction: the model's clean labels [B] if already known (e.g. argmax of cached
            teacher probabilities): saves one forward pass; default argmax model(images).
        start_noise_std: start from x + std * N(0, I) instead of a uniform point (see ``pgd``).
        precision: of the forward passes, "fp32" or "bf16" (see ``pgd``).

    Returns:
        Refined images, detached, shape and dtype of ``images``, within eps of them, in [0, 1].

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        >>> x = torch.rand(4, 3, 2, 2)
        >>> x_tilde = inverse_adversarial(model, x, eps="2/255")
        >>> x_tilde.shape
        torch.Size([4, 3, 2, 2])
    """
    if prediction is None:
        with eval_mode(model), torch.no_grad():
            prediction = forward_at(model, images, precision).argmax(dim=-1)
    return pgd(
        model,
        images,
        prediction,
        eps=eps,
        alpha=alpha,
        steps=steps,
        norm="linf",
        objective=cross_entropy,
        descend=True,
        generator=generator,
        start_noise_std=start_noise_std,
        precision=precision,
    )
