"""The inputs a method may declare (``methods.INPUTS``), computed lazily for one training step.

The loop builds one :class:`StepInputs` per step and hands it to the method's loss; each input
is computed on first access, at most once, and only if the method declared it, so a method
pays for exactly what it uses and cannot read what it did not declare.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor, nn

from ..attacks import inverse_adversarial, pgd
from ..zeroshot import ZeroShotClassifier
from .methods import Method


class StudentHeads(nn.Module):
    """The student as the loop trains it: zero-shot logits, or raw image features with
    ``features=True``. One module, so that every forward with gradient goes through DDP."""

    def __init__(self, classifier: ZeroShotClassifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, pixels: Tensor, features: bool = False) -> Tensor:
        if features:
            return self.classifier.image_features(pixels, normalize=False)
        return self.classifier(pixels)


@torch.no_grad()
def teacher_probs(teacher: nn.Module, pixels: Tensor) -> Tensor:
    """p_T(pixels) [B, K] in fp32, autocast off: the cached target p_T(x) and IAR's p_T(x~) are both
    computed here, so a run's two teacher targets differ only by their input, never by precision."""
    with torch.autocast(pixels.device.type, enabled=False):
        return teacher(pixels.float()).float().softmax(dim=-1)


class FeaturesOf(nn.Module):
    """``heads`` seen as pixels -> raw features: the module a feature-space attack (FARE) attacks."""

    def __init__(self, heads: StudentHeads):
        super().__init__()
        self.heads = heads

    def forward(self, pixels: Tensor) -> Tensor:
        return self.heads(pixels, features=True)


@dataclass(kw_only=True)
class Models:
    """Everything the inputs are computed from; built once per run by ``setup.prepare``."""
    student: nn.Module                       # StudentHeads, DDP-wrapped under torchrun: gradient passes
    student_plain: StudentHeads              # the same module unwrapped: what attacks run on
    frozen: StudentHeads | None              # S0, the frozen initial student (None if no method needs it)
    teacher: ZeroShotClassifier | None       # T, frozen (None if no method needs it)
    caches: dict[str, Tensor]                # per-image inputs computed once before training, by input
    # name (CACHED_INPUTS), [N, ...] on the CPU: e.g. teacher_probs [N, K], teachers_probs [N, T, K]
    entropy_median: Tensor | None            # kappa over the alignment set, computed once
    teacher_mixture: nn.Module | None = None  # RAVEN's weights (guidance.TeacherMixture), trained by the loop
    attack: dict                             # pgd keywords of the student attack (eps, alpha, steps, start, precision)
    refine: dict                             # inverse_adversarial keywords of IAR (the same keys)
    attack_rng: torch.Generator              # random starts of the student attack
    refine_rng: torch.Generator              # random starts of the teacher refinement


# Inputs read per batch from Models.caches (computed once by setup.prepare, only if declared).
CACHED_INPUTS = ("teacher_probs", "teachers_probs", "average_teacher_probs", "smoothed_teacher_probs", "pik")


@dataclass
class Batch:
    images: Tensor                           # x, [B, 3, H, W] in [0, 1], on the device
    labels: Tensor | None                    # y [B], only if a method declared labels
    cached: dict[str, Tensor]                # the batch's rows of every cache (CACHED_INPUTS), on the device

    @classmethod
    def from_loader(cls, items: dict, models: Models, device: torch.device) -> "Batch":
        """A batch of ``PixelView`` items ({"index", "pixels", "label"?}) on ``device``, with the
        cached per-image inputs of those images."""
        return cls(images=items["pixels"].to(device, non_blocking=True),
                   labels=items["label"].to(device) if "label" in items else None,
                   cached={name: cache[items["index"]].to(device) for name, cache in models.caches.items()})


class StepInputs(Mapping):
    """Mapping of the declared inputs of ``method`` for one batch, each computed on first access."""

    def __init__(self, method: Method, batch: Batch, models: Models, progress: float):
        self.method, self.batch, self.models, self.progress = method, batch, models, progress
        self._cache: dict[str, object] = {}

    def __getitem__(self, name: str):
        if name not in self.method.needs:
            raise KeyError(f"method {self.method.name!r} did not declare input {name!r} "
                           f"(it declares {sorted(self.method.needs)})")
        return self._get(name)

    def __iter__(self):
        return iter(sorted(self.method.needs))

    def __len__(self) -> int:
        return len(self.method.needs)

    def _get(self, name: str):
        if name not in self._cache:
            self._cache[name] = (self.batch.cached[name] if name in CACHED_INPUTS
                                 else getattr(self, f"_{name}")())
        return self._cache[name]

    # --- given by the data and the caches --------------------------------------------------------
    def _labels(self):
        return self.batch.labels

    def _progress(self):
        return self.progress

    def _teacher_entropy_median(self):
        return self.models.entropy_median

    def _teacher_weights(self):
        return self.models.teacher_mixture.weights

    # --- passes through the teacher, the student and the frozen student ---------------------------
    def _refined_teacher_probs(self):
        m = self.models
        prediction = self._get("teacher_probs").argmax(dim=-1)  # M(p_T(x)) from the cache: no extra pass
        refined = inverse_adversarial(m.teacher, self.batch.images, prediction=prediction,
                                      generator=m.refine_rng, **m.refine)
        return teacher_probs(m.teacher, refined)

    def _adv_images(self):
        """x': PGD maximizing the method's own attack objective against its declared target."""
        m, attack = self.models, self.method.attack
        attacked = m.student_plain if attack.objective == "ce" else FeaturesOf(m.student_plain)
        return pgd(attacked, self.batch.images, attack.target(self),
                   objective=attack.objective, generator=m.attack_rng, **m.attack)

    def _adv_logits(self):
        return self.models.student(self._get("adv_images"))

    def _adv_features(self):
        return self.models.student(self._get("adv_images"), features=True)

    def _clean_logits(self):
        return self.models.student(self.batch.images)

    def _self_labels(self):
        if "clean_logits" in self.method.needs:  # the same forward: no second pass (and the same dropout draw)
            return self._get("clean_logits").detach().argmax(dim=-1)
        with torch.no_grad():
            return self.models.student_plain(self.batch.images).argmax(dim=-1)

    def _frozen_logits(self):
        with torch.no_grad():
            return self.models.frozen(self.batch.images)

    def _frozen_adv_logits(self):
        with torch.no_grad():
            return self.models.frozen(self._get("adv_images"))

    def _frozen_features(self):
        with torch.no_grad():
            return self.models.frozen(self.batch.images, features=True)

