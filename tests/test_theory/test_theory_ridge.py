"""Mechanisms (Moniri and Hassani): the closed forms against gradient descent, and the ridge
predictions recomputed from a small run."""
import math

import numpy as np
import pytest
import torch
from tqdm import tqdm

from robust_w2s.theory.mechanisms import (MechanismsConfig, RidgeConfig, _ridge_predictions, ridge, run_ridge,
                                          student_path)
from robust_w2s.theory.records import gain


def gradient_descent(X, y, lam, Gamma, steps=4000):
    """argmin (1/n)||y - X beta||^2 + lam beta^T diag(Gamma) beta by plain gradient descent, with a
    step of 1 / (largest curvature), from zero: the route the closed form must agree with."""
    n = len(y)
    curvature = torch.linalg.eigvalsh(X.T @ X / n).max() + lam * Gamma.max()
    beta = torch.zeros(X.shape[1], dtype=X.dtype)
    for _ in range(steps):
        gradient = X.T @ (X @ beta - y) / n + lam * Gamma * beta
        beta -= gradient / curvature
    return beta


@pytest.mark.parametrize("weighted", [False, True])
def test_ridge_closed_form_is_the_gradient_descent_optimum(weighted, single_thread):
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(60, 20, generator=generator, dtype=torch.float64)
    y = torch.randn(60, generator=generator, dtype=torch.float64)
    Gamma = torch.rand(20, generator=generator, dtype=torch.float64) + 0.5 if weighted \
        else torch.ones(20, dtype=torch.float64)
    closed = ridge(X, y, 0.3, Gamma if weighted else None)
    assert torch.allclose(closed, gradient_descent(X, y, 0.3, Gamma), atol=1e-8)


@pytest.mark.parametrize("m", [50, 12])   # the student under- and over-parameterized (d = 20)
def test_student_path_agrees_with_ridge_on_teacher_labels(m, single_thread):
    generator = torch.Generator().manual_seed(1)
    X = torch.randn(m, 20, generator=generator, dtype=torch.float64)
    beta_T = torch.randn(20, generator=generator, dtype=torch.float64)
    Gamma = torch.rand(20, generator=generator, dtype=torch.float64) + 0.5
    lambdas = torch.tensor([0.0, 0.01, 1.0], dtype=torch.float64)
    path = student_path(X, beta_T, lambdas, Gamma)
    for k in (1, 2):
        assert torch.allclose(path[k], ridge(X, X @ beta_T, lambdas[k].item(), Gamma), atol=1e-9)
    # lam = 0: the minimum-Gamma-norm interpolator of the teacher's labels
    G = Gamma.sqrt()
    interpolator = torch.linalg.pinv(X / G) @ (X @ beta_T) / G
    assert torch.allclose(path[0], interpolator, atol=1e-8)


def test_gain_is_paired_by_seed():
    measured = gain([1.0, 2.0, 4.0], [0.9, 1.8, 3.6])
    assert measured.mean == pytest.approx(0.1) and measured.stderr == pytest.approx(0.0, abs=1e-12)
    assert measured.significant(2.0) and not gain([1.0, 1.0], [1.0, 1.0]).significant(2.0)


def test_ridge_predictions_recomputed_from_a_small_run(single_thread):
    """Compensation of an under-regularized teacher, none at lambda*: recomputed from the run's own
    numbers, and reported so by ``predictions``."""
    config = MechanismsConfig(ridge=RidgeConfig(d=40, gamma_T=(0.5,), gamma_S=(0.25,), lambda_T=(0.03, 1.0),
                                                lambda_S_count=15), seeds=6)
    data = run_ridge(config.ridge, list(range(6)), bar=tqdm(disable=True))
    regime = data["regimes"][0]
    assert regime["lambda_star"] == pytest.approx(0.5 ** 2 * (40 / 80))
    teacher, student = np.mean(regime["teacher"], axis=0), np.mean(regime["student"], axis=0)
    assert student[0].min() < 0.97 * teacher[0]                    # under-regularized: the student gains
    assert student[1].min() > 0.99 * teacher[1]                    # at lambda*: (almost) nothing to gain
    assert student[1][0] == pytest.approx(teacher[1], rel=1e-9)    # m > d: ridgeless reproduces the teacher
    assert [p.holds for p in _ridge_predictions(config, data)] == [True, True]


def test_bayes_optimal_lambda_star_is_the_best_teacher(single_thread):
    """lambda* = sigma^2 (d/n) / r^2 is the posterior mean's penalty: the teachers around it do worse."""
    config = RidgeConfig(d=40, gamma_T=(2.0,), gamma_S=(0.25,), lambda_T=(0.3, 1.0, 3.0), lambda_S_count=3)
    data = run_ridge(config, list(range(20)), bar=tqdm(disable=True))
    teacher = np.mean(data["regimes"][0]["teacher"], axis=0)
    assert teacher[1] < teacher[0] and teacher[1] < teacher[2]
    assert not math.isnan(teacher.sum())
