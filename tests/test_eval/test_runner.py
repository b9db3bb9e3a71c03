
import datasets
import numpy as np
import pytest
import torch
from torch import nn

from robust_w2s.eval import audits
from robust_w2s.eval.registry import Benchmark
from robust_w2s.eval.runner import EvalSettings, evaluate_benchmark
from torchvision.transforms import ToTensor

N_CLASSES = 4


class Linear(nn.Module):
    """A linear classifier on 8x8 images whose class k prefers brightness pattern k."""

    def __init__(self, masked: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.weight = nn.Parameter(torch.randn(3 * 8 * 8, N_CLASSES))
        self.masked = masked

    def forward(self, pixels):
        if self.masked:  # quantizing the input has zero gradient almost everywhere
            pixels = torch.round(pixels * 4) / 4
        return 20 * pixels.flatten(1) @ self.weight / 8


def _dataset(model, n=48):
    """Images the model classifies confidently, labelled with its own prediction."""
    generator = torch.Generator().manual_seed(1)
    pixels = torch.rand(n, 3, 8, 8, generator=generator)
    with torch.no_grad():
        labels = model(pixels).argmax(1)
    images = [(p.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for p in pixels]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=N_CLASSES)})
    return datasets.Dataset.from_dict({"image": images, "label": labels.tolist()}, features=features)


BENCHMARK = Benchmark("toy", "local:/nowhere", "test", tuple(f"c{k}" for k in range(N_CLASSES)), ("a {}.",))


def _run(model, attacks=("pgd", "apgd"), eps=(1 / 255, 8 / 255)):
    settings = EvalSettings(attacks=attacks, eps=eps, pgd_steps=10, batch_size=16, audit_samples=32)
    return evaluate_benchmark(model, _dataset(Linear()), BENCHMARK, transform=ToTensor(), settings=settings)


def _audits(result):
    return {name: audit["passed"] for row in result["rows"] for name, audit in row["audits"].items()}


def test_sound_model_passes_every_audit_and_loses_accuracy():
    result = _run(Linear())
    assert all(_audits(result).values()), _audits(result)
    assert result["clean_acc"] > 0.9  # labels are the clean predictions, up to uint8 rounding
    worst = {row["eps"]: row["worst_case_acc"] for row in result["rows"]}
    assert worst[8 / 255] < worst[1 / 255] <= result["clean_acc"]


def test_worst_case_is_at_most_every_single_attack():
    for row in _run(Linear())["rows"]:
        assert row["worst_case_acc"] <= row["robust_acc"] + 1e-12


def test_masked_gradients_are_flagged():
    result = _run(Linear(masked=True), attacks=("pgd",), eps=(1 / 255,))
    flags = _audits(result)
    assert not flags["nonzero_gradients"]
    assert not flags["large_eps_breaks"], "a masked model keeps its accuracy at 32/255"


def test_monotone_audit_catches_a_rise():
    assert audits.monotone_in_eps({1 / 255: 0.5, 2 / 255: 0.4}).passed
    assert not audits.monotone_in_eps({1 / 255: 0.4, 2 / 255: 0.5}).passed


def test_nested_audit_catches_each_broken_implication():
    clean = torch.tensor([True, True, False])
    good = {"pgd": torch.tensor([True, False, False]), "autoattack": torch.tensor([True, False, False])}
    assert audits.nested(clean, good).passed
    stronger_not_weaker = {"pgd": torch.tensor([False, False, False]), "autoattack": torch.tensor([True, False, False])}
    assert not audits.nested(clean, stronger_not_weaker).passed
    robust_but_wrong = {"pgd": torch.tensor([True, False, True])}
    assert not audits.nested(clean, robust_but_wrong).passed


def test_threat_model_audit_bounds():
    assert audits.in_threat_model(0.0, 0.0, 1.0, 4 / 255).passed
    assert not audits.in_threat_model(1e-3, 0.0, 1.0, 4 / 255).passed
    assert not audits.in_threat_model(0.0, -0.01, 1.0, 4 / 255).passed
