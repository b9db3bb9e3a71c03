import dataclasses
import shutil

import numpy as np
import pytest

from robust_w2s.align import methods as M
from robust_w2s.align.config import load_config
from robust_w2s.align.setup import alignment_data
from robust_w2s.data import iterate_batches
from robust_w2s.layout import (ALIGNMENT_SPLIT, EMBEDDED, RECORD_FILE, SHIFTED_ALIGNMENT_SPLIT, WORLD_MODELS,
                               model_spec, read_world)
from robust_w2s.models import eval_transform, load_model
from robust_w2s.world.scenes import Scene, caption, render
from robust_w2s.world import stages
from robust_w2s.world.stages import PRETRAINED, WorldConfig, build_world, pretrain_fingerprint
from robust_w2s.world.tasks import (ALIGNMENT_SPLITS, ALIGNMENT_TASK, CORPORA, TASKS, Corpus, corpus_arrays,
                                    task_dataset)
from robust_w2s.zeroshot import ZeroShotClassifier, accuracy


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


def _style_fractions(split: str, n: int = 2000) -> tuple[float, float, float]:
    """(outline, textured, plain filled) fractions of the scenes the split's sampler draws."""
    rng = np.random.default_rng(0)
    scenes = [ALIGNMENT_SPLITS[split].sample(rng)[0] for _ in range(n)]
    outline = sum(s.style == "outline" for s in scenes) / n
    textured = sum(s.background != "plain" for s in scenes) / n
    plain = sum(s.style == "filled" and s.background == "plain" for s in scenes) / n
    return outline, textured, plain


def test_alignment_split_mixes_styles_but_is_mostly_plain():
    outline, textured, plain = _style_fractions(ALIGNMENT_SPLIT)
    assert 0.1 < outline < 0.2 and 0.1 < textured < 0.2 and plain > 0.65


def test_shifted_alignment_split_is_mostly_outlines_and_textures():
    outline, textured, plain = _style_fractions(SHIFTED_ALIGNMENT_SPLIT)
    assert 0.55 < outline < 0.65 and 0.35 < textured < 0.45 and 0.2 < plain < 0.28  # 0.6, 0.4, 0.4 * 0.6


def test_alignment_splits_share_the_alignment_task_classes_but_not_images():
    for spec in ALIGNMENT_SPLITS.values():
        assert (spec.classnames, spec.templates) == (TASKS[ALIGNMENT_TASK].classnames, TASKS[ALIGNMENT_TASK].templates)
    rng = np.random.default_rng(0)
    scene, label = ALIGNMENT_SPLITS[SHIFTED_ALIGNMENT_SPLIT].sample(rng)
    assert TASKS[ALIGNMENT_TASK].classnames[label] == scene.shape
    plain = task_dataset(ALIGNMENT_SPLIT, 20, seed=0, split="alignment")
    shifted = task_dataset(SHIFTED_ALIGNMENT_SPLIT, 20, seed=0, split="alignment")
    assert not np.array_equal(_pixels(plain), _pixels(shifted))


def test_outline_corpus_shows_outlines_far_more_often_than_the_weak_one():
    def outline_captions(corpus):  # captions name the style of half the outline scenes in both corpora
        return sum(" outline of " in c or " drawing of " in c for c in corpus_arrays(corpus, 600, seed=0)[1]) / 600
    assert CORPORA["outline"].mention == CORPORA["weak"].mention
    assert outline_captions("outline") > 0.3 and outline_captions("weak") < 0.12


def test_world_record_has_every_model_and_split_with_accuracies(world_home, tiny_world_config):
    record = read_world(world_home)
    assert list(record["models"]) == list(WORLD_MODELS)
    assert record["alignment_splits"] == [ALIGNMENT_SPLIT, SHIFTED_ALIGNMENT_SPLIT] == list(ALIGNMENT_SPLITS)
    for model in WORLD_MODELS:
        measured = record["measured"][model]
        assert measured.keys() == {*record["tasks"], *record["alignment_splits"]}
        for task in record["tasks"]:
            assert measured[task]["n"] == tiny_world_config.test_size
            assert measured[task]["n_pgd20"] == tiny_world_config.robust_check_size
            assert 0 <= measured[task]["pgd20_acc"] <= 1 and 0 <= measured[task]["clean_acc"] <= 1
        for split in record["alignment_splits"]:
            assert measured[split]["n"] == tiny_world_config.alignment_check_size < tiny_world_config.alignment_size
            assert 0 <= measured[split]["clean_acc"] <= 1
    assert record["build_seconds"].keys() == {"data", *PRETRAINED, "weak-robust", "measure"}
    assert all(seconds > 0 for seconds in record["build_seconds"].values())


def test_shifted_split_is_alignment_data_and_its_recorded_accuracy_is_the_harness_view(world_home, tiny_world_config):
    """The alignment harness reads embedded:alignment-shifted like the alignment split (labels only
    for methods that declare them), with the class names and prompts the world measured it with."""
    world, spec = read_world(world_home), f"{EMBEDDED}{SHIFTED_ALIGNMENT_SPLIT}"
    free, *_ = alignment_data(load_config(None, [f"data.dataset={spec}"]), M.Plan.build(M.MethodSettings()),
                              world, world_home)
    assert free.column_names == ["image"] and len(free) == tiny_world_config.alignment_size
    config = load_config(None, [f"data.dataset={spec}", "method.name=tecoa"])
    dataset, classnames, templates, labels, _ = alignment_data(config, M.Plan.build(config.method), world, world_home)
    model, _, tokenizer = load_model(model_spec("weak-outline"), home=world_home)
    classifier = ZeroShotClassifier(model, tokenizer, classnames, templates)
    subset = dataset.select(range(tiny_world_config.alignment_check_size))
    clean, n = accuracy(classifier, iterate_batches(subset, eval_transform(model, normalize=False), labels=labels))
    recorded = world["measured"]["weak-outline"][SHIFTED_ALIGNMENT_SPLIT]
    assert (clean, n) == (pytest.approx(recorded["clean_acc"]), recorded["n"])


def test_a_model_stage_is_stale_exactly_when_its_corpus_or_the_model_it_continues_from_changes(monkeypatch):
    config = WorldConfig()
    before = {name: pretrain_fingerprint(config, name) for name in PRETRAINED}

    def stale():
        return {name for name in PRETRAINED if pretrain_fingerprint(config, name) != before[name]}

    monkeypatch.setitem(CORPORA, "sketchbook", Corpus({"shape": 1.0}, outline_rate=1.0, textured_rate=0.0))
    assert stale() == set()
    monkeypatch.setitem(CORPORA, "outline", dataclasses.replace(CORPORA["outline"], outline_rate=0.5))
    assert stale() == {"weak-outline"}
    monkeypatch.setitem(CORPORA, "weak", dataclasses.replace(CORPORA["weak"], outline_rate=0.5))
    assert stale() == {"weak", "weak-outline", "weak-poor"}  # weak-outline continues from weak


def test_rebuilding_with_one_changed_teacher_retrains_only_that_teacher(world_home, tiny_world_config, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setattr(stages, "measure", lambda home, config: {})  # what is rebuilt is the question here
    home = tmp_path / "home"
    shutil.copytree(world_home, home)
    files = {path: path.stat().st_mtime_ns for path in (home / "world").rglob("*") if path.is_file()}
    changed = dataclasses.replace(tiny_world_config,
                                  weak_poor=dataclasses.replace(tiny_world_config.weak_poor, steps=3))
    record = build_world(home, changed)
    rewritten = {path.relative_to(home / "world").parts[0] for path, mtime in files.items()
                 if not path.exists() or path.stat().st_mtime_ns != mtime}
    assert rewritten == {"weak-poor", RECORD_FILE}
    assert record["config"]["weak_poor"]["steps"] == 3
