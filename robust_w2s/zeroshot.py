"""The zero-shot classifier: the one module every attack, loss and evaluation uses.

It maps pixels in [0, 1] to logits, and holds everything CLIP-specific inside: normalization
with the model's own mean/std, the frozen text head, and the model's own logit scale. Attacks
therefore work in pixel space and never see normalization or text.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import open_clip
import torch
from safetensors.torch import load_file, save_file
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
        head_cache: optional folder where the text head is cached (see :func:`build_text_head`).
    Input: float [B, 3, H, W] in [0, 1] at the model's image size. Output: float32 [B, K], also
    under autocast (the image tower then runs in bf16, the scaled cosine in fp32).

    Example:
        >>> clf = ZeroShotClassifier(model, tokenizer, ["cat", "dog"], ["a photo of a {}."])
        >>> clf(torch.rand(4, 3, 224, 224)).shape
        torch.Size([4, 2])
    """

    def __init__(self, model: nn.Module, tokenizer, classnames: Sequence[str] = (),
                 templates: Sequence[str] = (), *, text_head: torch.Tensor | None = None,
                 head_cache: str | os.PathLike | None = None):
        super().__init__()
        self.model = model
        cfg = preprocess_cfg(model)
        device = next(model.parameters()).device
        self.register_buffer("mean", torch.tensor(cfg["mean"], device=device).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"], device=device).view(1, -1, 1, 1), persistent=False)
        if text_head is None:
            text_head = build_text_head(model, tokenizer, classnames, templates, cache_dir=head_cache)
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


TEXTS_PER_BATCH = 1024  # the text tower's batch: bounds the head's memory whatever K x templates


@torch.no_grad()
def build_text_head(model: nn.Module, tokenizer, classnames: Sequence[str], templates: Sequence[str], *,
                    cache_dir: str | os.PathLike | None = None, progress: bool = False) -> torch.Tensor:
    """W = normalize(mean_t normalize(encode_text(t(c)))) as a [D, K] float32 matrix.

    open_clip's ``build_zero_shot_classifier``, run over chunks of classes so that at most
    ``TEXTS_PER_BATCH`` prompts pass the text tower at once: memory does not grow with K x templates
    (ImageNet's 1000 x 80 on a ViT-L-14 otherwise asks for ~53 GiB). With ``cache_dir``, the head is
    stored there as safetensors keyed by (text tower weights, tokenizer, class names, templates)
    and reused by any later call with the same key, on any device.

    Raises:
        ValueError: no class names or no templates.
    """
    if not classnames or not templates:
        raise ValueError("a zero-shot head needs at least one class name and one template")
    device = next(model.parameters()).device
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"{_head_key(model, tokenizer, classnames, templates)}.safetensors"
        if cache_file.is_file():
            try:
                return load_file(cache_file)["text_head"].to(device)
            except Exception:  # noqa: BLE001 -- a truncated or foreign file: rebuilt and replaced below
                pass
    with eval_mode(model):
        head = open_clip.build_zero_shot_classifier(
            model, tokenizer, list(classnames), list(templates), device=device, use_tqdm=progress,
            num_classes_per_batch=max(1, TEXTS_PER_BATCH // len(templates))).float()
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        staging = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.partial")
        save_file({"text_head": head.cpu().contiguous()}, staging)
        os.replace(staging, cache_file)  # concurrent evaluations never read a half-written head
    return head


def _head_key(model: nn.Module, tokenizer, classnames: Sequence[str], templates: Sequence[str]) -> str:
    """sha256 of everything the head depends on: the model's config and module types (GELU and
    QuickGELU towers share their tensors' shapes and values), the text tower's tensors (every weight
    outside the image tower, in order), the tokenizer's type and context length, class names and
    templates."""
    digest = hashlib.sha256()
    modules = sorted({type(m).__qualname__ for n, m in model.named_modules() if not n.startswith("visual")})
    digest.update(json.dumps([getattr(model, "rw2s_model_cfg", None), modules], sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        if not name.startswith("visual."):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    tokenizer_id = [type(tokenizer).__name__, getattr(tokenizer, "context_length", None),
                    getattr(getattr(tokenizer, "tokenizer", None), "name_or_path", None)]
    digest.update(json.dumps([tokenizer_id, list(classnames), list(templates)]).encode())
    return digest.hexdigest()[:32]


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
