import json

import pytest

from robust_w2s.cli import main

REQUIRED = {"model", "dataset", "attack", "eps", "n_samples", "seed", "clean_acc", "robust_acc", "audits", "seconds"}


def test_eval_writes_one_file_per_result_and_the_report(world_home, tmp_path):
    out = tmp_path / "eval"
    code = main(["eval", "--model", "embedded:strong", "--dataset", "embedded/shape", "--attack", "pgd",
                 "--eps", "1/255,8/255", "--n-samples", "16", "--seed", "3", "--home", str(world_home),
                 "--output-dir", str(out), "--allow-unsound"])
    assert code == 0
    files = sorted(out.glob("*.json"))
    assert len(files) == 2
    records = [json.loads(f.read_text()) for f in files]
    for record in records:
        assert REQUIRED <= record.keys()
        assert record["n_samples"] == 16 and record["seed"] == 3 and record["dataset"] == "shape"
        assert record["robust_acc"] <= record["clean_acc"]
    assert {round(r["eps"] * 255) for r in records} == {1, 8}
    for name in ("report.md", "results.csv", "robust_vs_eps.png"):
        assert (out / name).stat().st_size > 0


def test_eval_defaults_to_the_worlds_protocol(world_home, tmp_path):
    out = tmp_path / "eval"
    main(["eval", "--model", "embedded:weak", "--dataset", "embedded/colour", "--n-samples", "8",
          "--home", str(world_home), "--output-dir", str(out), "--allow-unsound"])
    (record,) = [json.loads(f.read_text()) for f in out.glob("*.json")]
    world = json.loads((world_home / "world" / "world.json").read_text())
    assert record["eps"] == world["epsilon"] and record["attack"] == "pgd"
    assert record["settings"]["pgd_steps"] == 20


@pytest.mark.parametrize("flag, value", [("--eps", "4/0"), ("--attack", "fgsm"), ("--protocol", "tecao")])
def test_eval_bad_flags_exit_2(world_home, tmp_path, capsys, flag, value):
    code = main(["eval", "--model", "embedded:weak", "--dataset", "embedded/colour", flag, value,
                 "--home", str(world_home), "--output-dir", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert value in err and err.count("\n") == 1


def test_failed_audit_exits_1_unless_allowed(world_home, tmp_path, monkeypatch):
    monkeypatch.setattr("robust_w2s.eval.audits.MIN_NONZERO_GRADIENTS", 1.01)  # no model can pass this audit
    args = ["eval", "--model", "embedded:weak", "--dataset", "embedded/colour", "--n-samples", "4",
            "--pgd-steps", "1", "--home", str(world_home), "--output-dir", str(tmp_path)]
    assert main(args) == 1
    records = [json.loads(path.read_text()) for path in tmp_path.glob("*.json")]
    assert records and all(not r["audits"]["nonzero_gradients"]["passed"] for r in records)
    assert main(args + ["--allow-unsound"]) == 0
