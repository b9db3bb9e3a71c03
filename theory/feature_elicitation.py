"""Feature elicitation from latent knowledge (Awano and Suzuki, 2026, arXiv:2605.12908): a strong
two-layer network whose pretrained features lie in low-dimensional subspaces V_k is fine-tuned on a
weak model specialized on task kappa, or on the task's ground truth (supervised fine-tuning, SFT).

Setting (the construction and constants are ours: only the paper's abstract was available to us, so
no section of the paper is cited here). Inputs x ~ N(0, I_d). K subspaces V_k of dimension 2: the target's
V_kappa = span(theta, b_kappa) holds the target direction theta; each off-target V_k = span(phi_k, b_k)
holds a direction phi_k = c theta + sqrt(1 - c^2) e_k correlated with the target by c. The student is
the reward model r(x) = sum_j a_j relu(<w_j, x>) + b with N neurons per subspace, each w_j a random
unit vector of its V_k; the task-kappa head reads only the target's neurons (a_j = +-1/N there, 0
elsewhere), so the student knows where the target lives but not its direction. Task kappa's reward
is r*(x) = g(<theta, x>), g(z) = (exp(curvature z) - exp(curvature^2 / 2)) / curvature: monotone, so
a reward model is judged by its ranking, and convex, so the ground truth holds more than the
direction. The weak model is specialized on task kappa: a linear reward fitted by least squares to
n_w labelled samples, right about the direction, unable to express the link.

Both fine-tunings run online SGD on the squared error against their labels (the weak model's reward,
or r*) for T steps, from the same pretrained student. Measured: the target ranking error (share of
test pairs ordered against r*) and the off-target retention (how well the hidden layer still
expresses each off-target feature <phi_k, x>: the R^2 of a linear probe after fine-tuning over the
same before; 1 = kept). The probe has a floor: a neuron turned fully toward theta still expresses the
c theta part of <phi_k, x>, so retention cannot fall much below c^2 at correlation c, and SFT's
retention against c can be U-shaped (more to forget as c grows, a higher floor). Prediction (the
abstract's): W2S learns the target direction and keeps the
off-target features; SFT forgets them when their directions correlate with the target's. The link's
curvature is not a constant of the paper: it is shown over a range. The mechanism in this
construction: SFT's residual keeps what the target's own neurons cannot express (the curved link),
and neurons whose direction correlates with the target can express part of it, so SFT turns them
toward theta; W2S's labels are the part its target neurons express, so its residual vanishes first.
With a strongly curved link SFT also loses some features at c = 0: its residual never vanishes,
and SGD noise moves every neuron a little. The SGD step is eta / max(1, sd(g))^2 for both methods,
so fine-tuning stays finite over curvature in (0, 2]; at the larger curvatures this step is small
and SFT can remain under-trained in T steps (the elicitation verdict's numbers say where SFT ranks
worse than the weak model). SFT's forgetting is a paired difference over seeds, with its standard
error: with few seeds the verdict at a threshold of 0.02 can flip with the seed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from robust_w2s.errors import UserError

from .records import Prediction

METHODS = ("w2s", "sft")   # fine-tuned on the weak model's reward, or on the ground truth


@dataclass(frozen=True)
class FeatureElicitationConfig:
    """The experiment's settings (constants ours, see the module docstring)."""
    d: int = 50                                      # input dimension
    K: int = 4                                       # pretrained subspaces V_k (the target's is one of them)
    N: int = 8                                       # neurons per subspace
    c: tuple[float, ...] = (0.0, 0.3, 0.6, 0.9)      # correlation of the off-target directions with theta
    curvature: tuple[float, ...] = (0.25, 0.5, 1.0)  # of the ground-truth link g (0 would be linear)
    n_w: int = 400                                   # labelled samples of the weak model
    T: int = 1500                                    # SGD steps of each fine-tuning
    eta: float = 0.02                                # SGD step size (the first layer's is eta * K * N)
    B: int = 256                                     # fresh samples per SGD step
    n_test: int = 4000                               # test pairs
    retained: float = 0.95                           # W2S keeps the features if every retention is at least this
    forgetting: float = 0.02                         # SFT forgets by correlation if its retention at some c > 0
                                                     # is below its retention at c = 0 by more than this
    seeds: int = 3
    seed: int = 0

    def __post_init__(self):
        if self.K < 2 or self.d < 2 * self.K + 1 or min(self.N, self.T, self.B, self.n_w) < 1 or self.seeds < 1:
            raise UserError(f"need K >= 2 (one target and at least one off-target subspace), d >= 2K + 1 "
                            f"= {2 * self.K + 1} and N, T, B, n_w, seeds >= 1")
        if self.n_test < 10:
            raise UserError(f"n_test must be at least 10, got {self.n_test}")
        if 0 not in self.c or len(self.c) < 2 or not all(0 <= c < 1 for c in self.c):
            raise UserError("c are correlations in [0, 1), 0 and at least one more")
        if not self.curvature or not all(0 < k <= MAX_CURVATURE for k in self.curvature):
            raise UserError(f"curvature values must be in (0, {MAX_CURVATURE:g}] (the link's tail is "
                            f"exp(curvature z): beyond that its labels overflow float32), got {self.curvature}")
        if not 0 < self.eta <= 0.1:
            raise UserError(f"eta must be in (0, 0.1] (larger steps diverge), got {self.eta}")
        if not 0 < self.retained <= 1 or self.forgetting < 0:
            raise UserError("retained must be in (0, 1] and forgetting >= 0")
        if len(set(self.c)) != len(self.c) or len(set(self.curvature)) != len(self.curvature):
            raise UserError("c and curvature take distinct values")


MAX_CURVATURE = 2.0


def subspaces(config: FeatureElicitationConfig, c: float,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """theta (d,) and the bases of V_1..V_K, shape (K, 2, d), V_kappa = V[0] holding theta; every
    off-target V_k holds phi_k with <phi_k, theta> = c, the rest of the vectors orthonormal."""
    Q = torch.linalg.qr(torch.randn(config.d, 2 * config.K, generator=generator))[0].T
    theta = Q[0]
    bases = [torch.stack([theta, Q[1]])]
    for k in range(1, config.K):
        bases.append(torch.stack([c * theta + math.sqrt(1 - c ** 2) * Q[2 * k], Q[2 * k + 1]]))
    return theta, torch.stack(bases)


def link(z: torch.Tensor, curvature: float) -> torch.Tensor:
    """g(z) = (exp(curvature z) - exp(curvature^2 / 2)) / curvature: increasing, convex, E g(N(0,1)) = 0."""
    return (torch.exp(curvature * z) - math.exp(curvature ** 2 / 2)) / curvature


def pretrained_student(config: FeatureElicitationConfig, bases: torch.Tensor,
                       generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """First layer W0 (K N, d): N random unit vectors in each V_k, the target's first; head a0 (K N,):
    +-1/N on the target's neurons, 0 on the others (the task-kappa head does not read them)."""
    mixtures = torch.randn(config.K, config.N, 2, generator=generator)
    W0 = torch.einsum("kne,ked->knd", mixtures, bases).reshape(-1, config.d)
    a0 = torch.zeros(config.K * config.N)
    a0[:config.N] = (torch.randint(0, 2, (config.N,), generator=generator) * 2 - 1) / config.N
    return W0 / W0.norm(dim=1, keepdim=True), a0


def weak_model(config: FeatureElicitationConfig, theta: torch.Tensor, curvature: float,
               generator: torch.Generator) -> torch.Tensor:
    """The weak linear reward's weights (d,): least squares (with intercept) on n_w labelled samples."""
    X = torch.randn(config.n_w, config.d, generator=generator)
    design = torch.cat([X, torch.ones(config.n_w, 1)], dim=1)
    return torch.linalg.lstsq(design, link(X @ theta, curvature)[:, None]).solution[:-1, 0]


def label_scale(curvature: float) -> float:
    """The standard deviation of g(N(0, 1)): sqrt(exp(2 k^2) - exp(k^2)) / k for curvature k."""
    return math.sqrt(math.exp(2 * curvature ** 2) - math.exp(curvature ** 2)) / curvature


def step_size(config: FeatureElicitationConfig, curvature: float) -> float:
    """SGD step of both fine-tunings at this curvature: eta / max(1, sd(g))^2. The squared-error
    gradients grow with the labels' scale (the curved link's tail is exponential), so a fixed step
    diverges beyond curvature ~1; dividing by the labels' variance keeps every curvature of the
    documented range stable. Both methods use the same step, so the comparison stays fair."""
    return config.eta / max(1.0, label_scale(curvature)) ** STEP_POWER


STEP_POWER = 2


def fine_tune(config: FeatureElicitationConfig, c: float, curvature: float, method: str, seed: int) -> dict:
    """Pretrained student, weak model, one fine-tuning (``method`` in METHODS): the target ranking
    errors of the student before and after and of the weak model, and the off-target retention."""
    generator = torch.Generator().manual_seed(seed)
    theta, bases = subspaces(config, c, generator)
    W0, a0 = pretrained_student(config, bases, generator)
    weak = weak_model(config, theta, curvature, generator)
    W, a, b = W0.clone().requires_grad_(), a0.clone().requires_grad_(), torch.zeros((), requires_grad=True)

    def reward(X):
        return torch.relu(X @ W.T) @ a + b
    first, second = (torch.randn(config.n_test, config.d, generator=generator) for _ in range(2))
    truth = (first - second) @ theta > 0

    def ranking_error(r1, r2):
        return ((r1 - r2 > 0) != truth).float().mean().item()
    with torch.no_grad():
        before = ranking_error(reward(first), reward(second))
    eta = step_size(config, curvature)
    for _ in range(config.T):
        X = torch.randn(config.B, config.d, generator=generator)
        labels = X @ weak if method == "w2s" else link(X @ theta, curvature)
        loss = (reward(X) - labels).square().mean() / 2
        grad_W, grad_a, grad_b = torch.autograd.grad(loss, (W, a, b))
        with torch.no_grad():
            # The output averages N neurons (a_j ~ 1/N), so each neuron's gradient is O(1/N): the
            # mean-field step multiplies it back by the number of neurons.
            W -= eta * config.K * config.N * grad_W
            a -= eta * grad_a
            b -= eta * grad_b
    if not (torch.isfinite(W).all() and torch.isfinite(a).all() and torch.isfinite(b)):
        raise UserError(f"feature-elicitation: {method.upper()} fine-tuning diverged (non-finite weights) at "
                        f"curvature={curvature:g}, c={c:g}, seed={seed}; lower eta (now {config.eta:g})")
    with torch.no_grad():
        return {"target_error": ranking_error(reward(first), reward(second)), "target_error_before": before,
                "weak_error": ranking_error(first @ weak, second @ weak),
                "retention": off_target_capability(W, bases, first) / off_target_capability(W0, bases, first)}


def off_target_capability(W: torch.Tensor, bases: torch.Tensor, X: torch.Tensor) -> float:
    """How well the hidden features relu(X W^T) still express the off-target features: the mean over
    off-target k of the R^2 of a least-squares probe (with intercept) for <phi_k, x> = bases[k, 0]."""
    hidden = torch.cat([torch.relu(X @ W.T), torch.ones(len(X), 1)], dim=1)
    scores = []
    for phi in bases[1:, 0]:
        target = X @ phi
        fit = hidden @ torch.linalg.lstsq(hidden, target[:, None]).solution[:, 0]
        scores.append(1 - ((fit - target).square().mean() / target.var()).item())
    return float(np.mean(scores))


def run(config: FeatureElicitationConfig, progress: bool = True) -> dict:
    """Every (curvature, c, method), each a mean over ``seeds`` runs; JSON-able data."""
    seeds = [config.seed + k for k in range(config.seeds)]
    rows = []
    with tqdm(total=len(config.curvature) * len(config.c) * len(METHODS) * len(seeds), desc="feature-elicitation",
              disable=not progress) as bar:
        for curvature in sorted(config.curvature):
            for c in sorted(config.c):
                row = {"curvature": curvature, "c": c}
                for method in METHODS:
                    runs = []
                    for seed in seeds:
                        runs.append(fine_tune(config, c, curvature, method, seed))
                        bar.update()
                    row[method] = {key: float(np.mean([r[key] for r in runs])) for key in runs[0]}
                    row[method]["retention_per_seed"] = [r["retention"] for r in runs]
                rows.append(row)
    return {"rows": rows}


def predictions(config: FeatureElicitationConfig, data: dict) -> list[Prediction]:
    """Per curvature of the ground truth: W2S learns the target direction and keeps the off-target
    features; SFT forgets them when (and because) they correlate with the target. SFT's forgetting is
    a paired difference over seeds (retention at c = 0 minus at c), judged at Z standard errors."""
    found = []
    for curvature in sorted(config.curvature):
        rows = [row for row in data["rows"] if row["curvature"] == curvature]
        w2s = [row["w2s"] for row in rows]
        under = [row["c"] for row in rows if row["sft"]["target_error"] > row["sft"]["weak_error"]]
        found.append(Prediction(
            f"Curvature {curvature:g}: W2S elicits the target direction: the student's ranking error falls from its "
            f"pretrained start to its weak teacher's or below",
            all(r["target_error"] <= r["weak_error"] + 0.01 and r["target_error"] < r["target_error_before"]
                for r in w2s),
            "; ".join(f"c={row['c']:g}: {row['w2s']['target_error_before']:.3f} -> {row['w2s']['target_error']:.3f} "
                      f"(weak {row['w2s']['weak_error']:.3f}, SFT {row['sft']['target_error']:.3f})" for row in rows)
            + " (up to 0.01 above the weak allowed)"
            + (f"; SFT ranks worse than the weak model at c = {', '.join(f'{c:g}' for c in under)}: it is "
               f"under-trained in T = {config.T} steps at this curvature" if under else "")))
        retention = {method: [row[method]["retention"] for row in rows] for method in METHODS}
        listed = "; ".join(f"c={row['c']:g}: W2S {row['w2s']['retention']:.3f}, SFT {row['sft']['retention']:.3f}"
                           for row in rows)
        found.append(Prediction(
            f"Curvature {curvature:g}: W2S keeps the pretrained off-target features at every correlation",
            min(retention["w2s"]) >= config.retained, f"retention {listed} (kept: >= {config.retained})"))
        found.append(_forgetting(config, curvature, rows))
    return found


Z = 2.0   # a drop in SFT's retention counts when its mean over seeds exceeds Z standard errors


def _forgetting(config: FeatureElicitationConfig, curvature: float, rows: list[dict]) -> Prediction:
    """SFT's retention at c = 0 minus at each c > 0, paired by seed: mean and standard error."""
    claim = (f"Curvature {curvature:g}: SFT forgets the off-target features when they correlate with the target: "
             f"its retention at some c > 0 falls below its retention at c = 0, and below W2S's")
    base = np.array(next(row for row in rows if row["c"] == 0)["sft"]["retention_per_seed"])
    drops, parts = [], []
    for row in rows:
        if row["c"] == 0:
            continue
        drop = base - np.array(row["sft"]["retention_per_seed"])
        stderr = float(drop.std(ddof=1) / math.sqrt(len(drop))) if len(drop) > 1 else math.nan
        forgets = (drop.mean() > config.forgetting and len(drop) > 1 and drop.mean() > Z * stderr
                   and row["sft"]["retention"] < row["w2s"]["retention"])
        drops.append(forgets)
        parts.append(f"c={row['c']:g}: drop {drop.mean():+.3f} +- {stderr:.3f} (SFT {row['sft']['retention']:.3f}, "
                     f"W2S {row['w2s']['retention']:.3f}, probe floor c^2 = {row['c'] ** 2:.2f})")
    evidence = (f"SFT retention at c = 0: {base.mean():.3f}; " + "; ".join(parts)
                + f"; a drop counts above {config.forgetting} and above {Z:g} standard errors over "
                  f"{len(base)} seeds")
    if len(base) < 2:
        return Prediction(claim, False, evidence + "; not testable with one seed (no standard error)")
    return Prediction(claim, any(drops), evidence)


def plot(config: FeatureElicitationConfig, data: dict, out_dir: Path, prefix: str) -> list[Path]:
    """Target ranking error and off-target retention against the correlation c, W2S and SFT, one
    line style per curvature of the ground truth."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    styles = ["-", "--", ":", "-."]
    for k, curvature in enumerate(config.curvature):
        rows = [row for row in data["rows"] if row["curvature"] == curvature]
        c = [row["c"] for row in rows]
        style = styles[k % len(styles)]
        for method, color in zip(METHODS, ("tab:blue", "tab:red")):
            left.plot(c, [row[method]["target_error"] for row in rows], style, color=color, marker="o",
                      label=f"{method.upper()}, curvature {curvature:g}")
            right.plot(c, [row[method]["retention"] for row in rows], style, color=color, marker="o",
                       label=f"{method.upper()}, curvature {curvature:g}")
        left.plot(c, [row["w2s"]["weak_error"] for row in rows], style, color="k", lw=1,
                  label=f"weak model, curvature {curvature:g}")
    left.set(xlabel="c = <phi_k, theta>, off-target correlation with the target", ylabel="target ranking error",
             title="task kappa after fine-tuning")
    right.set(xlabel="c = <phi_k, theta>, off-target correlation with the target",
              ylabel="off-target retention (probe R^2 ratio)", title="pretrained off-target features")
    right.axhline(config.retained, color="gray", lw=0.8)
    handles, labels = left.get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(config.curvature), fontsize=7)
    figure.tight_layout(rect=(0, 0.045 * (len(METHODS) + 1), 1, 1))
    path = out_dir / f"{prefix}.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return [path]
