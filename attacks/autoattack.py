"""Standard AutoAttack (Croce & Hein 2020, https://arxiv.org/abs/2003.01690) on torchattacks.

torchattacks' own ``AutoAttack`` class runs 10 iterations per attack, not the published 100,
so the cascade is assembled here from its APGD / APGDT / FAB / Square classes with the
settings of the reference implementation (fra31/auto-attack, version "standard").
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F
import torchattacks
from torch import Tensor, nn

from ._common import check_norm, eval_mode, forward_at, project
from ._registry import Registry
from .eps import parse_eps

VERSIONS = Registry(
    "AutoAttack version",
    {
        "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
        # The RobustBench / FARE-style cheaper subset.
        "apgd": ("apgd-ce", "apgd-t"),
        # Its first attack alone: the least a robustness claim is judged by beyond PGD.
        "apgd-ce": ("apgd-ce",),
    },
)
"""Attack cascades by version name; an unknown version raises ValueError listing the valid ones."""

MAX_TARGET_CLASSES = 9  # APGD-T and FAB-T attack the 9 highest-scoring wrong classes


@dataclass(frozen=True)
class AttackResult:
    """Outcome of a cascade of attacks on one batch.

    adversarial: [B, C, H, W] in [0, 1], per sample the first successful adversarial image
        found, else the clean image (also for clean-misclassified samples, never attacked).
    robust: bool [B], True iff correct on the clean image and under every attack run.
    robust_after: attack name -> bool [B], robustness after that stage (cumulative, in
        cascade order).
    """

    adversarial: Tensor
    robust: Tensor
    robust_after: dict[str, Tensor] = field(default_factory=dict)


def autoattack(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    eps: float | str,
    norm: str = "linf",
    version: str = "standard",
    n_classes: int,
    seed: int = 0,
    apgd_steps: int = 100,
    fab_steps: int = 100,
    square_queries: int = 5000,
) -> AttackResult:
    """Robustness of ``model`` under AutoAttack: per-sample worst case over a cascade.

    "standard": APGD-CE (100 steps, 1 restart), APGD-T (targeted DLR, 100 steps, the
    min(9, K-1) highest wrong classes), FAB-T (100 steps, same targets), Square (5000
    queries, p_init 0.8). "apgd": APGD-CE + APGD-T only. Each attack runs only on samples
    still robust; an image counts as adversarial only if, after projection onto the eps-ball
    and [0, 1], the model misclassifies it (in fp32; returned in the dtype of ``images``). Below 4 classes the targeted DLR loss is
    undefined, so APGD-T uses the targeted cross-entropy instead.

    Args:
        model: maps [B, C, H, W] images in [0, 1] to logits [B, n_classes]; normalization
            belongs inside it. Attacked in eval mode, fp32, autocast off; its train/eval
            flags, parameters' requires_grad and ``.grad`` are left as they were.
        images: [B, C, H, W] in [0, 1]. labels: int [B] in [0, n_classes).
        eps: budget in pixel units (number or "4/255"-style string). norm: "linf" or "l2".
        version: a key of ``VERSIONS``. n_classes: K, the number of logits (>= 2).
        seed: seed of every attack's random restarts; the caller's RNG state is unchanged.
        apgd_steps, fab_steps, square_queries: published defaults; lower only for tests.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        >>> x, y = torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
        >>> result = autoattack(model, x, y, eps="8/255", n_classes=3, version="apgd")
        >>> sorted(result.robust_after)
        ['apgd-ce', 'apgd-t']
    """
    names = VERSIONS[version]
    norm = check_norm(norm)
    eps = parse_eps(eps, upper=1.0 if norm == "linf" else None)
    if not isinstance(n_classes, int) or n_classes < 2:
        raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
    clean = images.detach().to(torch.float32)
    labels = labels.detach().to(device=clean.device, dtype=torch.long)
    wrapped = _Fp32Model(model)

    with eval_mode(model), _frozen_parameters(model):
        robust = _predict(wrapped, clean, n_classes) == labels
        adversarial = clean.clone()
        attacks = _build_attacks(
            wrapped, names, eps=eps, norm=norm, n_classes=n_classes, seed=seed,
            apgd_steps=apgd_steps, fab_steps=fab_steps, square_queries=square_queries,
            device=clean.device,
        )
        robust_after = {}
        for name in names:
            index = robust.nonzero().flatten()
            if index.numel() > 0 and eps > 0:
                # The attack's own success flags are not trusted: its output is projected
                # and re-checked with the model, so `robust` matches `adversarial`.
                candidate = project(_run(attacks[name], clean[index], labels[index]),
                                    clean[index], eps, norm)
                fooled = _predict(wrapped, candidate, n_classes) != labels[index]
                adversarial[index[fooled]] = candidate[fooled]
                robust[index[fooled]] = False
            robust_after[name] = robust.clone()
    return AttackResult(adversarial.to(images.dtype), robust, robust_after)


class _Fp32Model(nn.Module):
    """The attacked model as torchattacks sees it: fp32 inputs and outputs, autocast off.

    Wrapping also keeps torchattacks from normalizing: it only reads ``mean``/``std`` from
    models whose class is named "RobModel" (torchattacks/attack.py, Attack.__init__), and
    without them ``get_logits`` is a plain ``model(inputs)`` on [0, 1] pixels.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        # Only this wrapper's own flag: torchattacks calls model.train() after each attack
        # on a model it found training (attack.py, Attack._recover_model_mode), which would
        # switch the attacked model to train mode in the middle of the cascade.
        self.training = False

    def forward(self, images: Tensor) -> Tensor:
        return forward_at(self.model, images, "fp32")


class _APGDT(torchattacks.APGDT):
    """torchattacks' APGD-T, with targeted cross-entropy below 4 classes.

    The targeted DLR loss divides by z_(1) - (z_(3) + z_(4)) / 2 (sorted logits), which needs
    4 classes; the reference implementation refuses K <= 3 ("not possible to use the targeted
    DLR loss"). Maximizing -CE(logits, target) is its targeted-CE alternative.
    """

    def dlr_loss_targeted(self, x: Tensor, y: Tensor, y_target: Tensor) -> Tensor:
        if x.shape[1] >= 4:
            return super().dlr_loss_targeted(x, y, y_target)
        return -F.cross_entropy(x, y_target, reduction="none")


def _build_attacks(
    model: nn.Module, names, *, eps: float, norm: str, n_classes: int, seed: int,
    apgd_steps: int, fab_steps: int, square_queries: int, device: torch.device,
) -> dict[str, torchattacks.attack.Attack]:
    """The torchattacks objects of the cascade, configured as in the published AutoAttack."""
    norm_name = {"linf": "Linf", "l2": "L2"}[norm]
    common = dict(norm=norm_name, eps=eps, seed=seed)
    builders = {
        "apgd-ce": lambda: torchattacks.APGD(
            model, steps=apgd_steps, n_restarts=1, loss="ce", eot_iter=1, rho=0.75, **common),
        "apgd-t": lambda: _APGDT(
            model, steps=apgd_steps, n_restarts=1, eot_iter=1, rho=0.75, n_classes=n_classes,
            **common),
        "fab-t": lambda: torchattacks.FAB(
            model, steps=fab_steps, n_restarts=1, alpha_max=0.1, eta=1.05, beta=0.9,
            multi_targeted=True, n_classes=n_classes, **common),
        # resc_schedule=False: the reference halves p at fixed query counts (10, 50, 200,
        # ...), torchattacks' default rescales that schedule to n_queries.
        "square": lambda: torchattacks.Square(
            model, n_queries=square_queries, n_restarts=1, p_init=0.8, loss="margin",
            resc_schedule=False, **common),
    }
    attacks = {}
    for name in names:
        # torchattacks prints a warning when it cannot infer the device from parameters;
        # the device is set explicitly below.
        with contextlib.redirect_stdout(io.StringIO()):
            attack = builders[name]()
        attack.set_device(device)
        if name in ("apgd-t", "fab-t"):
            # torchattacks sets n_classes - 1 targets; both loop over target ranks
            # range(2, n_target_classes + 2) (apgdt.py perturb, fab.py perturb), so this
            # attacks the 2nd..(n+1)-th highest logits, as the reference does.
            attack.n_target_classes = min(MAX_TARGET_CLASSES, n_classes - 1)
        attacks[name] = attack
    return attacks


def _run(attack: torchattacks.attack.Attack, images: Tensor, labels: Tensor) -> Tensor:
    """Run one attack without disturbing the caller's RNG (torchattacks reseeds it)."""
    with torch.random.fork_rng(devices=_cuda_devices_to_fork(images.device)):
        return attack(images, labels).detach()


def _cuda_devices_to_fork(device: torch.device) -> list[int]:
    # torchattacks draws its noise on the CPU generator but also calls
    # torch.cuda.random.manual_seed, which reseeds the current CUDA device.
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()) and device.type != "cuda":
        return []
    devices = {torch.cuda.current_device()}
    if device.type == "cuda" and device.index is not None:
        devices.add(device.index)
    return sorted(devices)


@contextlib.contextmanager
def _frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Parameters without requires_grad during the attacks, restored afterwards.

    FAB calls ``.backward()`` (fab.py, get_diff_logits_grads_batch_targeted), which would
    otherwise accumulate ``.grad`` on the model's parameters; it also saves their gradients.
    """
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


@torch.no_grad()
def _predict(model: nn.Module, images: Tensor, n_classes: int) -> Tensor:
    logits = model(images)
    if logits.dim() != 2 or logits.shape[1] != n_classes:
        raise ValueError(
            f"autoattack expects logits [B, {n_classes}] (n_classes={n_classes}), "
            f"got shape {tuple(logits.shape)}"
        )
    return logits.argmax(dim=1)
