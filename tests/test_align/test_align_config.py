"""Config files and --set overrides: typed, unknown keys suggested, bad input exits 2 with one line."""
from pathlib import Path

import pytest

from robust_w2s import cli
from robust_w2s.align.config import load_config
from robust_w2s.errors import UserError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
EMBEDDED = ["adv-w2s", "adv-w2s-base", "adv-w2s-eur", "adv-w2s-iar", "vanilla-w2s", "tecoa", "pmg-aft",
            "fare", "agft"]


def test_every_shipped_config_loads_and_embedded_ones_share_one_budget():
    configs = {name: load_config(CONFIGS / "embedded" / f"{name}.yaml") for name in EMBEDDED}
    budgets = {(c.train.steps, c.train.batch_size, c.attack.steps, c.attack.eps, c.optim.lr, c.student, c.teacher)
               for c in configs.values()}
    assert len(budgets) == 1
    hooks = {name: (c.method.reweighting, c.method.guidance) for name, c in configs.items()}
    assert (hooks["adv-w2s-base"], hooks["adv-w2s-eur"]) == (("beta", "teacher"), ("eur", "teacher"))
    assert (hooks["adv-w2s-iar"], hooks["adv-w2s"]) == (("beta", "iar"), ("eur", "iar"))
    paper = load_config(CONFIGS / "paper" / "adv-w2s.yaml")
    assert (paper.attack.eps, paper.attack.steps, paper.attack.alpha) == ("2/255", 10, "1/255")
    assert paper.student.startswith("ViT-L-14") and paper.teacher.startswith("ViT-B-32")


def test_overrides_are_typed():
    config = load_config(None, ["optim.lr=1e-4", "method.raven.lr=0.5", "attack.eps=2/255", "train.steps=7",
                                "check.tasks=[shape]", "attack.alpha=0.01"])
    assert config.optim.lr == 1e-4 and config.method.raven.lr == 0.5 and config.attack.eps == "2/255"
    assert config.train.steps == 7 and config.check.tasks == ["shape"] and config.attack.alpha == 0.01


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1e-4", "unknown config key 'optim.lrr'; did you mean optim.lr"),
    ("mehtod.name=fare", "did you mean method?"),
    ("train.steps=abc", "'train.steps': expected int, got 'abc'"),
    ("train.steps=1.5", "expected int"),
    ("method.guidance=3", "expected str or null"),
    ("method.raven.lrr=3", "did you mean method.raven.lr"),
    ("optim.lr=fast", "expected float"),
    ("train=3", "is a section"),
    ("novalue", "expected key=value"),
])
def test_bad_overrides_raise_one_line_user_errors(override, message):
    with pytest.raises(UserError, match=message.replace("?", r"\?").replace("[", r"\[")):
        load_config(None, [override])


def test_yaml_errors(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lr: 1e-4\n  warmup: 3\n")  # 1e-4 is a YAML string: still a float
    with pytest.raises(UserError, match="did you mean optim.warmup_steps"):
        load_config(path)
    path.write_text("optim: [1, 2]\n")
    with pytest.raises(UserError, match="is a section"):
        load_config(path)


def test_cli_align_bad_config_exits_2_with_one_line(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("method: {name: adv-w3s}\n")
    assert cli.main(["align", "--config", str(path), "--output-dir", str(tmp_path / "run"),
                     "--home", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown method 'adv-w3s'; did you mean adv-w2s?" in err
    assert cli.main(["align", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert cli.main(["align", "--config", str(path), "--set", "optim.lr=x"]) == 2
