"""Linear to nonlinear (Oh, Song and Yun): the data generator's statistics against its config, the
student's compact forward pass against the paper's patch-wise definition, and the data-abundant
predictions recomputed from a tiny run."""
import math

import pytest
import torch

from robust_w2s.theory.linear_to_nonlinear import (BOTH, EASY, HARD, LinearToNonlinearConfig, boundary, predictions,
                                                   run, sample, student_output, train_weak, weak_predict)

CONFIG = LinearToNonlinearConfig(d=60, mu=2.0, p_e=0.3, p_h=0.2, sigma_p=1.5)


def test_generator_matches_the_data_model(single_thread):
    n = 20000
    data = sample(CONFIG, n, nu=3.0, generator=torch.Generator().manual_seed(0))
    X = data.patches()
    assert X.shape == (n, 3, CONFIG.d)
    # which signals the two signal patches carry, with the configured probabilities (4 sigma)
    for kind, p in ((EASY, CONFIG.p_e), (HARD, CONFIG.p_h), (BOTH, 1 - CONFIG.p_e - CONFIG.p_h)):
        assert abs((data.kind == kind).float().mean().item() - p) < 4 * math.sqrt(p * (1 - p) / n)
    # signal patch norms: ||mu|| or ||nu||, exactly; easy-only carries mu twice, hard-only nu twice
    norms = X[:, :2].norm(dim=2)
    expected = {EASY: (2.0, 2.0), HARD: (3.0, 3.0), BOTH: (2.0, 3.0)}
    for kind, (first, second) in expected.items():
        rows = data.kind == kind
        assert torch.allclose(norms[rows, 0], torch.tensor(first))
        assert torch.allclose(norms[rows, 1], torch.tensor(second))
    # the easy signal is y * mu on e_1; the hard one sits on e_2 (y = +1) or e_3 (y = -1) with a
    # random sign, so its mean given y is zero: invisible to any linear model
    easy = data.kind != HARD
    assert torch.equal(X[easy, 0, 0], data.y[easy] * 2.0)
    hard_rows = data.kind != EASY
    positive = X[hard_rows & (data.y > 0), 1]                   # x^(2) when it carries nu_{+1}
    assert positive[:, 1].abs().eq(3.0).all() and positive[:, 2].eq(0).all()
    assert abs(positive[:, 1].mean().item()) < 4 * 3.0 / math.sqrt(len(positive))
    # the noise patch: orthogonal to the signals, sigma_p^2 per remaining coordinate
    noise = X[:, 2]
    assert noise[:, :3].eq(0).all() and X[:, :2, 3:].eq(0).all()
    assert noise.square().sum(1).mean().item() == pytest.approx(1.5 ** 2 * (CONFIG.d - 3), rel=0.01)


def test_student_output_is_the_patchwise_two_layer_relu_cnn(single_thread):
    generator = torch.Generator().manual_seed(1)
    data = sample(CONFIG, 50, nu=3.0, generator=generator)
    W = torch.randn(2, CONFIG.m, CONFIG.d, generator=generator)
    F = torch.relu(torch.einsum("npd,jrd->njrp", data.patches(), W)).sum(dim=3).mean(dim=2)
    assert torch.allclose(student_output(W, data), F[:, 0] - F[:, 1], atol=1e-5)


def test_weak_linear_model_is_at_chance_on_hard_only_data(single_thread):
    generator = torch.Generator().manual_seed(2)
    w = train_weak(sample(CONFIG, 200, nu=3.0, generator=generator), CONFIG)
    test = sample(CONFIG, 4000, nu=3.0, generator=generator)
    correct = weak_predict(w, test) == test.y
    assert correct[test.kind != HARD].float().mean() > 0.97
    assert abs(correct[test.kind == HARD].float().mean().item() - 0.5) < 0.06


def test_boundary_interpolates_the_crossing_in_log_n():
    grid = {"n": [10, 40, 160], "gain": [[0.0, 0.01, 0.03], [0.05, 0.06, 0.07], [-0.01, 0.0, 0.01]]}
    crossings = boundary(grid, margin=0.02)
    assert crossings[0] == pytest.approx(math.sqrt(40 * 160))   # halfway between 0.01 and 0.03, in log n
    assert crossings[1:] == [None, None]                        # above from the start; never above


def test_data_abundant_predictions_recomputed_from_a_tiny_run(single_thread):
    """Label correction early, degradation when overtrained (Section 5), on a tiny problem."""
    config = LinearToNonlinearConfig(d=40, n_curves=(5, 20, 400), n_grid=(5,), nu_grid=(3.0,), T=300,
                                     n_test=1000, seeds=1)
    data = run(config, progress=False)
    large = data["curves"][2]
    peak = max(large["test_acc"])
    assert peak > large["teacher_acc"] + 0.05 and large["test_acc"][-1] < peak - 0.02
    assert large["train_fit"][-1] > large["train_fit"][large["test_acc"].index(peak)]   # it fits wrong labels later
    label_correction, overtraining = predictions(config, data)[1:3]
    assert label_correction.holds and overtraining.holds
