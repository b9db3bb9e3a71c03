import json
import sys

import open_clip
import pytest
import torch

from robust_w2s import UserError, load_checkpoint, save_checkpoint
from robust_w2s.checkpoints import CONFIG_FILE, WEIGHTS_FILE


def _outputs(model, tokenizer):
    torch.manual_seed(1)
    images = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokenizer(["a red circle.", "a star."]))


def test_round_trip_through_plain_open_clip(tmp_path, tiny_model):
    model, tokenizer = tiny_model
    with torch.no_grad():
        model.logit_scale.fill_(2.5)  # a non-default value must survive too
    save_checkpoint(model, tmp_path / "ckpt")
    plain, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'ckpt'}")
    plain.eval()
    for expected, got in zip(_outputs(model, tokenizer), _outputs(plain, open_clip.get_tokenizer(
            f"local-dir:{tmp_path / 'ckpt'}"))):
        assert torch.equal(expected, got)
    assert plain.logit_scale.item() == pytest.approx(2.5)
    ours, _, our_tokenizer = load_checkpoint(tmp_path / "ckpt")
    assert torch.equal(_outputs(ours, our_tokenizer)[0], _outputs(model, tokenizer)[0])
    same = lambda cfg: json.loads(json.dumps(cfg))  # tuples come back as lists
    assert same(open_clip.get_model_preprocess_cfg(ours)) == same(open_clip.get_model_preprocess_cfg(model))


def test_overwrite_is_atomic_when_the_write_fails(tmp_path, tiny_model, monkeypatch):
    model, _ = tiny_model
    folder = save_checkpoint(model, tmp_path / "ckpt")
    before = (folder / WEIGHTS_FILE).read_bytes()
    with torch.no_grad():
        model.visual.conv1.weight.add_(1.0)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # a run killed in the middle of writing

    monkeypatch.setattr("robust_w2s.checkpoints.save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(model, folder)
    assert (folder / WEIGHTS_FILE).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"], "no staging folder left behind"


def test_wrong_architecture_is_a_one_line_error(tmp_path, tiny_model):
    model, _ = tiny_model
    folder = save_checkpoint(model, tmp_path / "ckpt")
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["model_cfg"]["vision_cfg"]["width"] = 64
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(UserError) as error:
        load_checkpoint(folder)
    message = str(error.value)
    assert "architecture" in message and "\n" not in message


def test_missing_and_corrupt_checkpoints_are_user_errors(tmp_path, tiny_model):
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "nowhere")
    folder = save_checkpoint(tiny_model[0], tmp_path / "ckpt")
    (folder / WEIGHTS_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="safetensors"):
        load_checkpoint(folder)


# A writer that saves two versions of the tiny model in turn into CKPT, forever; "ready" once it writes.
_WRITER = """
import sys, open_clip, torch
from robust_w2s.checkpoints import save_checkpoint
sys.path.insert(0, sys.argv[2])
from conftest import TINY_CONFIG
open_clip.factory._MODEL_CONFIGS["rw2s-test-tiny"] = TINY_CONFIG
models = []
for seed in (0, 1):
    torch.manual_seed(seed)
    models.append(open_clip.create_model("rw2s-test-tiny"))
    models[-1].rw2s_model_cfg = TINY_CONFIG
save_checkpoint(models[0], sys.argv[1])
print("ready", flush=True)
while True:
    for model in models:
        save_checkpoint(model, sys.argv[1])
"""


def test_a_checkpoint_being_rewritten_loads_at_every_instant_and_after_a_kill(tmp_path):
    import random
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    folder = tmp_path / "ckpt"
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(folder), str(Path(__file__).parent)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "ready\n"
        rng = random.Random(0)
        versions, staging = set(), []
        while len(versions) < 2 or not staging:  # frozen at random instants: on disk is what a kill leaves
            time.sleep(rng.uniform(0, 0.05))
            writer.send_signal(signal.SIGSTOP)
            model = open_clip.create_model(f"local-dir:{folder}")
            versions.add(model.visual.conv1.weight.sum().item())
            staging = [p.name for p in tmp_path.iterdir() if p.name != "ckpt"]
            if len(versions) == 2 and staging:
                writer.kill()  # killed in the middle of a write
            writer.send_signal(signal.SIGCONT)
    finally:
        writer.kill()
        writer.wait()
    open_clip.create_model(f"local-dir:{folder}")
    save_checkpoint(load_checkpoint(folder)[0], folder)  # the next writer removes what the killed one left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"], staging


@pytest.mark.skipif(sys.platform != "linux", reason="the one-step exchange is Linux's renameat2")
def test_replacing_a_checkpoint_never_leaves_the_path_empty(tmp_path, tiny_model, monkeypatch):
    from robust_w2s import checkpoints

    model, _ = tiny_model
    folder = save_checkpoint(model, tmp_path / "ckpt")
    real_replace, missing = checkpoints.os.replace, []

    def replace(source, target):  # every rename of the write: is the folder there at that instant?
        missing.append(not folder.exists())
        real_replace(source, target)
        missing.append(not folder.exists())

    monkeypatch.setattr(checkpoints.os, "replace", replace)
    with torch.no_grad():
        model.visual.conv1.weight.add_(1.0)
    save_checkpoint(model, folder)
    assert not any(missing)
    assert torch.equal(load_checkpoint(folder)[0].visual.conv1.weight, model.visual.conv1.weight)


def test_where_folders_cannot_be_exchanged_a_kill_between_the_renames_is_recovered(tmp_path, tiny_model,
                                                                                   monkeypatch):
    from robust_w2s import checkpoints

    model, _ = tiny_model
    folder = save_checkpoint(model, tmp_path / "ckpt")
    before = (folder / WEIGHTS_FILE).read_bytes()
    monkeypatch.setattr(checkpoints, "_exchange", lambda a, b: False)  # NFS, macOS
    real_replace = checkpoints.os.replace

    def killed_after_moving_the_old_aside(source, target):
        real_replace(source, target)
        if target == checkpoints._previous(folder):
            raise SystemExit  # the process dies between the two renames

    monkeypatch.setattr(checkpoints.os, "replace", killed_after_moving_the_old_aside)
    with pytest.raises(SystemExit):
        save_checkpoint(model, folder)
    monkeypatch.setattr(checkpoints.os, "replace", real_replace)
    assert not folder.exists()
    checkpoints.recover_folder(folder)  # what the next write, train_or_resume and --resume do first
    assert (folder / WEIGHTS_FILE).read_bytes() == before
    with torch.no_grad():
        model.visual.conv1.weight.add_(1.0)
    save_checkpoint(model, folder)  # the fallback replaces it whole
    assert (folder / WEIGHTS_FILE).read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_folder_is_held_by_one_process_and_released_when_it_is_killed(tmp_path):
    import os
    import subprocess
    import sys

    from robust_w2s.checkpoints import exclusive_folder

    with exclusive_folder(tmp_path / "run"):
        with pytest.raises(UserError) as error:  # a second open of the lock, as another process would
            with exclusive_folder(tmp_path / "run"):
                pass
    assert str(tmp_path / "run") in str(error.value) and f"pid {os.getpid()}" in str(error.value)

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from robust_w2s.checkpoints import "
                               "exclusive_folder\nwith exclusive_folder(sys.argv[1]):\n print('held', flush=True);"
                               " time.sleep(600)", str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(UserError, match=f"pid {holder.pid} "):
            with exclusive_folder(tmp_path / "run"):
                pass
    finally:
        holder.kill()  # SIGKILL: no cleanup runs, the system releases the lock
        holder.wait()
    with exclusive_folder(tmp_path / "run"):
        pass


def test_a_killed_runs_orphaned_children_do_not_block_the_next_run(tmp_path):
    """A SIGKILLed run's forked children (DataLoader workers) keep its flock until they exit: the next
    run waits for them while the recorded holder is dead, instead of refusing."""
    import subprocess
    import sys
    import time

    from robust_w2s.checkpoints import ORPHAN_GRACE_SECONDS, exclusive_folder

    script = ("import os, sys, time\nfrom robust_w2s.checkpoints import exclusive_folder\n"
              "with exclusive_folder(sys.argv[1]):\n    if os.fork() == 0:\n        time.sleep(3)\n        os._exit(0)\n"
              "    print('held', flush=True)\n    time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    holder.kill()
    holder.wait()
    started = time.monotonic()
    with exclusive_folder(tmp_path / "run"):  # the orphan still holds it for ~3 s: waited for, not refused
        pass
    assert 1 < time.monotonic() - started < ORPHAN_GRACE_SECONDS
