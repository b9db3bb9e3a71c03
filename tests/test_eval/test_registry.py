"""Tests of eval.registry: suites, class names, templates, protocols and error messages.

Offline and CPU-only; the zero-shot head test uses a tiny random open_clip model (a few seconds).
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from robust_w2s.errors import UserError
from robust_w2s.eval import registry
from robust_w2s.eval.registry import (
    BENCHMARKS, PROTOCOLS, SUITES, Benchmark, Protocol, UnknownNameError,
    get_benchmark, get_protocol, register, suite_benchmarks,
)

REPO = Path(__file__).resolve().parents[2]

# FARE's evaluation set: ImageNet plus clip-benchmark's variants of the other 13 (CLIP_benchmark's
# benchmark/datasets.txt in RobustVLM).
PAPER14 = {"imagenet"} | {f"cb/{n}" for n in ("caltech101", "stanford-cars", "cifar10", "cifar100", "dtd", "eurosat",
                                              "fgvc-aircraft", "flowers102", "imagenet-r", "imagenet-sketch", "pcam",
                                              "oxford-pets", "stl10")}
TECOA16 = {"imagenet", "cifar10", "cifar100", "stl10", "caltech101", "caltech256", "oxford-pets", "flowers102",
           "fgvc-aircraft", "stanford-cars", "sun397", "country211", "food101", "eurosat", "dtd", "pcam"}

# Number of classes of each dataset's label column. Caltech101 counts 102: the chosen HF dataset
# (Donghyun99/Caltech-101) keeps the BACKGROUND_Google class, as CLIP's Caltech101 list does.
NUM_CLASSES = {
    "imagenet": 1000, "imagenet-r": 200, "imagenet-sketch": 1000, "cifar10": 10, "cifar100": 100, "stl10": 10,
    "caltech101": 102, "caltech256": 257, "oxford-pets": 37, "flowers102": 102, "fgvc-aircraft": 100,
    "stanford-cars": 196, "sun397": 397, "country211": 211, "food101": 101, "eurosat": 10, "dtd": 47, "pcam": 2,
}


def test_suites_have_the_published_datasets():
    assert set(SUITES["paper14"]) == PAPER14 and len(SUITES["paper14"]) == 14
    assert set(SUITES["tecoa16"]) == TECOA16 and len(SUITES["tecoa16"]) == 16
    for suite in ("paper14", "tecoa16"):
        benchmarks = suite_benchmarks(suite)
        assert [b.name for b in benchmarks] == list(SUITES[suite])
        assert all(name in BENCHMARKS for name in SUITES[suite])


def test_every_benchmark_has_its_class_count():
    assert set(BENCHMARKS) >= set(NUM_CLASSES)
    for name, n in NUM_CLASSES.items():
        assert len(get_benchmark(name).classnames) == n, name


@pytest.mark.parametrize("name", sorted(NUM_CLASSES))
def test_class_names_and_templates_are_well_formed(name):
    b = get_benchmark(name)
    assert b.name == name
    assert b.source.startswith(("hf:", "local:", "embedded:"))
    assert b.split and b.image_column and b.label_column and b.n_classes == len(b.classnames)
    assert len(set(b.classnames)) == len(b.classnames), "duplicated class names"
    assert all(isinstance(c, str) and c.strip() == c and c for c in b.classnames)
    assert b.templates
    for t in b.templates:
        assert t.count("{}") == 1, t
        prompt = t.format("CLASSNAME")
        assert "CLASSNAME" in prompt and "{" not in prompt and "}" not in prompt


def test_label_orders_follow_the_chosen_datasets():
    # Spot checks of orders that differ from CLIP's lists or are easy to get wrong.
    imagenet = get_benchmark("imagenet").classnames
    imagenet_r = get_benchmark("imagenet-r").classnames
    wnids = get_benchmark("imagenet-r").labels.ids  # class k of ImageNet-R is the k-th sorted WordNet id
    assert get_benchmark("imagenet-r").labels.type == "string" and wnids == tuple(sorted(wnids))
    assert len(wnids) == 200 and wnids[:2] == ("n01443537", "n01484850")
    assert imagenet_r[:2] == (imagenet[1], imagenet[2])  # goldfish, great white shark
    assert get_benchmark("imagenet-sketch").classnames == imagenet
    assert get_benchmark("eurosat").classnames[:3] == ("annual crop land", "forest", "brushland or shrubland")
    assert get_benchmark("food101").classnames[16:18] == ("cheesecake", "cheese plate")
    pets = ("Abyssinian", "american bulldog", "american pit bull terrier")
    assert get_benchmark("oxford-pets").classnames[:3] == pets
    assert get_benchmark("caltech101").classnames[:3] == ("background", "off-center face", "centered face")
    assert get_benchmark("pcam").classnames[1] == "lymph node containing metastatic tumor tissue"
    assert get_benchmark("cifar100").label_column == "fine_label"
    assert get_benchmark("cifar10").image_column == "img"


@pytest.mark.parametrize("call, bad, hint", [
    (get_benchmark, "cifar-10", "cifar10"),
    (suite_benchmarks, "paper15", "paper14"),
    (get_protocol, "fair", "fare"),
])
def test_unknown_names_raise_one_line_messages(call, bad, hint):
    with pytest.raises(UnknownNameError) as info:
        call(bad)
    message = str(info.value)
    assert bad in message and hint in message and "\n" not in message
    assert isinstance(info.value, KeyError) and isinstance(info.value, UserError)  # a lookup error; CLI exit 2


def test_protocols_have_the_published_values():
    tecoa, fare, aa = get_protocol("tecoa"), get_protocol("fare"), get_protocol("autoattack")
    assert tecoa.eps == pytest.approx((1 / 255,)) and tecoa.attacks == ("pgd",) and tecoa.pgd_steps == 10
    assert tecoa.n_samples is None and tecoa.seed == 0
    assert fare.eps == pytest.approx((2 / 255, 4 / 255)) and fare.attacks == ("apgd",)
    assert fare.n_samples == 1000 and fare.seed == 0
    assert aa.eps == pytest.approx((2 / 255,)) and aa.attacks == ("autoattack",) and aa.n_samples == 1000
    assert {"tecoa", "fare", "autoattack"} <= set(PROTOCOLS)  # "embedded" is added at run time from the world
    with pytest.raises(ValueError, match="attacks"):
        Protocol("bad", (1 / 255,), ("fgsm",), 10, None, 0)
    with pytest.raises(ValueError, match="eps"):
        Protocol("bad", (4,), ("pgd",), 10, None, 0)  # 4 instead of 4/255


def test_register_adds_and_replaces_entries():
    task = Benchmark("embedded/shape", "embedded:shape", "test", ["circle", "square"], ["a {} shape."])
    try:
        register(task)
        assert get_benchmark("embedded/shape") is task and task.classnames == ("circle", "square")
        replaced = Benchmark("embedded/shape", "embedded:shape", "test", ("circle", "square", "star"), ("a {}.",))
        register(replaced)
        assert get_benchmark("embedded/shape") is replaced
        with pytest.raises(TypeError):
            register("embedded/shape")
    finally:
        BENCHMARKS.pop("embedded/shape", None)


@pytest.mark.parametrize("kwargs, match", [
    (dict(templates=("a photo.",)), "exactly one"),
    (dict(templates=("a {} of {}.",)), "exactly one"),
    (dict(templates=("a {c}.",)), "exactly one"),
    (dict(classnames=("cat", "cat")), "unique"),
    (dict(source="imagenet"), "must start with"),
])
def test_broken_benchmarks_are_rejected(kwargs, match):
    fields = dict(name="x", source="local:/data", split="test", classnames=("cat", "dog"), templates=("a {}.",))
    with pytest.raises(ValueError, match=match):
        Benchmark(**{**fields, **kwargs})


def test_import_does_not_touch_the_network():
    code = (
        "import socket\n"
        "def refuse(*a, **k): raise OSError('network access during import')\n"
        "socket.socket.connect = refuse; socket.create_connection = refuse; socket.getaddrinfo = refuse\n"
        "import sys, robust_w2s.eval.registry as r; print(len(r.BENCHMARKS), 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    count, torch_imported = done.stdout.split()
    assert int(count) >= 18
    assert torch_imported == "False", "a registry lookup should not pay for importing torch"


def test_imagenet_names_are_open_clips_with_duplicates_made_distinct():
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    names = get_benchmark("imagenet").classnames
    changed = [i for i, (a, b) in enumerate(zip(names, IMAGENET_CLASSNAMES)) if a != b]
    assert len(names) == len(IMAGENET_CLASSNAMES) and changed == [744, 836]
    assert len(get_benchmark("imagenet").templates) == len(OPENAI_IMAGENET_TEMPLATES) == 80


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny random open_clip model registered under its own config name (no weights, no network)."""
    import open_clip
    from open_clip import factory

    name = "rw2s-registry-test-tiny"  # own name: tests/conftest.py registers another "rw2s-test-tiny"
    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
           "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    path = tmp_path_factory.mktemp("configs") / f"{name}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)  # the public way to add an architecture config
    try:
        torch.manual_seed(0)
        model = open_clip.create_model(name, pretrained=None).eval()
        yield model, open_clip.get_tokenizer(name)
    finally:  # leave open_clip's global registry as we found it
        factory._MODEL_CONFIGS.pop(name, None)
        if path in factory._MODEL_CONFIG_PATHS:
            factory._MODEL_CONFIG_PATHS.remove(path)


def test_registry_builds_a_zero_shot_head(tiny_clip):
    from open_clip import build_zero_shot_classifier

    model, tokenizer = tiny_clip
    b = get_benchmark("cifar10")
    head = build_zero_shot_classifier(model, tokenizer, b.classnames, b.templates, device="cpu")
    assert head.shape == (16, 10)
    assert torch.isfinite(head).all()
    assert torch.allclose(head.norm(dim=0), torch.ones(10), atol=1e-5)  # one unit vector per class


def test_module_exports_what_it_documents():
    for name in registry.__all__:
        assert hasattr(registry, name), name
