"""What the weak guidance is made of beyond one teacher's outputs, computed before or beside training:
graph smoothing of the teacher's soft labels and P(IK) (Selective W2SG), and RAVEN's learned
combination of several teachers. The objectives that use them are in :mod:`.methods`; the loop
only sees cached inputs and a :class:`TeacherMixture` it steps after each update.
"""
from __future__ import annotations

import logging

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError

SIMPLEX_FLOOR = 1e-6  # RAVEN's clamp before renormalizing (mlbio-epfl/raven, ensemble.py)


# --- graph smoothing (Selective W2SG): label propagation over a kNN graph --------------------------

def knn_graph(embeddings: Tensor, neighbours: int, chunk: int = 4096) -> Tensor:
    """S = D^-1/2 W D^-1/2 as a sparse [N, N] tensor, W the symmetric kNN graph (w_ij = 1 if j is among
    the ``neighbours`` most cosine-similar points of i, or i of j; no self-loops) over ``embeddings``
    [N, D]. Similarities are computed ``chunk`` rows at a time: O(N^2 D) time, O(chunk N) memory.
    Raises ValueError if ``neighbours`` is not in [1, N - 1]."""
    n = len(embeddings)
    if not 1 <= neighbours < n:
        raise ValueError(f"graph neighbours must be in [1, {n - 1}] for {n} images, got {neighbours}")
    unit = F.normalize(embeddings.float(), dim=-1)
    rows, cols = [], []
    for start in range(0, n, chunk):
        similarity = unit[start:start + chunk] @ unit.T
        index = torch.arange(start, min(start + chunk, n))
        similarity[torch.arange(len(index)), index] = float("-inf")  # no self-loops
        nearest = similarity.topk(neighbours, dim=1).indices
        rows.append(index[:, None].expand_as(nearest).reshape(-1))
        cols.append(nearest.reshape(-1))
    rows, cols = torch.cat(rows), torch.cat(cols)
    # Symmetrize (i ~ j if either lists the other) and drop duplicates: weights stay 1.
    edges = torch.unique(torch.stack([torch.cat([rows, cols]), torch.cat([cols, rows])]), dim=1)
    degree = torch.bincount(edges[0], minlength=n).float()
    values = degree[edges[0]].rsqrt() * degree[edges[1]].rsqrt()
    return torch.sparse_coo_tensor(edges, values, (n, n), check_invariants=True).coalesce()


def label_propagation(graph: Tensor, probs: Tensor, alpha: float, iterations: int) -> Tensor:
    """Soft labels [N, K] smoothed over ``graph`` (sparse or dense S [N, N]): F_0 = Y = ``probs``,
    F_{t+1} = alpha S F_t + (1 - alpha) Y for ``iterations`` steps (Zhou et al., 2004, "Learning with
    local and global consistency"), rows renormalized to sum to 1. alpha in [0, 1): 0 returns Y."""
    if not 0 <= alpha < 1:
        raise ValueError(f"graph alpha must be in [0, 1), got {alpha}")
    seed = probs.float()
    smoothed = seed
    for _ in range(iterations):
        smoothed = alpha * (graph @ smoothed) + (1 - alpha) * seed
    return smoothed / smoothed.sum(dim=-1, keepdim=True).clamp_min(1e-12)


# --- P(IK) (Selective W2SG): does the initial student know the answer here? ----------------------

class KnowsClassifier(nn.Module):
    """P(IK)(x) = sigmoid(a . f(x)/||f(x)|| + b): logistic regression on S0's normalized image embeddings."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, 1)

    def forward(self, embeddings: Tensor) -> Tensor:
        """[N, D] embeddings -> [N] probabilities."""
        return torch.sigmoid(self.linear(F.normalize(embeddings.float(), dim=-1)).squeeze(-1))


def train_knows(embeddings: Tensor, knows: Tensor, *, holdout: float, seed: int, threshold: float = 0.5,
                weight_decay: float = 1e-3) -> tuple[KnowsClassifier, dict]:
    """Fit P(IK) on ``embeddings`` [n, D] of labelled images and ``knows`` [n] (bool: S0's zero-shot
    prediction equals the label), holding out a seeded ``holdout`` share to measure it.

    Full-batch L-BFGS on the mean logistic loss + weight_decay ||a||^2: deterministic for a seed.
    Returns (classifier, {"n_labels", "n_train", "n_holdout", "knows_rate", "predicted_known_rate",
    "precision", "recall"}): on the held-out images, the share P(IK) > ``threshold`` calls known and
    its precision and recall (None where undefined; with precision equal to knows_rate and recall 1,
    P(IK) is no better than calling every image known). Raises UserError when fewer than two
    images are left to fit it.
    """
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(knows), generator=generator)
    n_holdout = int(round(holdout * len(knows)))
    held, train = order[:n_holdout], order[n_holdout:]
    if len(train) < 2:
        raise UserError(f"method.pik: {len(knows)} labels with holdout {holdout} leave {len(train)} to fit P(IK): "
                        "need at least 2 (more method.pik.labels or a smaller method.pik.holdout)")
    classifier = KnowsClassifier(embeddings.shape[1])
    nn.init.zeros_(classifier.linear.weight)  # a convex problem: a fixed start, and no draw from the global RNG
    nn.init.zeros_(classifier.linear.bias)
    optimizer = torch.optim.LBFGS(classifier.parameters(), max_iter=200, line_search_fn="strong_wolfe")
    target = knows[train].float()

    def closure():
        optimizer.zero_grad()
        loss = F.binary_cross_entropy(classifier(embeddings[train]).clamp(1e-7, 1 - 1e-7), target)
        loss = loss + weight_decay * classifier.linear.weight.square().sum()
        loss.backward()
        return loss
    optimizer.step(closure)
    classifier.requires_grad_(False)
    with torch.no_grad():
        predicted = classifier(embeddings[held]) > threshold
    actual = knows[held]
    hits = (predicted & actual).sum().item()
    stats = {"n_labels": len(knows), "n_train": len(train), "n_holdout": n_holdout,
             "knows_rate": knows.float().mean().item(),
             "predicted_known_rate": predicted.float().mean().item() if n_holdout else None,
             "precision": hits / predicted.sum().item() if predicted.any() else None,
             "recall": hits / actual.sum().item() if actual.any() else None}
    return classifier, stats


# --- RAVEN: a learned combination of teachers ----------------------------------------------------

class TeacherMixture(nn.Module):
    """RAVEN's combination weights w on the simplex [T], initialized uniform and trained by SGD
    through the student's own loss (the loss reads them as the input ``teacher_weights``); after
    each step clamped at SIMPLEX_FLOOR and renormalized, frozen for the first ``freeze`` of training
    (Jeon et al., NeurIPS 2025; mlbio-epfl/raven ``Ensemble.ensemble_weights_update_callback``).
    Under DDP the gradient is averaged over processes first, so every process keeps the same w."""

    def __init__(self, n_teachers: int, *, lr: float, freeze: float, device=None):
        super().__init__()
        self.weights = nn.Parameter(torch.full((n_teachers,), 1 / n_teachers, device=device))
        self.optimizer = torch.optim.SGD([self.weights], lr=lr)
        self.freeze = freeze
        self.collapse_reported = False

    @torch.no_grad()
    def step(self, progress: float) -> None:
        """After ``loss.backward()``: one SGD step on w unless still frozen at ``progress``, then project."""
        if self.weights.grad is not None and torch_dist.is_initialized() and torch_dist.get_world_size() > 1:
            torch_dist.all_reduce(self.weights.grad)
            self.weights.grad /= torch_dist.get_world_size()
        if progress >= self.freeze and self.weights.grad is not None:
            self.optimizer.step()
            # The loss is a sum of cross-entropies, so w's gradient is positive: a step too large takes
            # every weight below the floor, and renormalized they are uniform again. RAVEN's code does the
            # same, silently; then the learned mix is plain averaging, so it is reported (once per run).
            if (self.weights <= SIMPLEX_FLOOR).all() and not self.collapse_reported:
                self.collapse_reported = True
                logging.getLogger(__name__).warning(
                    "RAVEN: one step of method.raven.lr=%g took every teacher weight to the floor %g; "
                    "renormalized they are uniform again, so the mix is averaging: lower method.raven.lr",
                    self.optimizer.param_groups[0]["lr"], SIMPLEX_FLOOR)
            self.weights.clamp_(min=SIMPLEX_FLOOR)
            self.weights /= self.weights.sum()
        self.optimizer.zero_grad(set_to_none=True)

    def state(self) -> dict:
        """Tensors and plain types only (read back with ``weights_only=True``)."""
        return {"weights": self.weights.detach().cpu().clone(), "optimizer": self.optimizer.state_dict()}

    def load(self, state: dict) -> None:
        with torch.no_grad():
            self.weights.copy_(state["weights"])
        self.optimizer.load_state_dict(state["optimizer"])
