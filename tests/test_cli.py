import json
import subprocess
import sys
from pathlib import Path

import pytest

from robust_w2s.cli import main
from robust_w2s.world.stages import build_world

ROOT = Path(__file__).resolve().parents[1]


def test_zeroshot_json_follows_the_contract(world_home, tiny_world_config, tmp_path, capsys):
    output = tmp_path / "zs.json"
    assert main(["zeroshot", "--model", "embedded:strong", "--suite", "embedded",
                 "--home", str(world_home), "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    world = json.loads((world_home / "world" / "world.json").read_text())
    assert report["model"] == "embedded:strong"
    assert list(report["tasks"]) == world["tasks"]
    for row in report["tasks"].values():
        assert row["n"] == tiny_world_config.test_size and 0.0 <= row["clean_acc"] <= 1.0
    printed = capsys.readouterr().out
    assert all(task in printed for task in world["tasks"])


def test_zeroshot_agrees_with_the_build_measurement(world_home, tmp_path):
    output = tmp_path / "weak.json"
    main(["zeroshot", "--model", "embedded:weak-robust", "--suite", "embedded", "--home", str(world_home),
          "--output", str(output)])
    measured = json.loads((world_home / "world" / "world.json").read_text())["measured"]["weak-robust"]
    for task, row in json.loads(output.read_text())["tasks"].items():
        assert row["clean_acc"] == pytest.approx(measured[task]["clean_acc"])


def test_world_record_and_cache_reuse(world_home, tiny_world_config):
    record = json.loads((world_home / "world" / "world.json").read_text())
    assert record["epsilon"] == tiny_world_config.epsilon and record["alignment_task"] in record["tasks"]
    weights = world_home / "world" / "strong" / "open_clip_model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert build_world(world_home, tiny_world_config) == record
    assert weights.stat().st_mtime_ns == stamp, "a cached world must not be rebuilt"


@pytest.mark.parametrize("model, dataset, named", [
    ("nonsense-net", "embedded/shape", "nonsense-net"),
    ("embedded:strong", "local:{tmp}/empty", "empty"),
    ("embedded:strong", "embedded/no-such-task", "no-such-task"),
])
def test_bad_input_exits_2_with_one_line(world_home, tmp_path, model, dataset, named):
    (tmp_path / "empty").mkdir()
    result = subprocess.run([sys.executable, "-m", "robust_w2s.cli", "zeroshot", "--model", model,
                             "--dataset", dataset.format(tmp=tmp_path), "--home", str(world_home)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and named in result.stderr


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text().splitlines()
    test_command = next(line for line in readme[:20] if "pytest" in line).strip().strip("`")
    last_step = test_command.split("&&")[-1].strip()
    assert last_step in (ROOT / ".ci" / "run").read_text()


def test_one_run_per_output_folder_align_and_demo_refuse_a_folder_in_use(world_home, tmp_path, capsys):
    import os
    import time

    from robust_w2s.checkpoints import exclusive_folder

    run = tmp_path / "run"
    align = ["align", "--config", str(ROOT / "configs" / "embedded" / "adv-w2s.yaml"), "--output-dir", str(run),
             "--home", str(world_home), "--set", "train.steps=1000", "--set", "train.batch_size=8",
             "--set", "check.tasks=[]"]
    first = subprocess.Popen([sys.executable, "-m", "robust_w2s.cli", *align], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        while not (run / "log.jsonl").is_file():  # training: the folder is held
            assert first.poll() is None, "the first align ended early"
            time.sleep(0.1)
        assert main(align) == 2
        refusal = capsys.readouterr().err
        assert refusal.count("\n") == 1 and str(run) in refusal and f"pid {first.pid} " in refusal, refusal
    finally:
        first.kill()  # SIGKILL: the system releases its lock
        first.wait()
    with exclusive_folder(run):  # free again; held here, as by a running demo
        assert main(["demo", "--quick", "--output-dir", str(run), "--home", str(tmp_path / "home")]) == 2
    refusal = capsys.readouterr().err
    assert refusal.count("\n") == 1 and str(run) in refusal and f"pid {os.getpid()} " in refusal, refusal
    assert not (tmp_path / "home").exists()  # refused before building anything
