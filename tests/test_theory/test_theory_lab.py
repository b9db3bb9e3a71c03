"""The lab: typed --set overrides and their one-line errors, and `theory all` writing the report
with every plot and verdict from the experiments' own JSON."""
import json

import pytest

from robust_w2s.cli import main
from robust_w2s.errors import UserError
from robust_w2s.theory import parse_overrides, run_all
from robust_w2s.theory.linear_to_nonlinear import LinearToNonlinearConfig
from robust_w2s.theory.mechanisms import MechanismsConfig
from robust_w2s.theory.report import markdown_text


def test_overrides_are_parsed_as_the_fields_types():
    config = parse_overrides(LinearToNonlinearConfig(), ["d=64", "mu=2.5", "nu_grid=1,2.5", "n_curves=5, 50,500"])
    assert (config.d, config.mu, config.nu_grid, config.n_curves) == (64, 2.5, (1.0, 2.5), (5, 50, 500))
    nested = parse_overrides(MechanismsConfig(), ["ridge.d=30", "multi_index.rho_S=0,1", "seeds=4"])
    assert (nested.ridge.d, nested.multi_index.rho_S, nested.seeds) == (30, (0.0, 1.0), 4)
    assert MechanismsConfig().ridge.d == 200            # the defaults are not touched


@pytest.mark.parametrize("override, message", [
    ("sedd=1", "unknown setting 'sedd'; did you mean seed or seeds? (valid: d, mu, nu,"),
    ("d=3.5", "--set d=3.5: expected an integer"),
    ("mu=two", "--set mu=two: expected a number"),
    ("n_grid=10,,20", "expected a comma-separated list of int"),
    ("d", "expected key=value"),
    ("p_h=0.8", "p_e + p_h <= 1"),        # the config's own check runs on the overridden values
    ("d.x=1", "d is a single value, not a section"),
])
def test_bad_overrides_are_one_line_user_errors(override, message):
    with pytest.raises(UserError) as error:
        parse_overrides(LinearToNonlinearConfig(), [override])
    assert message in str(error.value) and "\n" not in str(error.value)


def test_unknown_nested_key_names_the_valid_ones():
    with pytest.raises(UserError) as error:
        parse_overrides(MechanismsConfig(), ["ridge.dd=3"])
    assert "unknown setting 'ridge.dd'" in str(error.value) and "ridge.d," in str(error.value)


def test_cli_bad_input_exits_2_with_one_line(capsys):
    assert main(["theory", "mechanisms", "--set", "ridge.lambda_T=a,b"]) == 2
    assert main(["theory", "all", "--set", "seeds=3"]) == 2
    assert main(["theory", "nonsense"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and "expected a comma-separated list of float" in lines[0]
    assert "name the experiment first" in lines[1] and "valid: linear-to-nonlinear, mechanisms" in lines[2]
    assert main(["theory", "all", "--set", "nosuch.x=1"]) == 2
    assert "all" not in capsys.readouterr().err.split("valid:")[1]


TINY = ["linear-to-nonlinear.d=30", "linear-to-nonlinear.n_curves=5,20,200", "linear-to-nonlinear.n_grid=5,20",
        "linear-to-nonlinear.nu_grid=2,4", "linear-to-nonlinear.T=100", "linear-to-nonlinear.n_test=500",
        "linear-to-nonlinear.seeds=1", "mechanisms.ridge.d=20", "mechanisms.weighted.d=20",
        "mechanisms.multi_index.d=20", "mechanisms.multi_index.n_test=500", "mechanisms.seeds=2",
        "feature-elicitation.d=12", "feature-elicitation.K=3", "feature-elicitation.c=0,0.6",
        "feature-elicitation.curvature=0.5", "feature-elicitation.T=50", "feature-elicitation.n_test=500",
        "feature-elicitation.seeds=1", "feature-elicitation.seed=7"]


def test_theory_all_writes_every_plot_and_verdict(tmp_path, single_thread):
    report = run_all(TINY, tmp_path, command="robust-w2s theory all --set ...", progress=False)
    text = report.read_text()
    assert report == tmp_path / "theory.md" and "robust-w2s theory all --set ..." in text
    for name in ("linear-to-nonlinear", "mechanisms", "feature-elicitation"):
        record = json.loads((tmp_path / "theory" / f"{name}.json").read_text())
        assert record["config"]["seed"] == record["seed"]
        for figure in record["figures"]:
            assert (tmp_path / "theory" / figure).stat().st_size > 0 and f"(theory/{figure})" in text
        for prediction in record["predictions"]:
            verdict = ("holds here" if prediction["holds"] else "partly holds here" if prediction["partly"]
                       else "does not hold here")
            assert f"| {markdown_text(prediction['claim'])} | **{verdict}** |" in text
    recorded = json.loads((tmp_path / "theory" / "feature-elicitation.json").read_text())
    assert (recorded["seed"], recorded["config"]["c"], recorded["config"]["K"]) == (7, [0.0, 0.6], 3)
