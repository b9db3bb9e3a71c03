"""Tiny models for the attack tests (images 3x8x8, a handful of classes, CPU)."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

SHAPE = (3, 8, 8)
DIM = 3 * 8 * 8


class TwoClassLinear(nn.Module):
    """logits = [w.x, -w.x] on the flattened image: the Linf optimum against label 0 is
    x - eps * sign(w), the L2 optimum x - eps * w / ||w|| (while inside [0, 1])."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("w", w.flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = x.flatten(1) @ self.w
        return torch.stack([score, -score], dim=1)


class Recorder(nn.Module):
    """Wraps a model and records, per forward call, what the wrapped model saw."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls: list[dict] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(
            {
                "training": self.training,
                "dtype": x.dtype,
                "autocast": torch.is_autocast_enabled(x.device.type),
                "min": float(x.detach().min()) if x.numel() else 0.0,
                "max": float(x.detach().max()) if x.numel() else 0.0,
            }
        )
        return self.model(x)


def mlp(n_classes: int, seed: int = 0, hidden: int = 16, scale: float = 1.0) -> nn.Module:
    """A small tanh MLP with weights drawn from its own generator (not the global RNG)."""
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(DIM, hidden), nn.Tanh(), nn.Linear(hidden, n_classes)
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            fan_in = parameter.shape[-1] if parameter.dim() > 1 else hidden
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale * 3 / fan_in**0.5)
    return model.eval()


def images(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.rand((batch, *SHAPE), generator=torch.Generator().manual_seed(seed))


def two_class_weights(seed: int = 0, scale: float = 0.1) -> torch.Tensor:
    return torch.randn(DIM, generator=torch.Generator().manual_seed(seed)) * scale


@pytest.fixture(scope="session")
def tm():
    """Namespace of model/data factories shared by the attack tests."""
    return types.SimpleNamespace(
        SHAPE=SHAPE, DIM=DIM, TwoClassLinear=TwoClassLinear, Recorder=Recorder, mlp=mlp,
        images=images, two_class_weights=two_class_weights, Quantized=Quantized,
    )


@pytest.fixture(autouse=True)
def _single_thread(single_thread):
    yield


class Quantized(nn.Module):
    """Gradient masking: rounds pixels to 5 levels before ``model``, so every input gradient
    is zero. Gradient attacks (APGD, FAB) stall; the black-box Square attack does not."""

    def __init__(self, model: nn.Module, levels: int = 4) -> None:
        super().__init__()
        self.model, self.levels = model, levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * self.levels) / self.levels)
