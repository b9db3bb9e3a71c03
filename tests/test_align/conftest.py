"""Small alignment runs on the session's tiny world (tests/conftest.py builds it once)."""
import json
import shutil

import pytest
import torch

from robust_w2s.align.config import load_config
from robust_w2s.checkpoints import CONFIG_FILE, WEIGHTS_FILE
from robust_w2s.layout import model_dir

TINY_RUN = ["train.steps=6", "train.batch_size=16", "train.checkpoint_every=3", "train.eval_every=0",
            "attack.steps=2", "attack.refine_steps=1", "optim.warmup_steps=2", "optim.lr=1e-4",
            "check.tasks=[]"]


@pytest.fixture
def tiny_config():
    """load_config(None, TINY_RUN + overrides): a 6-step run of a few seconds."""
    def make(*overrides: str):
        return load_config(None, TINY_RUN + list(overrides))
    return make


@pytest.fixture(scope="session")
def random_student(world_home, tmp_path_factory) -> str:
    """A checkpoint folder: the tiny world's strong CLIP with patch dropout 0.5 in its image tower, so
    that its forward in train mode draws from torch's global RNG (as users' students with dropout,
    patch dropout or stochastic depth do). Use it as ``student=<folder>``."""
    folder = tmp_path_factory.mktemp("random-student")
    strong = model_dir("strong", world_home)
    shutil.copy(strong / WEIGHTS_FILE, folder / WEIGHTS_FILE)
    config = json.loads((strong / CONFIG_FILE).read_text())
    config["model_cfg"]["vision_cfg"]["patch_dropout"] = 0.5
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    return str(folder)


@pytest.fixture(autouse=True)
def _single_thread(single_thread):
    yield
