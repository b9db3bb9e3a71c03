import numpy as np
import pytest

from robust_w2s.world.scenes import Scene, caption, render
from robust_w2s.world.tasks import ALIGNMENT_TASK, CORPORA, TASKS, corpus_arrays, task_dataset


def _pixels(dataset):
    return np.stack([np.asarray(image) for image in dataset["image"]])


def test_task_split_is_deterministic_in_pixels_and_labels():
    first, second = task_dataset("colour-shape", 40, seed=3), task_dataset("colour-shape", 40, seed=3)
    assert np.array_equal(_pixels(first), _pixels(second))
    assert first["label"] == second["label"]
    other = task_dataset("colour-shape", 40, seed=4)
    assert not np.array_equal(_pixels(first), _pixels(other))


def test_corpus_is_deterministic_in_pixels_and_captions():
    images, captions = corpus_arrays("strong", 30, seed=1)
    again_images, again_captions = corpus_arrays("strong", 30, seed=1)
    assert np.array_equal(images, again_images) and captions == again_captions
    assert corpus_arrays("strong", 30, seed=2)[1] != captions


def test_splits_are_independent_of_each_other():
    test = task_dataset("shape", 20, seed=0, split="test")
    alignment = task_dataset("shape", 20, seed=0, split="alignment")
    assert not np.array_equal(_pixels(test), _pixels(alignment))


def test_labels_match_the_rendered_attribute():
    """A label must name the attribute of the scene: rendering the same scene twice with one
    generator state gives the dataset's pixels, so sampler and label agree."""
    spec = TASKS["size-shape"]
    rng = np.random.default_rng(0)
    for _ in range(20):
        scene, label = spec.sample(rng)
        assert spec.classnames[label] == f"{scene.size} {scene.shape}"


def test_weak_captions_never_mention_what_the_weak_corpus_lacks():
    _, captions = corpus_arrays("weak", 400, seed=0)
    assert "background" not in CORPORA["weak"].mention
    assert not any("background" in c for c in captions)
    _, strong = corpus_arrays("strong", 400, seed=0)
    assert any("background" in c for c in strong)


def test_caption_always_names_shape_or_colour():
    rng = np.random.default_rng(0)
    scene = Scene("star", "red", "small", "on the left")
    for _ in range(50):
        text = caption(scene, rng, {"size": 0.5, "position": 0.5})
        assert "star" in text or "red" in text


def test_render_outline_differs_from_filled_and_stays_in_range():
    filled = render(Scene("square", "blue", "large", "in the center"), np.random.default_rng(0))
    outline = render(Scene("square", "blue", "large", "in the center", style="outline"),
                     np.random.default_rng(0))
    assert filled.dtype == np.uint8 and filled.shape == (32, 32, 3)
    centre = (slice(13, 19), slice(13, 19))
    assert filled[centre][..., 2].mean() > outline[centre][..., 2].mean() + 80


def test_world_has_enough_tasks_and_an_alignment_task():
    assert len(TASKS) >= 6 and ALIGNMENT_TASK in TASKS
    for spec in TASKS.values():
        assert len(spec.classnames) >= 5, "2x chance must be reachable on every task"
        assert len(set(spec.classnames)) == len(spec.classnames)
        assert all(t.count("{}") == 1 for t in spec.templates)


def test_alignment_split_mixes_styles_but_is_mostly_plain():
    from robust_w2s.world.tasks import ALIGNMENT

    rng = np.random.default_rng(0)
    scenes = [ALIGNMENT.sample(rng)[0] for _ in range(400)]
    outline = sum(s.style == "outline" for s in scenes) / len(scenes)
    textured = sum(s.background != "plain" for s in scenes) / len(scenes)
    assert 0.05 < outline < 0.3 and 0.05 < textured < 0.3
