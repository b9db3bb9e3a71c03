"""A killed run resumed from its state ends with exactly the weights of an uninterrupted run."""
import json

import open_clip
import pytest
import torch
from killed_runs import Killed, assert_same_run, train_with_kills
from safetensors.torch import load_file

from robust_w2s.align import state
from robust_w2s.align.loop import train, train_or_resume
from robust_w2s.checkpoints import WEIGHTS_FILE
from robust_w2s.models import load_model


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
        if route == "--resume":
            train(config, tmp_path / "killed", home=world_home)
        else:
            train_or_resume(config, tmp_path / "killed", home=world_home, depends_on="world A")
    monkeypatch.setattr(state, "save_state", real_save_state)
    with open(tmp_path / "killed" / "log.jsonl", "a") as log:
        log.write('{"step": 4, "loss": 2.0')  # a line the kill cut short
    if route == "--resume":
        resumed = train(config, tmp_path / "killed", home=world_home, resume=True)
    else:  # what the study and the world build call: it finds the state and continues
        resumed = train_or_resume(config, tmp_path / "killed", home=world_home, depends_on="world A")

    a, b = load_file(whole / WEIGHTS_FILE), load_file(resumed / WEIGHTS_FILE)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name in ("whole", "killed"):
        assert json.loads((tmp_path / name / "state" / "config.json").read_text())["optim"]["ema_decay"] == 0.9
    steps = [json.loads(line).get("step") for line in (tmp_path / "killed" / "log.jsonl").read_text().splitlines()
             if "loss" in line]
    assert steps == [1, 2, 3, 4, 5, 6]  # log lines of the lost steps are not duplicated
    starts = [json.loads(line) for line in (tmp_path / "killed" / "log.jsonl").read_text().splitlines()
              if '"event": "start"' in line]
    assert [s["step"] for s in starts] == [0, 3]  # it did resume at step 3 (a restart would log one start, at 0)
    # what actually ran is recorded, not the config's "auto": fp32 attacks and update on the CPU
    assert all(s["attack_precision"] == "fp32" and s["update_bf16"] is False for s in starts)
    # the checkpoint is a folder plain open_clip loads
    model = open_clip.create_model(f"local-dir:{resumed}")
    assert model.visual is not None


def test_resume_refuses_a_changed_config(world_home, tiny_config, tmp_path):
    from robust_w2s.errors import UserError
    train(tiny_config("train.steps=3"), tmp_path / "run", home=world_home)
    with pytest.raises(UserError, match="optim.lr was"):
        train(tiny_config("train.steps=3", "optim.lr=5e-4"), tmp_path / "run", home=world_home, resume=True)


def test_train_or_resume_replaces_a_run_of_another_config_or_another_world(world_home, tiny_config, tmp_path):
    def log():  # (steps trained, steps at which a start was logged: a resume logs its own)
        lines = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
        return [x["step"] for x in lines if "loss" in x], [x["step"] for x in lines if x.get("event") == "start"]

    train_or_resume(tiny_config("train.steps=3"), tmp_path / "run", home=world_home, depends_on="world A")
    train_or_resume(tiny_config("train.steps=3"), tmp_path / "run", home=world_home, depends_on="world A")
    assert log() == ([1, 2, 3], [0, 3])  # finished, same config and world: resumed at its end, nothing rerun
    train_or_resume(tiny_config("train.steps=3"), tmp_path / "run", home=world_home, depends_on="world B")
    assert log() == ([1, 2, 3], [0])  # made for another world: replaced by a fresh run
    train_or_resume(tiny_config("train.steps=3", "optim.lr=5e-4"), tmp_path / "run", home=world_home,
                    depends_on="world B")
    assert log() == ([1, 2, 3], [0])  # another config: replaced too
    assert json.loads((tmp_path / "run" / "state" / "config.json").read_text())["optim"]["lr"] == 5e-4
    weights = (tmp_path / "run" / "checkpoint" / WEIGHTS_FILE).read_bytes()
    (tmp_path / "run" / "checkpoint" / WEIGHTS_FILE).unlink()  # deleted after the run finished
    train_or_resume(tiny_config("train.steps=3", "optim.lr=5e-4"), tmp_path / "run", home=world_home,
                    depends_on="world B")
    assert log() == ([1, 2, 3], [0])  # redone from the start (its state cannot give the checkpoint back)
    assert (tmp_path / "run" / "checkpoint" / WEIGHTS_FILE).read_bytes() == weights


def test_the_random_student_draws_random_numbers_in_its_forward(random_student, world_home):
    model, _, _ = load_model(random_student, home=world_home)
    model.visual.train()
    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.equal(model.encode_image(pixels), model.encode_image(pixels))
        model.visual.eval()
        assert torch.equal(model.encode_image(pixels), model.encode_image(pixels))


def test_a_random_student_killed_twice_resumes_exactly_with_and_without_data_workers(
        world_home, tiny_config, random_student, tmp_path):
    # Patch dropout draws from the global RNG in every forward, and every new DataLoader iterator
    # (each epoch, each resume) draws its base seed: resume must not shift the global stream.
    # 128 images / 16 = 8 steps an epoch: steps=10 crosses an epoch boundary. EMA on, both attacks
    # draw random starts, a zero-shot check logs at steps 4, 8 and 10.
    run = [f"student={random_student}", "optim.ema_decay=0.9", "train.steps=10", "train.checkpoint_every=2",
           "train.eval_every=4", "check.tasks=[shape]", "check.n_samples=8", "check.pgd_steps=1"]
    train(tiny_config(*run), tmp_path / "whole", home=world_home)
    for workers in (0, 2):  # data.workers does not change the trajectory: the same run either way
        # dies in step 4 (step 3 lost, redone from the state of step 2), then right after writing step 8's state
        train_with_kills(tiny_config(*run, f"data.workers={workers}"), tmp_path / f"killed-{workers}", world_home,
                         [("step", 3), ("saved", 8)])
        assert_same_run(tmp_path / "whole", tmp_path / f"killed-{workers}")
