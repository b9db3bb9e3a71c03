"""The adversarial evaluation runner: clean and robust accuracy per attack and epsilon, with audits.

For every benchmark: each batch is classified clean, then attacked by every (epsilon, attack);
a sample counts as robust at an epsilon only if it is correct clean *and* under every attack run
(per-sample worst case). Audits (``audits.py``) run on the same samples.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from robust_w2s.attacks import autoattack, evaluation_pgd
from robust_w2s.data import BadImages, iterate_batches
from robust_w2s.zeroshot import ZeroShotClassifier

from . import audits
from .registry import Benchmark

AUTOATTACK_VERSIONS = {"apgd": "apgd", "autoattack": "standard"}


@dataclass(frozen=True)
class EvalSettings:
    attacks: tuple[str, ...]          # among "pgd", "apgd", "autoattack"
    eps: tuple[float, ...]            # Linf radii in [0, 1] pixel units
    pgd_steps: int = 10               # k of PGD-k (evaluation_pgd: step size eps / 4, one random start)
    n_samples: int | None = None      # seeded random subset of the split (None: all of it)
    seed: int = 0                     # seed of the subset, PGD starts and AutoAttack restarts
    batch_size: int = 128             # images per attacked batch
    audit_samples: int = 256          # samples used by the gradient and large-eps audits
    norm: str = "linf"                # threat model (the audits assume Linf)


def _attack(name: str, classifier, pixels, labels, *, clean_correct, eps: float, settings: EvalSettings,
            generator: torch.Generator, n_classes: int):
    """(adversarial images, robust mask) of one attack on one batch."""
    if name == "pgd":
        attack = evaluation_pgd(eps=eps, steps=settings.pgd_steps, norm=settings.norm, generator=generator)
        adversarial = attack(classifier, pixels, labels)
        with torch.no_grad():
            return adversarial, clean_correct & (classifier(adversarial).argmax(1) == labels)
    result = autoattack(classifier, pixels, labels, eps=eps, norm=settings.norm, n_classes=n_classes,
                        version=AUTOATTACK_VERSIONS[name], seed=settings.seed)
    return result.adversarial, result.robust


def evaluate_benchmark(classifier: ZeroShotClassifier, dataset, benchmark: Benchmark, *, transform,
                       settings: EvalSettings, device: str = "cpu", image_column: str | None = None,
                       bad_images: BadImages | None = None) -> dict:
    """Clean accuracy, robust accuracy per (attack, eps), worst case per eps and the audits."""
    n_classes = len(benchmark.classnames)
    clean, robust = [], defaultdict(list)
    distance = defaultdict(lambda: [float("-inf"), float("inf"), float("-inf")])  # gap, min, max
    seconds = defaultdict(float)
    generators = {key: torch.Generator(device).manual_seed(settings.seed)
                  for key in [*settings.eps, audits.LARGE_EPS]}
    audited, gradient_ok, large_eps_correct = 0, 0, 0
    batches = iterate_batches(dataset, transform, settings.batch_size,
                              image_column=image_column or benchmark.image_column or "image",
                              labels=benchmark.labels, bad_images=bad_images)
    progress = tqdm(batches, total=-(-len(dataset) // settings.batch_size), unit="batch",
                    desc=f"{benchmark.name}", leave=False)
    for pixels, labels in progress:
        pixels, labels = pixels.to(device), labels.to(device)
        with torch.no_grad():
            clean_correct = classifier(pixels).argmax(1) == labels
        clean.append(clean_correct.cpu())
        for eps in settings.eps:
            for name in settings.attacks:
                started = time.perf_counter()
                adversarial, robust_mask = _attack(name, classifier, pixels, labels, clean_correct=clean_correct,
                                                   eps=eps, settings=settings, generator=generators[eps],
                                                   n_classes=n_classes)
                seconds[name, eps] += time.perf_counter() - started
                robust[name, eps].append(robust_mask.cpu())
                gap = (adversarial - pixels).abs().flatten(1).amax(1).max().item() - eps
                stats = distance[name, eps]
                stats[:] = [max(stats[0], gap), min(stats[1], adversarial.min().item()),
                            max(stats[2], adversarial.max().item())]
        if audited < settings.audit_samples:
            take = slice(0, settings.audit_samples - audited)
            part_pixels, part_labels = pixels[take], labels[take]
            gradient_ok += audits.nonzero_gradient_mask(classifier, part_pixels, part_labels).sum().item()
            broken = evaluation_pgd(eps=audits.LARGE_EPS, steps=settings.pgd_steps,
                                    generator=generators[audits.LARGE_EPS])(classifier, part_pixels, part_labels)
            with torch.no_grad():
                large_eps_correct += (classifier(broken).argmax(1) == part_labels).sum().item()
            audited += len(part_labels)
    clean_mask = torch.cat(clean)
    masks = {key: torch.cat(value) for key, value in robust.items()}
    return _summarize(clean_mask, masks, distance=distance, seconds=seconds, settings=settings, n_classes=n_classes,
                      gradient_fraction=gradient_ok / audited, large_eps_acc=large_eps_correct / audited)


def _summarize(clean_mask, masks, *, distance, seconds, settings: EvalSettings, n_classes: int,
               gradient_fraction: float, large_eps_acc: float) -> dict:
    worst = {eps: clean_mask.clone() for eps in settings.eps}
    for (name, eps), mask in masks.items():
        worst[eps] &= mask
    worst_acc = {eps: mask.float().mean().item() for eps, mask in worst.items()}
    shared = [audits.monotone_in_eps(worst_acc), audits.nonzero_gradients(gradient_fraction),
              audits.large_eps_breaks(large_eps_acc, n_classes)]
    per_eps = {eps: audits.nested(clean_mask, {name: masks[name, eps] for name in settings.attacks})
               for eps in settings.eps}
    rows = []
    for eps in settings.eps:
        for name in settings.attacks:
            gap, low, high = distance[name, eps]
            row_audits = [audits.in_threat_model(gap, low, high, eps), per_eps[eps], *shared]
            rows.append({"attack": name, "eps": eps, "robust_acc": masks[name, eps].float().mean().item(),
                         "worst_case_acc": worst_acc[eps], "seconds": seconds[name, eps],
                         "audits": {a.name: a.to_dict() for a in row_audits}})
    return {"clean_acc": clean_mask.float().mean().item(), "n_samples": len(clean_mask), "rows": rows,
            "settings": asdict(settings)}
