"""Helpers shared by the attacks: model mode, forward passes at a precision, norms and projection."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor, nn

NORMS = ("linf", "l2")
# Forward-pass precisions of an attack: "fp32" for evaluations (DESIGN.md section 3); "bf16" for
# training-time attacks, which reach the hardware floor at real scale (issue 12).
PRECISIONS = ("fp32", "bf16")


def check_norm(norm: str) -> str:
    """Return ``norm`` lower-cased ("Linf" -> "linf"); unknown norms raise ValueError."""
    if not isinstance(norm, str) or norm.lower() not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(map(repr, NORMS))}")
    return norm.lower()


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode, then restore every submodule's own flag, even on error.

    Restoring per submodule (not ``model.train(was_training)``) keeps deliberately frozen
    parts, e.g. a BatchNorm held in eval inside a training model, as the caller left them.
    """
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


def check_precision(precision: str) -> str:
    """Return ``precision`` if it is one of ``PRECISIONS``; otherwise raise ValueError naming them."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(map(repr, PRECISIONS))}")
    return precision


def forward_at(model: nn.Module, images: Tensor, precision: str) -> Tensor:
    """``model(images)`` on float32 inputs, returned in float32, whatever autocast the caller set.

    "fp32": autocast off, every operation in fp32. "bf16": under bf16 autocast (matmuls and
    convolutions in bf16, which has fp32's exponent range: no underflow), the output cast to fp32
    before any objective reads it. Either way the input is fp32, so its gradient is fp32.
    """
    with torch.autocast(device_type=images.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        output = model(images.to(torch.float32))
    return output.float()


def per_sample(values: Tensor, like: Tensor) -> Tensor:
    """Reshape a [B] tensor to broadcast over ``like`` of shape [B, ...]."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def l2_norms(tensor: Tensor) -> Tensor:
    """Per-sample L2 norms [B] of a [B, ...] tensor."""
    return tensor.flatten(1).norm(p=2, dim=1)


def project(adversarial: Tensor, images: Tensor, eps: float, norm: str) -> Tensor:
    """Project onto the eps-ball around ``images`` (Linf or per-sample L2), then clamp to [0, 1].

    Clamping after projecting never leaves the ball: it only shrinks each coordinate of the
    perturbation towards zero.
    """
    delta = adversarial - images
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        lengths = l2_norms(delta)
        tiny = torch.finfo(lengths.dtype).tiny
        scale = (eps / lengths.clamp_min(tiny)).clamp(max=1.0)
        delta = delta * per_sample(scale, delta)
    return (images + delta).clamp(0.0, 1.0)
