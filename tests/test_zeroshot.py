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


def test_chunked_head_equals_the_one_pass_head(tiny_model, monkeypatch):
    """With two prompts per text-tower batch, every class is encoded in its own chunk (and a chunk
    boundary falls inside nothing): the head must equal one pass over all K x templates prompts."""
    model, tokenizer = tiny_model
    classes = [f"shape number {i}" for i in range(7)]
    texts_seen = []
    encode = model.encode_text
    model.encode_text = lambda tokens, normalize=False: texts_seen.append(len(tokens)) or encode(tokens, normalize)
    monkeypatch.setattr("robust_w2s.zeroshot.TEXTS_PER_BATCH", 2)
    chunked = build_text_head(model, tokenizer, classes, TEMPLATES)
    assert max(texts_seen) == 2 and sum(texts_seen) == 7 * len(TEMPLATES)
    with torch.no_grad():
        embeddings = encode(tokenizer([t.format(c) for c in classes for t in TEMPLATES]), True)
    mean = embeddings.view(7, len(TEMPLATES), -1).mean(1)
    assert torch.allclose(chunked, (mean / mean.norm(dim=1, keepdim=True)).T, atol=1e-6)


def test_cached_head_is_reused_only_for_the_same_key(tiny_model, tmp_path):
    model, tokenizer = tiny_model
    head = build_text_head(model, tokenizer, CLASSES, TEMPLATES, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    encode = model.encode_text
    model.encode_text = lambda *a, **k: pytest.fail("a cached head must not re-encode")
    assert torch.equal(build_text_head(model, tokenizer, CLASSES, TEMPLATES, cache_dir=tmp_path), head)
    model.encode_text = encode
    reordered = build_text_head(model, tokenizer, CLASSES[::-1], TEMPLATES, cache_dir=tmp_path)
    assert torch.allclose(reordered, head.flip(1), atol=1e-6)
    with torch.no_grad():
        model.token_embedding.weight.mul_(2.0)  # another text tower: another key
    changed = build_text_head(model, tokenizer, CLASSES, TEMPLATES, cache_dir=tmp_path)
    assert not torch.allclose(changed, head, atol=1e-3)
    with torch.no_grad():
        model.visual.conv1.weight.mul_(2.0)  # the image tower is not part of the key
    assert torch.equal(build_text_head(model, tokenizer, CLASSES, TEMPLATES, cache_dir=tmp_path), changed)
    assert len(list(tmp_path.glob("*.safetensors"))) == 3
