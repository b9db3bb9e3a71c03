"""The zero-shot classifier: the one module every attack, loss and evaluation uses.

It maps pixels in [0, 1] to logits, and holds everything CLIP-specific inside: normalization
with the model's own mean/std, the frozen text head, and the model's own logit scale. Attacks
therefore work in pixel space and never see normalization or text.
"""
from __future__ import annotations

from typing import Sequence

import open_clip
import torch
from torch import nn

from .attacks import eval_mode


def preprocess_cfg(model: nn.Module) -> dict:
    """The model's preprocessing (size, mean, std, ...) as open_clip records it on the weights."""
    return open_clip.get_model_preprocess_cfg(model)


class ZeroShotClassifier(nn.Module):
    """logits = s * cos(f(normalize(x)), W), with s = ``model.logit_scale.exp()``.

    Args:
        model: an open_clip CLIP model (its image tower is used; the text tower only here, once).
        tokenizer: the model's tokenizer.
        classnames: K class names; templates: format strings with one ``{}``.
        text_head: optional precomputed [D, K] head (e.g. from another model's text tower).
    Input: float [B, 3, H, W] in [0, 1] at the model's image size. Output: float32 [B, K], also
    under autocast (the image tower then runs in bf16, the scaled cosine in fp32).

    Example:
        >>> clf = ZeroShotClassifier(model, tokenizer, ["cat", "dog"], ["a photo of a {}."])
        >>> clf(torch.rand(4, 3, 224, 224)).shape
        torch.Size([4, 2])
    """

    def __init__(self, model: nn.Module, tokenizer, classnames: Sequence[str] = (),
                 templates: Sequence[str] = (), *, text_head: torch.Tensor | None = None):
        super().__init__()
        self.model = model
        cfg = preprocess_cfg(model)
        device = next(model.parameters()).device
        self.register_buffer("mean", torch.tensor(cfg["mean"], device=device).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"], device=device).view(1, -1, 1, 1), persistent=False)
        if text_head is None:
            text_head = build_text_head(model, tokenizer, classnames, templates)
        self.register_buffer("text_head", text_head, persistent=False)

    def image_features(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Image embeddings of pixels in [0, 1]: unit-norm by default, raw for FARE-style losses."""
        return self.model.encode_image((pixels - self.mean) / self.std, normalize=normalize)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self.image_features(pixels)
        # The scaled cosine in fp32 even under autocast: bf16 logits of scale ~100 would be rounded
        # in steps of 0.25-0.5 before any loss or attack objective reads them (docs/precision.md).
        with torch.autocast(pixels.device.type, enabled=False):
            return self.model.logit_scale.exp() * features.float() @ self.text_head.float()


@torch.no_grad()
def build_text_head(model: nn.Module, tokenizer, classnames: Sequence[str],
                    templates: Sequence[str]) -> torch.Tensor:
    """W = normalize(mean_t normalize(encode_text(t(c)))) as a [D, K] matrix (open_clip's own)."""
    if not classnames or not templates:
        raise ValueError("a zero-shot head needs at least one class name and one template")
    with eval_mode(model):
        return open_clip.build_zero_shot_classifier(model, tokenizer, list(classnames), list(templates),
                                                    num_classes_per_batch=None,
                                                    device=next(model.parameters()).device)


def accuracy(classifier: nn.Module, batches, attack=None) -> tuple[float, int]:
    """Top-1 accuracy of ``classifier`` over (pixels, labels) batches, and the sample count.

    ``attack(classifier, pixels, labels) -> pixels`` is applied to each batch first if given. The
    classifier runs in eval mode; its modules' train/eval flags are restored afterwards.
    """
    correct = total = 0
    with eval_mode(classifier):
        for pixels, labels in batches:
            if attack is not None:
                pixels = attack(classifier, pixels, labels)
            with torch.no_grad():
                correct += (classifier(pixels).argmax(dim=1) == labels).sum().item()
            total += len(labels)
    if total == 0:
        raise ValueError("accuracy over an empty dataset")
    return correct / total, total
