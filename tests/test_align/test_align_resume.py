"""A killed run resumed from its state ends with exactly the weights of an uninterrupted run."""
import json

import open_clip
import pytest
import torch
from safetensors.torch import load_file

from robust_w2s.align import state
from robust_w2s.align.loop import train, train_or_resume
from robust_w2s.checkpoints import WEIGHTS_FILE


class Killed(Exception):
    pass


@pytest.mark.parametrize("route", ["--resume", "train_or_resume"])
def test_kill_after_step_3_and_resume_equals_an_uninterrupted_run(world_home, tiny_config, tmp_path,
                                                                    monkeypatch, route):
    # EMA on and both attacks (student PGD, teacher IAR) draw random starts: all must resume.
    config = tiny_config("optim.ema_decay=0.9")
    whole = train(config, tmp_path / "whole", home=world_home)

    real_save_state = state.save_state

    def save_then_die(*args, **kwargs):
        real_save_state(*args, **kwargs)
        raise Killed  # the process dies right after the step-3 state is on disk

    monkeypatch.setattr(state, "save_state", save_then_die)
    with pytest.raises(Killed):
        train(config, tmp_path / "killed", home=world_home)
    monkeypatch.setattr(state, "save_state", real_save_state)
    if route == "--resume":
        resumed = train(config, tmp_path / "killed", home=world_home, resume=True)
    else:  # what the study and the world build call: it finds the state and continues
        resumed = train_or_resume(config, tmp_path / "killed", home=world_home)

    a, b = load_file(whole / WEIGHTS_FILE), load_file(resumed / WEIGHTS_FILE)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name in ("whole", "killed"):
        assert json.loads((tmp_path / name / "state" / "config.json").read_text())["optim"]["ema_decay"] == 0.9
    steps = [json.loads(line).get("step") for line in (tmp_path / "killed" / "log.jsonl").read_text().splitlines()
             if "loss" in line]
    assert steps == [1, 2, 3, 4, 5, 6]  # log lines of the lost steps are not duplicated
    # the checkpoint is a folder plain open_clip loads
    model = open_clip.create_model(f"local-dir:{resumed}")
    assert model.visual is not None


def test_resume_refuses_a_changed_config(world_home, tiny_config, tmp_path):
    from robust_w2s.errors import UserError
    train(tiny_config("train.steps=3"), tmp_path / "run", home=world_home)
    with pytest.raises(UserError, match="optim.lr was"):
        train(tiny_config("train.steps=3", "optim.lr=5e-4"), tmp_path / "run", home=world_home, resume=True)


def test_train_or_resume_replaces_a_run_of_another_config(world_home, tiny_config, tmp_path):
    train(tiny_config("train.steps=3"), tmp_path / "run", home=world_home)
    train_or_resume(tiny_config("train.steps=3", "optim.lr=5e-4"), tmp_path / "run", home=world_home)
    saved = json.loads((tmp_path / "run" / "state" / "config.json").read_text())
    assert saved["optim"]["lr"] == 5e-4
    lines = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "loss" in line] == [1, 2, 3]  # one fresh run, not two
