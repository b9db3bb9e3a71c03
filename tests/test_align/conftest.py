"""Small alignment runs on the session's tiny world (tests/conftest.py builds it once)."""
import pytest
import torch

from robust_w2s.align.config import load_config

TINY_RUN = ["train.steps=6", "train.batch_size=16", "train.checkpoint_every=3", "train.eval_every=0",
            "attack.steps=2", "attack.refine_steps=1", "optim.warmup_steps=2", "optim.lr=1e-4",
            "check.tasks=[]"]


@pytest.fixture
def tiny_config():
    """load_config(None, TINY_RUN + overrides): a 6-step run of a few seconds."""
    def make(*overrides: str):
        return load_config(None, TINY_RUN + list(overrides))
    return make


@pytest.fixture(autouse=True)
def _single_thread(single_thread):
    yield
