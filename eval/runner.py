"""The adversarial evaluation runner: clean and robust accuracy per attack and epsilon, with audits.

For every benchmark: each batch is classified clean, then attacked by every (epsilon, attack).
Each attack's robust accuracy is its own: clean-correct and correct on its adversarial image, as
the runner classifies it. The worst case at an epsilon counts a sample only if it is correct clean
*and* under every attack run at that epsilon or a smaller one (per sample: an adversarial example
of a smaller ball lies in the larger one). Audits (``audits.py``) run on the same samples.
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

AUTOATTACK_VERSIONS = {"apgd-ce": "apgd-ce", "apgd": "apgd", "autoattack": "standard"}


@dataclass(frozen=True)
class EvalSettings:
    attacks: tuple[str, ...]          # among "pgd", "apgd-ce", "apgd", "autoattack", in this order
    eps: tuple[float, ...]            # Linf radii in [0, 1] pixel units
    pgd_steps: int = 10               # k of PGD-k (evaluation_pgd: step size eps / 4, one random start)
    n_samples: int | None = None      # seeded random subset of the split (None: all of it)
    seed: int = 0                     # seed of the subset, PGD starts and AutoAttack restarts
    batch_size: int = 128             # images per attacked batch
    audit_samples: int = 256          # samples used by the gradient and large-eps audits
    norm: str = "linf"                # threat model (the audits assume Linf)
    cascade: bool = False             # each attack after the first runs only on the samples every earlier
    # attack at that eps left robust (AutoAttack's own rule between its attacks): its robust_acc is then
    # the worst case of it and every earlier attack, at a fraction of the cost


def _attack(name: str, classifier, pixels, labels, *, eps: float, settings: EvalSettings,
            generator: torch.Generator, n_classes: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(adversarial images [B, C, H, W], the attack's own claim of which samples stay robust: bool [B],
    None for PGD, which claims nothing). Only the images count; the runner classifies them itself."""
    if name == "pgd":
        attack = evaluation_pgd(eps=eps, steps=settings.pgd_steps, norm=settings.norm, generator=generator)
        return attack(classifier, pixels, labels), None
    result = autoattack(classifier, pixels, labels, eps=eps, norm=settings.norm, n_classes=n_classes,
                        version=AUTOATTACK_VERSIONS[name], seed=settings.seed)
    return result.adversarial, result.robust


def _cascaded(name: str, classifier, pixels, labels, previous, **keywords) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``_attack`` on the samples the previous attack left robust; elsewhere its adversarial images stay."""
    adversarial, alive = previous[0].clone(), previous[1]
    if not alive.any():
        return adversarial, None
    found, claimed = _attack(name, classifier, pixels[alive], labels[alive], **keywords)
    adversarial[alive] = found
    if claimed is None:
        return adversarial, None
    claimed_robust = torch.zeros_like(alive)
    claimed_robust[alive] = claimed
    return adversarial, claimed_robust


@torch.no_grad()
def _correct(classifier, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """bool [B]: the classifier's fp32 prediction (autocast off) on ``pixels`` equals ``labels``."""
    with torch.autocast(device_type=pixels.device.type, enabled=False):
        return classifier(pixels.float()).float().argmax(1) == labels


def evaluate_benchmark(classifier: ZeroShotClassifier, dataset, benchmark: Benchmark, *, transform,
                       settings: EvalSettings, device: str = "cpu", image_column: str | None = None,
                       bad_images: BadImages | None = None) -> dict:
    """Clean accuracy, robust accuracy per (attack, eps), worst case per eps and the audits.

    A sample is robust under an attack iff it is clean-correct and the runner's own fp32 forward
    pass classifies the attack's returned image correctly: an attack's claims of success are never
    trusted (their disagreements with the runner are reported in the ``nested`` audit's detail).
    """
    n_classes = len(benchmark.classnames)
    clean, robust = [], defaultdict(list)
    distance = defaultdict(lambda: [float("-inf"), float("inf"), float("-inf")])  # gap, min, max
    seconds, unconfirmed = defaultdict(float), defaultdict(int)
    generators = {key: torch.Generator(device).manual_seed(settings.seed)
                  for key in [*settings.eps, audits.LARGE_EPS]}
    audited, gradient_ok, large_eps_correct = 0, 0, defaultdict(int)
    batches = iterate_batches(dataset, transform, settings.batch_size,
                              image_column=image_column or benchmark.image_column or "image",
                              labels=benchmark.labels, bad_images=bad_images)
    progress = tqdm(batches, total=-(-len(dataset) // settings.batch_size), unit="batch",
                    desc=f"{benchmark.name}", leave=False)
    for pixels, labels in progress:
        pixels, labels = pixels.to(device), labels.to(device)
        clean_correct = _correct(classifier, pixels, labels)
        clean.append(clean_correct.cpu())
        for eps in settings.eps:
            previous = None  # (adversarial images, robust mask) of the attack before, for the cascade
            for name in settings.attacks:
                started = time.perf_counter()
                if settings.cascade and previous is not None:
                    adversarial, claimed_robust = _cascaded(name, classifier, pixels, labels, previous, eps=eps,
                                                            settings=settings, generator=generators[eps],
                                                            n_classes=n_classes)
                else:
                    adversarial, claimed_robust = _attack(name, classifier, pixels, labels, eps=eps,
                                                          settings=settings, generator=generators[eps],
                                                          n_classes=n_classes)
                robust_mask = clean_correct & _correct(classifier, adversarial, labels)
                previous = adversarial, robust_mask
                seconds[name, eps] += time.perf_counter() - started
                robust[name, eps].append(robust_mask.cpu())
                if claimed_robust is not None:
                    unconfirmed[name, eps] += (robust_mask & ~claimed_robust).sum().item()
                gap = (adversarial - pixels).abs().flatten(1).amax(1).max().item() - eps
                stats = distance[name, eps]
                stats[:] = [max(stats[0], gap), min(stats[1], adversarial.min().item()),
                            max(stats[2], adversarial.max().item())]
        if audited < settings.audit_samples:
            take = slice(0, settings.audit_samples - audited)
            part_pixels, part_labels = pixels[take], labels[take]
            gradient_ok += audits.nonzero_gradient_mask(classifier, part_pixels, part_labels).sum().item()
            # Every attack of the evaluation, not only PGD, must break the images at 32/255: an attack
            # that does nothing (or is masked) keeps them and fails its own row's audit.
            for name in settings.attacks:
                broken, _ = _attack(name, classifier, part_pixels, part_labels, eps=audits.LARGE_EPS,
                                    settings=settings, generator=generators[audits.LARGE_EPS], n_classes=n_classes)
                large_eps_correct[name] += _correct(classifier, broken, part_labels).sum().item()
            audited += len(part_labels)
    clean_mask = torch.cat(clean)
    masks = {key: torch.cat(value) for key, value in robust.items()}
    shared = [audits.nonzero_gradients(gradient_ok / audited)]
    large_eps = {name: audits.large_eps_breaks(large_eps_correct[name], audited, n_classes, attack=name)
                 for name in settings.attacks}
    return _summarize(clean_mask, masks, distance=distance, seconds=seconds, unconfirmed=unconfirmed,
                      settings=settings, shared=shared, large_eps=large_eps)


def worst_case(clean_mask: torch.Tensor, masks: dict[tuple[str, float], torch.Tensor]) -> dict[float, torch.Tensor]:
    """eps -> bool [N]: clean-correct and robust under every attack at eps and at every smaller radius.

    An adversarial example found at a smaller radius also lies in every larger ball, so it counts
    there too: the worst case never rises with eps, per sample.
    """
    worst, carried = {}, clean_mask
    for eps in sorted({eps for _, eps in masks}):
        for (_, radius), mask in masks.items():
            if radius == eps:
                carried = carried & mask
        worst[eps] = carried
    return worst


def _summarize(clean_mask, masks, *, distance, seconds, unconfirmed, settings: EvalSettings,
               shared: list[audits.Audit], large_eps: dict[str, audits.Audit]) -> dict:
    """The result rows: each attack's own robust accuracy, the worst case per eps and every audit."""
    worst = worst_case(clean_mask, masks)
    shared = [audits.monotone_in_eps(clean_mask, masks, worst), *shared]
    per_eps = {eps: audits.nested(clean_mask, {name: masks[name, eps] for name in settings.attacks},
                                  {name: unconfirmed[name, eps] for name in settings.attacks})
               for eps in settings.eps}
    rows = []
    for eps in settings.eps:
        for name in settings.attacks:
            gap, low, high = distance[name, eps]
            row_audits = [audits.in_threat_model(gap, low, high, eps), per_eps[eps], large_eps[name], *shared]
            rows.append({"attack": name, "eps": eps, "robust_acc": masks[name, eps].float().mean().item(),
                         "worst_case_acc": worst[eps].float().mean().item(), "seconds": seconds[name, eps],
                         "audits": {a.name: a.to_dict() for a in row_audits}})
    return {"clean_acc": clean_mask.float().mean().item(), "n_samples": len(clean_mask), "rows": rows,
            "settings": asdict(settings)}
