"""Every method trains a few steps on the tiny world and writes a checkpoint open_clip loads."""
import json

import open_clip
import pytest
import torch

from robust_w2s import cli, load_checkpoint
from robust_w2s.align import METHODS
from robust_w2s.align.loop import train


@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_trains_and_writes_a_loadable_checkpoint(world_home, tiny_config, tmp_path, name):
    before = load_checkpoint(world_home / "world" / "strong")[0].state_dict()
    folder = train(tiny_config(f"method.name={name}", "train.steps=2", "method.fare_warmup_steps=1"),
                   tmp_path / name, home=world_home)
    model, _, _ = load_checkpoint(folder)
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(k.startswith("visual.") for k in changed)  # only the image tower trains
    open_clip.create_model(f"local-dir:{folder}")
    records = [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
    assert [r["method"] for r in records if "loss" in r] == ["fare", name]  # FARE warm-up, then the method
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records if "loss" in r)


def test_cli_align_runs_with_the_zero_shot_check(world_home, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("method: {name: adv-w2s}\ntrain: {steps: 2, batch_size: 16, eval_every: 1}\n"
                      "attack: {steps: 1, refine_steps: 1}\ncheck: {tasks: [colour], n_samples: 8, pgd_steps: 1}\n")
    assert cli.main(["align", "--config", str(config), "--output-dir", str(tmp_path / "run"),
                     "--home", str(world_home)]) == 0
    checks = [json.loads(line)["check"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
              if '"check"' in line]
    assert len(checks) == 2 and set(checks[0]["colour"]) == {"clean_acc", "pgd_acc"}
    assert (tmp_path / "run" / "state" / "train_state.pt").is_file()
    assert "checkpoint:" in capsys.readouterr().out


def test_unknown_check_task_is_a_user_error(world_home, tiny_config, tmp_path):
    from robust_w2s.errors import UserError
    with pytest.raises(UserError, match="unknown check.tasks task 'shapes'; did you mean shape"):
        train(tiny_config("check.tasks=[shapes]"), tmp_path / "run", home=world_home)
