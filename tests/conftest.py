"""Shared fixtures: a tiny embedded world built once per test session (about half a minute)."""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

# The suite never writes into the user's Hugging Face caches (datasets keeps an Arrow cache of every
# local image folder it loads, and lock files for hub ids): both point into a folder removed at exit.
# Set before anything imports datasets or huggingface_hub, which read these variables at import.
_HF_HOME = tempfile.mkdtemp(prefix="rw2s-tests-hf-")
atexit.register(shutil.rmtree, _HF_HOME, True)
for _variable in ("HF_DATASETS_CACHE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
    os.environ.pop(_variable, None)
os.environ["HF_HOME"] = _HF_HOME

import open_clip
import pytest
import torch

from robust_w2s.world.recipes import PretrainSettings, RobustSettings
from robust_w2s.world.stages import WorldConfig, build_world

TINY_WORLD = WorldConfig(
    seed=0, test_size=48, alignment_size=128, robust_check_size=8, alignment_check_size=96,
    weak=PretrainSettings("rw2s-weak", "weak", corpus_size=512, steps=8, batch_size=64, warmup=2),
    strong=PretrainSettings("rw2s-strong", "strong", corpus_size=512, steps=8, batch_size=64, warmup=2),
    weak_outline=PretrainSettings("rw2s-weak", "outline", corpus_size=256, steps=4, batch_size=64, warmup=1,
                                  start="weak"),
    weak_poor=PretrainSettings("rw2s-weak", "weak", corpus_size=128, steps=2, batch_size=64, warmup=1),
    robust=RobustSettings(steps=3, batch_size=32, pgd_steps=2),
)

TINY_CONFIG = {"embed_dim": 16,
               "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
               "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture
def single_thread():
    """Run a test on one thread: for tiny tensors on a busy 2-core machine, intra-op thread
    synchronization costs ~10 ms per op, more than the ops themselves. Restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_world_config():
    return TINY_WORLD


@pytest.fixture(scope="session")
def world_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("rw2s_home")
    build_world(home, TINY_WORLD)
    return home


@pytest.fixture
def tiny_model():
    """A random tiny open_clip CLIP (16x16 images) with its config and tokenizer."""
    torch.manual_seed(0)
    open_clip.factory._MODEL_CONFIGS["rw2s-test-tiny"] = TINY_CONFIG
    model = open_clip.create_model("rw2s-test-tiny").eval()
    model.rw2s_model_cfg = TINY_CONFIG
    return model, open_clip.get_tokenizer("rw2s-test-tiny")


@pytest.fixture(scope="session", autouse=True)
def _one_namespace():
    """Every import goes through ``robust_w2s.*``. From the repository root the folders attacks/,
    eval/, study/ and theory/ are also importable as top-level packages: such an import would be a
    second copy of the module, with its own registries and state."""
    yield
    stray = sorted({"attacks", "eval", "study", "theory"} & sys.modules.keys())
    assert not stray, f"imported outside the robust_w2s namespace: {[(n, sys.modules[n]) for n in stray]}"
