"""Tests that fail when the experiments' formulas or verdicts are broken: each one pins a piece of
logic (labels, training, truth, closed forms, thresholds) that a run's numbers alone would not reveal."""
import math

import numpy as np
import pytest
import torch
from tqdm import tqdm

from robust_w2s.cli import main
from robust_w2s.errors import UserError
from robust_w2s.theory import feature_elicitation as fe
from robust_w2s.theory import linear_to_nonlinear as l2n
from robust_w2s.theory import mechanisms as mech
from robust_w2s.theory.records import Prediction, gain

NO_BAR = tqdm(disable=True)


# --- feature elicitation -------------------------------------------------------------------------

FE = fe.FeatureElicitationConfig(d=16, K=3, N=6, T=300, n_test=2000, c=(0.0, 0.6), curvature=(1.0,), seeds=2)


def test_fine_tune_learns_from_its_own_labels_and_moves_W(single_thread):
    w2s = fe.fine_tune(FE, 0.6, 1.0, "w2s", 0)
    sft = fe.fine_tune(FE, 0.6, 1.0, "sft", 0)
    # the ranking truth is <theta, x1 - x2>: a learned student orders most pairs right (inverted: > 0.5)
    assert w2s["target_error"] < w2s["target_error_before"] < 0.5 and w2s["weak_error"] < 0.2
    # W2S on the (linear) weak labels ends at the weak model's ranking, SFT does not copy it
    assert abs(w2s["target_error"] - w2s["weak_error"]) < 0.02
    # W moves under SFT (a frozen W keeps retention at exactly 1) and SFT forgets more than W2S
    assert sft["retention"] < 0.99 and sft["retention"] < w2s["retention"] - 0.01


def test_large_curvature_stays_finite(single_thread):
    config = fe.FeatureElicitationConfig(d=16, K=3, N=6, T=100, n_test=500, c=(0.0, 0.6), curvature=(2.0,))
    result = fe.fine_tune(config, 0.6, 2.0, "sft", 0)
    assert all(math.isfinite(v) for v in result.values())


def _fe_data(w2s_retention, sft_retention, target=0.1, weak=0.1, before=0.3):
    rows = []
    for c, w, s in zip((0.0, 0.6), w2s_retention, sft_retention):
        rows.append({"curvature": 1.0, "c": c,
                     "w2s": {"target_error": target, "target_error_before": before, "weak_error": weak,
                             "retention": float(np.mean(w)), "retention_per_seed": list(w)},
                     "sft": {"target_error": target, "target_error_before": before, "weak_error": weak,
                             "retention": float(np.mean(s)), "retention_per_seed": list(s)}})
    return {"rows": rows}


def test_feature_elicitation_verdicts_follow_the_numbers():
    kept = ([1.0, 1.0], [1.0, 1.0])
    forgot = _fe_data(kept, ([1.0, 0.99], [0.80, 0.82]))
    assert [p.holds for p in fe.predictions(FE, forgot)] == [True, True, True]
    noisy = _fe_data(kept, ([1.0, 0.99], [0.70, 1.0]))          # a drop within its standard error
    assert not fe.predictions(FE, noisy)[2].holds
    flat = _fe_data(([0.9, 0.9], [0.9, 0.9]), ([1.0, 1.0], [0.995, 0.995]), target=0.2, before=0.1)
    assert [p.holds for p in fe.predictions(FE, flat)] == [False, False, False]
    one_seed = fe.FeatureElicitationConfig(d=16, K=3, c=(0.0, 0.6), curvature=(1.0,), seeds=1)
    single = {"rows": [{**row, "sft": {**row["sft"], "retention_per_seed": row["sft"]["retention_per_seed"][:1]}}
                       for row in forgot["rows"]]}
    assert "not testable with one seed" in fe.predictions(one_seed, single)[2].evidence


# --- mechanisms ----------------------------------------------------------------------------------

def test_hermite2_is_normalized():
    z = torch.randn(400000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    he2 = mech._hermite2(z)
    assert he2.mean().item() == pytest.approx(0, abs=0.01) and he2.var().item() == pytest.approx(1, abs=0.02)


def test_multi_index_pretraining_matters_and_weighted_alignment_helps(single_thread):
    config = mech.MultiIndexConfig(d=20, n_over_d=(16.0,), rho_S=(0.0, 1.0), n_test=2000)
    row = mech.run_multi_index(config, [0, 1], NO_BAR)["rows"][0]
    untrained, pretrained = np.mean(row["student"], axis=0)
    assert pretrained < 0.5 * untrained   # the true u_2 only at rho_S = 1
    weighted = mech.run_weighted(mech.WeightedRidgeConfig(d=60, a=(0.0, 1.0)), [0, 1, 2], NO_BAR)
    isotropic, aligned = np.mean(weighted["student"], axis=0).min(axis=1)
    assert aligned < 0.9 * isotropic      # Gamma = s^-a penalizes the weak directions


def test_lambda_star_scales_with_one_over_r_squared():
    config = mech.RidgeConfig(d=20, r=2.0, sigma=0.5, gamma_T=(0.5,), gamma_S=(0.25,), lambda_T=(1.0,),
                              lambda_S_count=2)
    regime = mech.run_ridge(config, [0], NO_BAR)["regimes"][0]
    assert regime["lambda_star"] == pytest.approx(0.25 * 0.5 / 4)


def test_ridge_at_zero_penalty_is_the_minimum_norm_solution():
    generator = torch.Generator().manual_seed(3)
    X = torch.randn(10, 30, generator=generator, dtype=torch.float64)
    y = torch.randn(10, generator=generator, dtype=torch.float64)
    assert torch.allclose(mech.ridge(X, y, 0.0), torch.linalg.pinv(X) @ y, atol=1e-10)
    assert torch.allclose(mech.ridge(X, y, 1e-9), mech.ridge(X, y, 0.0), atol=1e-5)


def test_ridge_predictions_use_the_over_parameterized_formula_and_sorted_penalties(single_thread):
    base = dict(d=30, gamma_T=(2.0,), gamma_S=(2.0,), lambda_S_count=3)
    config = mech.MechanismsConfig(ridge=mech.RidgeConfig(lambda_T=(0.3, 1.0), **base), seeds=4)
    data = mech.run_ridge(config.ridge, [0, 1, 2, 3], NO_BAR)
    over = mech._ridge_predictions(config, data)[0]
    assert over.holds
    # a ridgeless student that kept the teacher entirely would break the (m/d) R_T + (1 - m/d) r^2 formula
    broken = {**data, "regimes": [{**data["regimes"][0], "student": [
        [[t] * len(curves) for t, curves in zip(teacher, students)]
        for teacher, students in zip(data["regimes"][0]["teacher"], data["regimes"][0]["student"])]}]}
    assert not mech._ridge_predictions(config, broken)[0].holds
    shuffled = mech.MechanismsConfig(ridge=mech.RidgeConfig(lambda_T=(1.0, 0.3), **base), seeds=4)
    again = mech.run_ridge(shuffled.ridge, [0, 1, 2, 3], NO_BAR)
    assert [p.holds for p in mech._ridge_predictions(shuffled, again)] == \
        [p.holds for p in mech._ridge_predictions(config, data)]


def test_gain_round_off_floor_and_one_seed():
    assert not gain([1e-30, 2e-30], [1e-31, 1e-31]).significant(2.0)     # noiseless: both zero
    assert gain([1.0, 1.0], [1.0 - 1e-12, 1.0 - 1e-12]).significant(2.0) is False
    assert not gain([1.0], [0.5]).significant(2.0)                          # one seed: no standard error
    assert gain([1.0, 1.1, 0.9], [0.5, 0.6, 0.4]).significant(2.0)


def test_zero_penalty_teacher_and_noiseless_labels_run(single_thread):
    for overrides in (["ridge.lambda_T=0,1", "ridge.d=20"], ["ridge.sigma=0", "ridge.d=20"]):
        config = mech.parse_overrides(mech.MechanismsConfig(), overrides) if hasattr(mech, "parse_overrides") \
            else __import__("robust_w2s.theory", fromlist=["x"]).parse_overrides(mech.MechanismsConfig(), overrides)
        data = mech.run_ridge(config.ridge, [0, 1], NO_BAR)
        teacher = np.mean(data["regimes"][1]["teacher"], axis=0)
        assert np.isfinite(teacher).all() and teacher.max() < 5


# --- linear to nonlinear -------------------------------------------------------------------------

def test_weak_model_is_the_two_filter_linear_cnn():
    config = l2n.LinearToNonlinearConfig(d=20, T_weak=30, eta_weak=0.2)
    data = l2n.sample(config, 50, 3.0, torch.Generator().manual_seed(0))
    X = data.patches().sum(dim=1)
    w_pos, w_neg = torch.zeros(20, requires_grad=True), torch.zeros(20, requires_grad=True)
    for _ in range(config.T_weak):
        loss = torch.nn.functional.softplus(-data.y * (X @ (w_pos - w_neg))).mean()
        g_pos, g_neg = torch.autograd.grad(loss, (w_pos, w_neg))
        with torch.no_grad():
            w_pos -= config.eta_weak * g_pos
            w_neg -= config.eta_weak * g_neg
    assert torch.allclose(l2n.train_weak(data, config), (w_pos - w_neg).detach(), atol=1e-5)


def _curve(n, teacher, test, fit, steps=(0, 10, 100)):
    return {"n": n, "teacher_acc": teacher, "step": list(steps), "test_acc": list(test),
            "hard_acc": [None] * len(steps), "train_fit": list(fit), "corrected": [0.0, 0.9, 0.2]}


def test_linear_to_nonlinear_verdicts_follow_the_numbers():
    config = l2n.LinearToNonlinearConfig(d=100, n_curves=(10, 50, 500), n_grid=(10, 20, 40), nu_grid=(2.0, 4.0))
    grid = {"n": [10, 20, 40], "nu": [2.0, 4.0], "gain": [[0, 0, 0.05], [0, 0.05, 0.06]], "train_fit": []}
    good = {"curves": [_curve(10, 0.9, (0.5, 0.9, 0.9), (0.5, 1, 1)), _curve(50, 0.9, (0.5, 0.9, 0.95), (0.5, 1, 1)),
                       _curve(500, 0.9, (0.5, 0.99, 0.93), (0.5, 0.9, 0.99))], "grid": grid}
    assert [p.holds for p in l2n.predictions(config, good)] == [True, True, True, True]
    # the student beating its teacher at small n is not harmful overfitting; labels by n/d, not position
    bad = {"curves": [_curve(10, 0.9, (0.5, 0.95, 0.95), (0.5, 1, 1)), _curve(50, 0.9, (0.5, 0.9, 0.95), (0.5, 1, 1)),
                      _curve(500, 0.9, (0.99, 0.95, 0.93), (0.5, 0.9, 0.99))],
           "grid": {**grid, "gain": [[0, 0.05, 0.06], [0, 0, 0.05]]}}
    verdicts = l2n.predictions(config, bad)
    assert not verdicts[0].holds                                         # both above the teacher: no harmful
    assert not verdicts[1].holds and not verdicts[2].holds               # the peak is at step 0
    assert not verdicts[3].holds                                         # n* rises with nu
    scarce_only = l2n.LinearToNonlinearConfig(d=10000, n_curves=(10, 50, 500), n_grid=(10, 20, 40),
                                              nu_grid=(2.0, 4.0))
    assert "not testable" in l2n.predictions(scarce_only, good)[1].evidence


def test_partly_is_a_verdict_of_its_own():
    assert Prediction("x", False, "y", partly=True).verdict == "partly holds here"
    assert Prediction("x", True, "y").verdict == "holds here"


# --- bad input: one line, exit 2, before any compute ---------------------------------------------

@pytest.mark.parametrize("name, override", [
    ("linear-to-nonlinear", "mu=nan"), ("linear-to-nonlinear", "mu=inf"), ("linear-to-nonlinear", "eta=-1"),
    ("linear-to-nonlinear", "T_weak=-1"), ("linear-to-nonlinear", "margin=-1"), ("linear-to-nonlinear", "sigma_p=-1"),
    ("mechanisms", "ridge.gamma_T=0,1,2"), ("mechanisms", "ridge.r=0"), ("mechanisms", "weighted.gamma_S=0"),
    ("mechanisms", "ridge.lambda_S_min=0"), ("mechanisms", "multi_index.n_test=0"), ("mechanisms", "multi_index.d=2"),
    ("mechanisms", "ridge.lambda_T=-1,1"), ("mechanisms", "ridge.lambda_S_count=0"),
    ("mechanisms", "multi_index.n_over_d=0"), ("mechanisms", "seeds=1"),
    ("feature-elicitation", "n_test=0"), ("feature-elicitation", "K=1"), ("feature-elicitation", "curvature=100"),
    ("feature-elicitation", "eta=10"),
])
def test_bad_settings_are_one_line_errors_before_compute(name, override, capsys, tmp_path):
    assert main(["theory", name, "--set", override, "--output-dir", str(tmp_path / "out")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_output_dir_that_is_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(UserError):
        from robust_w2s.theory.lab import check_output_dir
        check_output_dir(target)
    assert main(["theory", "mechanisms", "--output-dir", str(target)]) == 2
