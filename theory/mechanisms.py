"""On the mechanisms of weak-to-strong generalization (Moniri and Hassani, 2025, arXiv:2505.18346):
three mechanisms, each a small experiment with closed-form estimators.

1. Ridge (Section 2): x ~ N(0, I_d), y = <beta*, x> + eps, beta* ~ N(0, (r^2/d) I), eps ~ N(0, sigma^2).
   The teacher is ridge regression on n labelled samples with penalty lambda_T; the student is ridge
   on m fresh inputs labelled by the teacher, penalty lambda_S. A student can compensate a teacher's
   under-regularization. With this prior the ridge at lambda* = sigma^2 (d/n) / r^2 is the posterior
   mean, so no student built on it can do better on average: a gain needs lambda_T below lambda*.

2. Weighted ridge (Section 3): beta*_i ~ N(0, s_i), s_i proportional to i^(-alpha). The teacher is
   isotropic ridge at its best lambda_T; the student's penalty lambda_S beta^T Gamma beta uses
   Gamma = diag(s_i^(-a)) (mean 1): a = 0 is isotropic, a = 1 is aligned with the target's spectrum.

3. Multi-index (Section 4): y = a_1 He_1(<u_1, x>) + a_2 He_2(<u_2, x>)/sqrt(2) + eps. The teacher
   learns the easy direction u_1 from the first moment of its n labelled samples and the hard one u_2
   from the top eigenvector of the second moment (the one-gradient-step estimators of information
   exponent 1 and 2) on one half of its n labelled samples, then fits its output layer on the other
   half. The student learns the easy direction from the
   teacher's labels on m inputs, takes the hard direction w_2 from its own pretraining (overlap
   rho_S with u_2), and fits its output layer to the teacher's labels. Our construction: the paper's
   exact pretraining model was not available to us; here pretraining supplies only a direction, so
   the student can only elicit the hard component that the teacher's labels carry.

Errors are excess test risks E[(f(x) - f*(x))^2], means over ``seeds`` draws; a student's gain over
its teacher counts when its mean exceeds z standard errors over those draws (paired by draw). The
best lambda_S is chosen on the mean curve (an oracle choice: the papers ask whether some student
penalty beats the teacher). d, r, sigma, the regimes and the lambda grids are ours.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from robust_w2s.errors import UserError

from .records import Prediction, gain


@dataclass(frozen=True)
class RidgeConfig:
    """Mechanism 1 (Section 2); regimes are zipped pairs (gamma_T[k], gamma_S[k])."""
    d: int = 200                                   # input dimension
    r: float = 1.0                                 # signal strength: E||beta*||^2 = r^2
    sigma: float = 0.5                             # label-noise standard deviation
    gamma_T: tuple[float, ...] = (0.5, 2.0, 2.0)   # d/n of the teacher, per regime
    gamma_S: tuple[float, ...] = (0.25, 0.25, 2.0) # d/m of the student, per regime
    lambda_T: tuple[float, ...] = (0.03, 0.3, 1.0, 3.0)   # teacher penalties, as multiples of lambda*
    lambda_S_min: float = 1e-3                     # the student's penalties: 0, then a log grid
    lambda_S_max: float = 30.0
    lambda_S_count: int = 25

    def __post_init__(self):
        _check(self.d >= 2, f"ridge.d must be >= 2, got {self.d}")
        _check(_finite(self.r) and self.r > 0, f"ridge.r must be > 0, got {self.r}")
        _check(_finite(self.sigma) and self.sigma >= 0, f"ridge.sigma must be >= 0, got {self.sigma}")
        _check(len(self.gamma_T) == len(self.gamma_S) and len(self.gamma_T) > 0,
               "ridge.gamma_T and ridge.gamma_S take one value per regime, as many of each")
        _check(all(_finite(g) and g > 0 for g in self.gamma_T + self.gamma_S),
               f"ridge.gamma_T and ridge.gamma_S are ratios d/n, d/m: must be > 0, got {self.gamma_T}, {self.gamma_S}")
        _check(len(self.lambda_T) > 0 and all(_finite(v) and v >= 0 for v in self.lambda_T)
               and len(set(self.lambda_T)) == len(self.lambda_T),
               f"ridge.lambda_T are distinct penalties (multiples of lambda*) >= 0, got {self.lambda_T}")
        _check(_finite(self.lambda_S_min) and _finite(self.lambda_S_max) and 0 < self.lambda_S_min < self.lambda_S_max,
               "need 0 < ridge.lambda_S_min < ridge.lambda_S_max (the grid is logarithmic; 0 is always included)")
        _check(self.lambda_S_count >= 1, f"ridge.lambda_S_count must be >= 1, got {self.lambda_S_count}")


@dataclass(frozen=True)
class WeightedRidgeConfig:
    """Mechanism 2 (Section 3)."""
    d: int = 200
    r: float = 1.0                                 # E||beta*||^2 = r^2
    sigma: float = 0.5
    alpha: float = 1.5                             # target spectrum s_i ~ i^-alpha
    gamma_T: float = 2.0                           # d/n of the teacher
    gamma_S: float = 0.25                          # d/m of the student
    a: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)   # alignment of the student's penalty

    def __post_init__(self):
        _check(self.d >= 2, f"weighted.d must be >= 2, got {self.d}")
        _check(_finite(self.r) and self.r > 0, f"weighted.r must be > 0, got {self.r}")
        _check(_finite(self.sigma) and self.sigma >= 0, f"weighted.sigma must be >= 0, got {self.sigma}")
        _check(_finite(self.alpha) and 0 <= self.alpha <= 4, f"weighted.alpha must be in [0, 4], got {self.alpha}")
        _check(all(_finite(g) and g > 0 for g in (self.gamma_T, self.gamma_S)),
               "weighted.gamma_T and weighted.gamma_S are ratios d/n, d/m: must be > 0")
        _check(0 in self.a and len(self.a) >= 2 and all(_finite(v) and 0 <= v <= 2 for v in self.a)
               and len(set(self.a)) == len(self.a),
               f"weighted.a are distinct alignments in [0, 2], 0 (isotropic) and at least one more, got {self.a}")


@dataclass(frozen=True)
class MultiIndexConfig:
    """Mechanism 3 (Section 4)."""
    d: int = 100
    a_1: float = 1.0                               # strength of the easy component He_1(<u_1, x>)
    a_2: float = 1.0                               # strength of the hard component He_2(<u_2, x>)/sqrt(2)
    sigma: float = 0.3
    n_over_d: tuple[float, ...] = (2.0, 4.0, 8.0, 16.0)  # teacher's labelled samples, in units of d
    m_over_d: float = 32.0                         # student's teacher-labelled samples, in units of d
    rho_S: tuple[float, ...] = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 1.0)   # pretrained overlap <w_2, u_2>
    n_test: int = 20000

    def __post_init__(self):
        _check(self.d >= 3, f"multi_index.d must be >= 3 (u_1, u_2 and a spare direction), got {self.d}")
        _check(all(_finite(v) for v in (self.a_1, self.a_2, self.sigma)) and self.a_2 > 0 and self.sigma >= 0,
               "multi_index.a_2 must be > 0 (the hard direction is read off the top of the second moment), "
               "a_1 finite and sigma >= 0")
        _check(len(self.n_over_d) > 0 and all(_finite(v) and v > 0 for v in self.n_over_d)
               and len(set(self.n_over_d)) == len(self.n_over_d),
               f"multi_index.n_over_d are distinct sample sizes in units of d, > 0, got {self.n_over_d}")
        _check(_finite(self.m_over_d) and self.m_over_d > 0, f"multi_index.m_over_d must be > 0, got {self.m_over_d}")
        _check(0 in self.rho_S and len(self.rho_S) >= 2 and all(0 <= rho <= 1 for rho in self.rho_S)
               and len(set(self.rho_S)) == len(self.rho_S),
               f"multi_index.rho_S are distinct overlaps in [0, 1], 0 (no pretrained hard direction) and at "
               f"least one more, got {self.rho_S}")
        _check(self.n_test >= 100, f"multi_index.n_test must be >= 100, got {self.n_test}")


@dataclass(frozen=True)
class MechanismsConfig:
    """The three mechanisms; ``--set ridge.d=100`` reaches a field of a part."""
    ridge: RidgeConfig = field(default_factory=RidgeConfig)
    weighted: WeightedRidgeConfig = field(default_factory=WeightedRidgeConfig)
    multi_index: MultiIndexConfig = field(default_factory=MultiIndexConfig)
    z: float = 2.0               # a gain counts when its mean over seeds exceeds z standard errors
    seeds: int = 10
    seed: int = 0

    def __post_init__(self):
        _check(self.seeds >= 2, f"seeds must be >= 2 (every verdict compares means over seeds with their "
                                f"standard errors), got {self.seeds}")
        _check(_finite(self.z) and self.z > 0, f"z must be > 0, got {self.z}")


def _finite(value: float) -> bool:
    return math.isfinite(value)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


def ridge(X: torch.Tensor, y: torch.Tensor, lam: float, Gamma: torch.Tensor | None = None) -> torch.Tensor:
    """argmin_beta (1/n)||y - X beta||^2 + lam beta^T Gamma beta, shape (d,); Gamma diagonal
    (its diagonal, shape (d,); default the identity). X: (n, d), y: (n,). lam = 0 is the
    minimum-Gamma-norm least-squares solution (the ridgeless limit; an interpolator when n < d)."""
    n, d = X.shape
    if lam < 0:
        raise ValueError(f"ridge penalty must be >= 0, got {lam}")
    penalty = torch.ones(d, dtype=X.dtype) if Gamma is None else Gamma
    if lam == 0:   # least squares: the minimum-(Gamma-)norm solution, defined also when n < d
        G = penalty.sqrt()
        return torch.linalg.pinv(X / G) @ y / G
    return torch.linalg.solve(X.T @ X / n + lam * torch.diag(penalty), X.T @ y / n)


def student_path(X: torch.Tensor, beta_T: torch.Tensor, lambdas: torch.Tensor,
                 Gamma: torch.Tensor | None = None) -> torch.Tensor:
    """The student's (weighted) ridge on teacher labels X beta_T for every penalty in ``lambdas``:
    (len(lambdas), d). With Gamma = G^2, beta_S = G^-1 (A + lam I)^-1 A G beta_T for A = G^-1 S G^-1,
    S = X^T X / m, so one eigendecomposition serves every lambda; lam = 0 gives the minimum-(Gamma-)
    norm interpolator, the ridgeless limit."""
    m, d = X.shape
    G = torch.ones(d, dtype=X.dtype) if Gamma is None else Gamma.sqrt()
    A = (X.T @ X / m) / G[:, None] / G[None, :]
    s, V = torch.linalg.eigh(A)
    kept = s > 1e-9 * s.max()
    shrink = torch.where(kept, s / (s + lambdas[:, None]), torch.zeros((), dtype=s.dtype))
    coordinates = V.T @ (G * beta_T)
    return (shrink * coordinates) @ V.T / G


def _gaussian(n: int, d: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(n, d, generator=generator, dtype=torch.float64)


def _lambda_S_grid(config: RidgeConfig) -> torch.Tensor:
    return torch.cat([torch.zeros(1, dtype=torch.float64), torch.logspace(
        math.log10(config.lambda_S_min), math.log10(config.lambda_S_max), config.lambda_S_count, dtype=torch.float64)])


def run_ridge(config: RidgeConfig, seeds: list[int], bar) -> dict:
    """Per regime, per seed: the teachers' excess risks (one per lambda_T) and the students' against
    lambda_S (lambda_T x lambda_S)."""
    lambdas = _lambda_S_grid(config)
    regimes = []
    for gamma_T, gamma_S in zip(config.gamma_T, config.gamma_S):
        n, m = max(1, round(config.d / gamma_T)), max(1, round(config.d / gamma_S))
        lambda_star = config.sigma ** 2 * (config.d / n) / config.r ** 2
        teacher, student = [], []
        for seed in seeds:
            generator = torch.Generator().manual_seed(seed)
            beta = _gaussian(1, config.d, generator)[0] * config.r / math.sqrt(config.d)
            X = _gaussian(n, config.d, generator)
            y = X @ beta + config.sigma * _gaussian(n, 1, generator)[:, 0]
            X_student = _gaussian(m, config.d, generator)
            teachers = [ridge(X, y, multiple * lambda_star) for multiple in sorted(config.lambda_T)]
            teacher.append([(beta_T - beta).square().sum().item() for beta_T in teachers])
            student.append([(student_path(X_student, beta_T, lambdas) - beta).square().sum(dim=1).tolist()
                            for beta_T in teachers])
            bar.update()
        regimes.append({"gamma_T": gamma_T, "gamma_S": gamma_S, "n": n, "m": m, "lambda_star": lambda_star,
                        "teacher": teacher, "student": student})
    return {"lambda_S": lambdas.tolist(), "lambda_T": sorted(config.lambda_T), "regimes": regimes}


def run_weighted(config: WeightedRidgeConfig, seeds: list[int], bar) -> dict:
    """Per seed: the isotropic teacher at its best lambda_T (chosen on the mean over seeds, an oracle
    choice so that it is not under-regularized) and the students' errors (alignment x lambda_S)."""
    n, m = max(1, round(config.d / config.gamma_T)), max(1, round(config.d / config.gamma_S))
    spectrum = torch.arange(1, config.d + 1, dtype=torch.float64) ** -config.alpha
    spectrum *= config.r ** 2 / spectrum.sum()
    lambdas = torch.logspace(-4, 2, 31, dtype=torch.float64)
    draws, teacher_paths = [], []
    for seed in seeds:
        generator = torch.Generator().manual_seed(seed)
        beta = _gaussian(1, config.d, generator)[0] * spectrum.sqrt()
        X = _gaussian(n, config.d, generator)
        y = X @ beta + config.sigma * _gaussian(n, 1, generator)[:, 0]
        draws.append((beta, X, y, _gaussian(m, config.d, generator)))
        teacher_paths.append([(ridge(X, y, lam.item()) - beta).square().sum().item() for lam in lambdas])
    best = int(np.argmin(np.mean(teacher_paths, axis=0)))
    student = []
    for beta, X, y, X_student in draws:
        beta_T = ridge(X, y, lambdas[best].item())
        student.append([(student_path(X_student, beta_T, lambdas, spectrum ** -a / (spectrum ** -a).mean())
                         - beta).square().sum(dim=1).tolist() for a in sorted(config.a)])
        bar.update()
    return {"a": sorted(config.a), "lambda_S": lambdas.tolist(), "lambda_T_best": lambdas[best].item(),
            "teacher": [path[best] for path in teacher_paths], "student": student}


def _hermite2(z: torch.Tensor) -> torch.Tensor:
    return (z ** 2 - 1) / math.sqrt(2)


def _fit_head(features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.linalg.lstsq(features, targets[:, None]).solution[:, 0]


def _features(X: torch.Tensor, w_1: torch.Tensor, w_2: torch.Tensor) -> torch.Tensor:
    """[1, He_1(<w_1, x>), He_2(<w_2, x>)/sqrt(2)] for unit w_1, w_2: (n, 3)."""
    return torch.stack([torch.ones(len(X), dtype=X.dtype), X @ w_1, _hermite2(X @ w_2)], dim=1)


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


def run_multi_index(config: MultiIndexConfig, seeds: list[int], bar) -> dict:
    """Per n/d, per seed: teacher and student excess risks (one per rho_S) and the overlaps of the
    learned directions with u_1 and u_2."""
    rows = []
    for ratio in sorted(config.n_over_d):
        n, m = max(2, round(ratio * config.d)), max(1, round(config.m_over_d * config.d))
        row = {"n_over_d": ratio, "teacher": [], "teacher_u1": [], "teacher_u2": [], "student_u1": [], "student": []}
        for seed in seeds:
            generator = torch.Generator().manual_seed(seed)
            u_1, u_2 = torch.linalg.qr(_gaussian(config.d, 2, generator))[0].T
            spare = torch.linalg.qr(torch.stack([u_1, u_2, _gaussian(1, config.d, generator)[0]], 1))[0][:, 2]

            def target(X):
                return config.a_1 * (X @ u_1) + config.a_2 * _hermite2(X @ u_2)
            X = _gaussian(n, config.d, generator)
            y = target(X) + config.sigma * _gaussian(n, 1, generator)[:, 0]
            # Directions from one half of the labelled data, output layer from the other: fitted on
            # the same samples, the head would see the directions' in-sample overfit.
            X_a, y_a, X_b, y_b = X[: n // 2], y[: n // 2], X[n // 2:], y[n // 2:]
            easy = _unit(X_a.T @ y_a)                               # first moment: information exponent 1
            second = (X_a.T * y_a) @ X_a / len(y_a) - y_a.mean() * torch.eye(config.d, dtype=X.dtype)
            hard = torch.linalg.eigh(second)[1][:, -1]              # top eigenvector: information exponent 2
            head = _fit_head(_features(X_b, easy, hard), y_b)

            def teacher(inputs):
                return _features(inputs, easy, hard) @ head
            X_test = _gaussian(config.n_test, config.d, generator)
            truth = target(X_test)
            X_student = _gaussian(m, config.d, generator)
            labels = teacher(X_student)
            student_easy = _unit(_fit_head(X_student, labels))      # the easy direction, from the teacher
            students = []
            for rho in sorted(config.rho_S):
                pretrained = rho * u_2 + math.sqrt(1 - rho ** 2) * spare   # the hard direction, from pretraining
                student_head = _fit_head(_features(X_student, student_easy, pretrained), labels)
                prediction = _features(X_test, student_easy, pretrained) @ student_head
                students.append((prediction - truth).square().mean().item())
            row["teacher"].append((teacher(X_test) - truth).square().mean().item())
            row["teacher_u1"].append(abs(easy @ u_1).item())
            row["teacher_u2"].append(abs(hard @ u_2).item())
            row["student_u1"].append(abs(student_easy @ u_1).item())
            row["student"].append(students)
            bar.update()
        rows.append(row)
    return {"rho_S": sorted(config.rho_S), "rows": rows}


def run(config: MechanismsConfig, progress: bool = True) -> dict:
    """All three mechanisms; JSON-able data for ``predictions`` and ``plot``."""
    seeds = [config.seed + k for k in range(config.seeds)]
    total = len(seeds) * (len(config.ridge.gamma_T) + 1 + len(config.multi_index.n_over_d))
    with tqdm(total=total, desc="mechanisms", disable=not progress) as bar:
        return {"ridge": run_ridge(config.ridge, seeds, bar), "weighted": run_weighted(config.weighted, seeds, bar),
                "multi_index": run_multi_index(config.multi_index, seeds, bar)}


def _best(per_seed: list[list[float]]) -> tuple[int, list[float]]:
    """The penalty index with the lowest mean error (an oracle choice of lambda_S) and the per-seed
    errors there; ``per_seed`` is (seeds x penalties)."""
    index = int(np.argmin(np.mean(per_seed, axis=0)))
    return index, [errors[index] for errors in per_seed]


def predictions(config: MechanismsConfig, data: dict) -> list[Prediction]:
    """Each mechanism's predictions checked on ``data`` from ``run``; a gain counts when its mean over
    seeds exceeds ``z`` standard errors."""
    return [*_ridge_predictions(config, data["ridge"]), *_weighted_predictions(config, data["weighted"]),
            *_multi_index_predictions(config, data["multi_index"])]


def _regime_rows(ridge_data: dict, regime: dict) -> list[dict]:
    """Per lambda_T of one regime: the teacher's mean error, the best student's (lambda_S chosen on
    the mean curve) with its lambda_S and Gain, and the ridgeless student's mean error."""
    rows = []
    for k, multiple in enumerate(ridge_data["lambda_T"]):
        teacher = [errors[k] for errors in regime["teacher"]]
        index, student = _best([curves[k] for curves in regime["student"]])
        rows.append({"multiple": multiple, "teacher": float(np.mean(teacher)), "student": float(np.mean(student)),
                     "lambda_S": ridge_data["lambda_S"][index], "gain": gain(teacher, student),
                     "ridgeless": float(np.mean([curves[k][0] for curves in regime["student"]]))})
    return rows


def _ridge_predictions(config: MechanismsConfig, ridge_data: dict) -> list[Prediction]:
    found, at_optimum, z = [], [], config.z
    for regime in ridge_data["regimes"]:
        name = f"d/n = {regime['gamma_T']:g}, d/m = {regime['gamma_S']:g}"
        rows = _regime_rows(ridge_data, regime)
        at_optimum += [(f"{name}, lambda_T = {row['multiple']:g} lambda*", row["gain"]) for row in rows
                       if row["multiple"] >= 1]
        if regime["m"] > config.ridge.d:
            # With sigma = 0, lambda* = 0: every teacher is at lambda* and none is under-regularized.
            under = [row for row in rows if row["multiple"] < 1] if regime["lambda_star"] > 0 else []
            shrinking = all(a["gain"].mean > b["gain"].mean for a, b in zip(under, under[1:]))
            found.append(Prediction(
                f"Ridge, {name} (student under-parameterized): the student compensates an under-regularized "
                f"teacher (lambda_T < lambda*): some lambda_S > 0 brings it below its teacher, the more so the "
                f"further lambda_T is below lambda* (Section 2)",
                bool(under) and shrinking and all(row["gain"].significant(z) for row in under),
                "; ".join(f"lambda_T = {row['multiple']:g} lambda*: teacher {row['teacher']:.3f}, best student "
                          f"{row['student']:.3f} at lambda_S = {row['lambda_S']:.3g} (gain {row['gain']})"
                          for row in under) + f"; a gain counts above {z:g} standard errors"
                + ("" if under else "no teacher below lambda* (lambda_T multiples < 1, lambda* > 0): not testable")))
        else:
            share = regime["m"] / config.ridge.d
            predicted = [share * row["teacher"] + (1 - share) * config.ridge.r ** 2 for row in rows]
            found.append(Prediction(
                f"Ridge, {name} (student over-parameterized; our derivation, not a claim of the paper): the "
                f"ridgeless student keeps a random m/d of the teacher's directions, so its error is "
                f"(m/d) R_T + (1 - m/d) r^2 and it beats its teacher only if R_T > r^2",
                all(abs(row["ridgeless"] - value) <= 0.05 * value for row, value in zip(rows, predicted)),
                "; ".join(f"lambda_T = {row['multiple']:g} lambda*: R_T {row['teacher']:.3f}, ridgeless student "
                          f"{row['ridgeless']:.3f}, predicted {value:.3f}" for row, value in zip(rows, predicted))
                + " (within 5% required)"))
    found.append(Prediction(
        "Ridge, every regime: a teacher at or above lambda* (the Bayes-optimal ridge for this prior) cannot be "
        "improved by any student lambda_S: W2S gains here come from under-regularization (Section 2)",
        not any(g.significant(z) for _, g in at_optimum),
        "best student gain: " + "; ".join(f"{name}: {g}" for name, g in at_optimum)
        + f" (none may exceed {z:g} standard errors)"))
    return found


def _weighted_predictions(config: MechanismsConfig, weighted: dict) -> list[Prediction]:
    """a = 0 is the isotropic student, a = 1 the penalty aligned with the target's spectrum (or the
    largest a up to 1 when 1 is not in the list); values are looked up, not taken by position."""
    teacher, a = weighted["teacher"], weighted["a"]
    best = [_best([per_seed[k] for per_seed in weighted["student"]])[1] for k in range(len(a))]
    gains = [gain(teacher, student) for student in best]
    listed = ", ".join(f"a = {a[k]:g}: {np.mean(best[k]):.3f} ({gains[k]})" for k in range(len(a)))
    context = (f"teacher at its best isotropic lambda_T = {weighted['lambda_T_best']:.3g}: {np.mean(teacher):.3f}; "
               f"best student over lambda_S: {listed}")
    isotropic = a.index(0.0)
    upto = [k for k in range(len(a)) if a[k] <= 1]        # a > 1 over-weights the spectrum: not "better aligned"
    aligned = upto[-1]
    steps = [gain(best[earlier], best[later]) for earlier, later in zip(upto, upto[1:])]
    overall = gain(best[isotropic], best[aligned])
    rising = [f"{a[e]:g} -> {a[l]:g}" for (e, l), step in zip(zip(upto, upto[1:]), steps)
              if (-step.mean) > max(config.z * step.stderr, 0)]
    name = "aligned with" if a[aligned] == 1 else f"the most aligned here (a = {a[aligned]:g}, 1 would be aligned) with"
    return [
        Prediction(f"Weighted ridge: a student whose penalty is {name} the target's spectrum (a = {a[aligned]:g}) "
                   f"beats an optimally regularized isotropic teacher (Section 3)",
                   gains[aligned].significant(config.z),
                   context + f"; a gain counts above {config.z:g} standard errors"),
        Prediction("Weighted ridge: the isotropic student (a = 0) gains nothing over the optimally regularized "
                   "isotropic teacher: the gain comes from the penalty's alignment (Section 3)",
                   gains[isotropic].testable and not gains[isotropic].significant(config.z),
                   f"a = 0: gain {gains[isotropic]} (may not exceed {config.z:g} standard errors)"),
        Prediction("Weighted ridge: the better aligned the student's penalty, the lower its error (Section 3)",
                   overall.significant(config.z) and not rising,
                   f"from a = 0 to a = {a[aligned]:g}: gain {overall} (must exceed {config.z:g} standard errors); "
                   "each step: " + ", ".join(f"{a[e]:g} -> {a[l]:g}: {step}" for (e, l), step
                                             in zip(zip(upto, upto[1:]), steps))
                   + (f"; error rises significantly at {', '.join(rising)}" if rising else
                      "; no step raises the error significantly"),
                   partly=overall.significant(config.z) and bool(rising)),
    ]


def _multi_index_predictions(config: MechanismsConfig, multi: dict) -> list[Prediction]:
    rows, rho = multi["rows"], multi["rho_S"]
    pretrained, untrained = int(np.argmax(rho)), rho.index(0.0)
    found = [Prediction(
        "Multi-index (a consistency check, close to a tautology here: the teacher's labels are linear in "
        "<w_1, x> plus a He_2 term orthogonal to every linear function, so the student's least squares recovers "
        "the teacher's w_1 up to sampling noise): the student learns the easy direction u_1 from its teacher's "
        "labels, as well as the teacher knows it (Section 4)",
        all(np.mean(row["student_u1"]) >= np.mean(row["teacher_u1"]) - 0.05 for row in rows),
        "; ".join(f"n/d = {row['n_over_d']:g}: |<w_1, u_1>| student {np.mean(row['student_u1']):.3f}, teacher "
                  f"{np.mean(row['teacher_u1']):.3f}" for row in rows) + " (the student may be at most 0.05 below)")]
    for row in rows:
        student = [errors[pretrained] for errors in row["student"]]
        g = gain(row["teacher"], student)
        found.append(Prediction(
            f"Multi-index, teacher with n/d = {row['n_over_d']:g}: a student whose pretraining supplies the hard "
            f"direction (rho_S = {rho[pretrained]:g}) beats its teacher (Section 4)",
            g.significant(config.z),
            f"teacher {np.mean(row['teacher']):.3f} (its hard-direction overlap {np.mean(row['teacher_u2']):.2f}), "
            f"student {np.mean(student):.3f} (gain {g}; counts above {config.z:g} standard errors)"))
    untrained_gains = [(row["n_over_d"], gain(row["teacher"], [errors[untrained] for errors in row["student"]]))
                       for row in rows]
    found.append(Prediction(
        f"Multi-index: without the pretrained hard direction (rho_S = 0) the student does not "
        f"beat its teacher (Section 4)",
        not any(g.significant(config.z) for _, g in untrained_gains),
        "; ".join(f"n/d = {ratio:g}: gain {g}" for ratio, g in untrained_gains)))
    return found


def plot(config: MechanismsConfig, data: dict, out_dir: Path, prefix: str) -> list[Path]:
    """Ridge: student error against lambda_S per regime; weighted ridge: error against alignment;
    multi-index: error against rho_S per teacher sample size. Means over seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ridge_data = data["ridge"]
    regimes = ridge_data["regimes"]
    figure, axes = plt.subplots(1, len(regimes), figsize=(4.4 * len(regimes), 3.6), squeeze=False)
    for axis, regime in zip(axes[0], regimes):
        teacher, student = np.mean(regime["teacher"], axis=0), np.mean(regime["student"], axis=0)
        for k, multiple in enumerate(ridge_data["lambda_T"]):
            line, = axis.plot(ridge_data["lambda_S"], student[k], label=f"lambda_T = {multiple:g} lambda*")
            axis.axhline(teacher[k], color=line.get_color(), ls="--", lw=1)
        axis.set_xscale("symlog", linthresh=config.ridge.lambda_S_min)
        axis.set(xlim=(0, config.ridge.lambda_S_max), yscale="log", xlabel="student lambda_S (0 = ridgeless)",
                 title=f"d/n = {regime['gamma_T']:g}, d/m = {regime['gamma_S']:g}")
    axes[0][0].set_ylabel("excess test risk (dashed: teacher)")
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    paths = [out_dir / f"{prefix}-ridge.png"]
    figure.savefig(paths[-1], dpi=110)
    plt.close(figure)

    weighted, multi = data["weighted"], data["multi_index"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(weighted["a"], np.mean(weighted["student"], axis=0).min(axis=1), "o-", label="student, best lambda_S")
    left.axhline(np.mean(weighted["teacher"]), color="k", ls="--", label="teacher, best isotropic lambda_T")
    left.set(xlabel="alignment a of the student's penalty (Gamma = diag(s_i^-a))", ylabel="excess test risk",
             title="weighted ridge")
    left.legend(fontsize=8)
    for row in multi["rows"]:
        line, = right.plot(multi["rho_S"], np.mean(row["student"], axis=0), "o-", label=f"n/d = {row['n_over_d']:g}")
        right.axhline(np.mean(row["teacher"]), color=line.get_color(), ls="--", lw=1)
    right.set(xlabel="rho_S = <w_2, u_2>, the student's pretrained hard direction", ylabel="excess test risk",
              title="multi-index (dashed: teacher)")
    right.legend(fontsize=8)
    figure.tight_layout()
    paths.append(out_dir / f"{prefix}-weighted-and-multi-index.png")
    figure.savefig(paths[-1], dpi=110)
    plt.close(figure)
    return paths
