import math

import open_clip
import pytest
import torch

from robust_w2s import ZeroShotClassifier
from robust_w2s.zeroshot import build_text_head

CLASSES = ["circle", "square", "star"]
TEMPLATES = ["a {}.", "a picture of a {}."]


def test_normalization_is_applied_exactly_once(tiny_model):
    model, tokenizer = tiny_model
    classifier = ZeroShotClassifier(model, tokenizer, CLASSES, TEMPLATES)
    seen = []
    encode = model.encode_image
    model.encode_image = lambda images, normalize=False: seen.append(images) or encode(images, normalize)
    pixels = torch.rand(4, 3, 16, 16)
    classifier(pixels)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    assert len(seen) == 1
    assert torch.allclose(seen[0], (pixels - mean) / std, atol=1e-6)


def test_logits_are_scaled_cosines_with_the_models_own_scale(tiny_model):
    model, tokenizer = tiny_model
    with torch.no_grad():
        model.logit_scale.fill_(math.log(37.0))
    classifier = ZeroShotClassifier(model, tokenizer, CLASSES, TEMPLATES)
    pixels = torch.rand(5, 3, 16, 16)
    with torch.no_grad():
        logits = classifier(pixels)
        features = classifier.image_features(pixels)
    cosines = features @ classifier.text_head
    assert torch.allclose(logits, 37.0 * cosines, atol=1e-4)
    assert logits.abs().max() <= 37.0 + 1e-3
    with torch.no_grad():
        model.logit_scale.fill_(math.log(74.0))
        assert torch.allclose(classifier(pixels), 2 * logits, atol=1e-4)


def test_under_autocast_the_tower_runs_in_bf16_and_the_scaled_cosine_in_fp32(tiny_model):
    """Logits of scale ~100 rounded to bf16 move in steps of 0.25-0.5: losses must read fp32 ones."""
    model, tokenizer = tiny_model
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100.0))
    classifier = ZeroShotClassifier(model, tokenizer, CLASSES, TEMPLATES)
    pixels = torch.rand(5, 3, 16, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = classifier(pixels)
        features = classifier.image_features(pixels)
    assert features.dtype == torch.bfloat16 and logits.dtype == torch.float32
    assert torch.equal(logits, model.logit_scale.exp() * features.float() @ classifier.text_head)


def test_text_head_is_unit_norm_mean_of_template_embeddings(tiny_model):
    model, tokenizer = tiny_model
    head = build_text_head(model, tokenizer, CLASSES, TEMPLATES)
    assert head.shape == (16, 3)
    assert torch.allclose(head.norm(dim=0), torch.ones(3), atol=1e-5)
    with torch.no_grad():
        texts = model.encode_text(tokenizer([t.format("star") for t in TEMPLATES]), normalize=True)
    expected = texts.mean(0) / texts.mean(0).norm()
    assert torch.allclose(head[:, 2], expected, atol=1e-5)


def test_empty_class_list_is_rejected(tiny_model):
    with pytest.raises(ValueError):
        build_text_head(*tiny_model, [], TEMPLATES)
