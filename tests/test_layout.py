"""One home per fact: the unknown-name error, the world's folder layout, the eval result record,
and the world's robust teacher made by the alignment harness's own TeCoA."""
import json

import pytest
import torch
from safetensors.torch import load_file

from robust_w2s.align import train
from robust_w2s.checkpoints import WEIGHTS_FILE, read_checkpoint_config
from robust_w2s.errors import UnknownNameError, UserError, unknown_name
from robust_w2s.eval.records import EvalRecord, load_records
from robust_w2s.layout import WORLD_MODELS, data_dir, model_dir, model_spec, read_world, resolve_home
from robust_w2s.models import load_model
from robust_w2s.world.recipes import robust_teacher_config


def test_unknown_name_suggests_the_closest_and_lists_the_valid_ones():
    error = unknown_name("method", "adv_w2s", ["adv-w2s", "tecoa", "fare"])
    assert str(error) == "unknown method 'adv_w2s'; did you mean adv-w2s? (valid: adv-w2s, tecoa, fare)"
    assert isinstance(error, UserError) and isinstance(error, KeyError)
    assert str(unknown_name("suite", "zzz", ["paper14", "tecoa16"])) == "unknown suite 'zzz'; valid: paper14, tecoa16"
    many = [f"model-{i}" for i in range(100)]
    assert str(unknown_name("model", "zzz", many)) == "unknown model 'zzz'; 100 valid names"


def test_the_world_layout_is_the_one_the_loaders_read(world_home, monkeypatch):
    monkeypatch.setenv("RW2S_HOME", str(world_home))
    assert resolve_home() == world_home
    for name in WORLD_MODELS:
        assert (model_dir(name) / WEIGHTS_FILE).is_file()
        assert load_model(model_spec(name))[0] is not None
    world = read_world()
    assert all(data_dir(task).is_dir() for task in world["tasks"])
    assert data_dir(world["alignment_split"]).is_dir()
    with pytest.raises(UnknownNameError, match="did you mean strong"):
        model_dir("strongg")


def test_a_missing_world_is_none_or_a_one_line_error(tmp_path):
    assert read_world(tmp_path, required=False) is None
    with pytest.raises(UserError, match="run `robust-w2s pretrain`"):
        read_world(tmp_path)


def test_eval_records_round_trip_and_other_json_is_ignored(tmp_path):
    record = EvalRecord(model="local-dir:/runs/a b", dataset="shape", attack="pgd", eps=4 / 255, eps_label="4/255",
                        n_samples=10, seed=0, clean_acc=0.9, robust_acc=0.3, worst_case_acc=0.3,
                        audits={"nested": {"name": "nested", "passed": False, "detail": "2 violations"}},
                        audits_passed=False, seconds=1.5, dataset_seconds=2.0, protocol="embedded", settings={},
                        benchmark={"source": "embedded:shape", "split": "test", "n_classes": 8}, device="cpu",
                        versions={"torch": "x"})
    path = record.write(tmp_path)
    assert path.name == "local-dir-runs-a-b__shape__pgd__eps4-255.json"
    (tmp_path / "notes.json").write_text(json.dumps({"model": "x"}))
    assert load_records(tmp_path) == [record]
    assert record.failed_audits == ["nested: 2 violations"]


def test_the_worlds_robust_teacher_is_the_alignment_harness_tecoa(world_home, tiny_world_config, tmp_path):
    """Two routes, one TeCoA: training the recipe's config with the alignment loop gives, bit for
    bit, the weights the world build stored as its robust weak teacher."""
    config = robust_teacher_config(tiny_world_config.robust, tiny_world_config.seed)
    assert config.method.name == "tecoa" and config.student == model_spec("weak")
    trained = train(config, tmp_path / "tecoa", home=world_home)
    stored = model_dir("weak-robust", world_home)
    assert read_checkpoint_config(stored)["robust_w2s"]["method"] == "tecoa"
    ours, theirs = load_file(trained / WEIGHTS_FILE), load_file(stored / WEIGHTS_FILE)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    weak = load_file(model_dir("weak", world_home) / WEIGHTS_FILE)
    assert not torch.equal(weak["visual.conv1.weight"], theirs["visual.conv1.weight"])  # it did train


def test_the_attacks_load_without_the_clip_stack():
    """robust_w2s/__init__ imports its public names on first use: the attacks, which know nothing
    of CLIP, come without open_clip and datasets (and `robust-w2s --help` without torch)."""
    import subprocess
    import sys
    code = ("import sys, robust_w2s.attacks, robust_w2s.cli; "
            "print(' '.join(m for m in ('open_clip', 'datasets', 'robust_w2s.models') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "", done.stdout + done.stderr
