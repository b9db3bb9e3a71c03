"""Alignment objectives: one short pure function per method, and the registry that names them.

Every method DECLARES the inputs it needs (names from ``INPUTS``); the training loop computes
exactly those, lazily (see :mod:`robust_w2s.align.inputs`), and never knows which method runs.
A method that does not declare ``labels`` is given a dataset without a label column, so it
cannot read labels even by mistake. A method may also declare an adversarial attack: the
student's input x' is then found by PGD maximizing the method's own loss (DESIGN.md section 5),
against ``Attack.target``.

Notation (DESIGN.md section 4): p_M(x) = softmax(s_M cos(f_M(x), W_M)); M(p) = one-hot argmax;
CE(p, q) = -sum q log p; every loss is a mean over the batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from ..attacks import cross_entropy, feature_distance, kl_divergence
from ..errors import unknown_name

INPUTS = {
    "labels": "ground-truth labels y [B] (only for methods defined with labels)",
    "progress": "fraction of training done, a float in [0, 1)",
    "teacher_probs": "p_T(x) [B, K], read from the cache computed once before training",
    "teacher_entropy_median": "kappa: median over the alignment set of H(p_T(x)), a 0-d tensor",
    "refined_teacher_probs": "p_T(x~), x~ = inverse_adversarial(T, x) in the refinement ball (IAR)",
    "clean_logits": "student logits on x [B, K], with gradient",
    "self_labels": "argmax of the student's logits on x [B], without gradient",
    "adv_logits": "student logits on the method's adversarial x' [B, K], with gradient",
    "adv_features": "student's unnormalized image embedding of x' [B, D], with gradient",
    "frozen_logits": "logits of the frozen initial student S0 on x [B, K]",
    "frozen_adv_logits": "logits of S0 on x' [B, K]",
    "frozen_features": "S0's unnormalized image embedding of x [B, D]",
}

ADVERSARIAL_INPUTS = {"adv_logits", "adv_features", "frozen_adv_logits"}  # need Method.attack

Inputs = Mapping[str, Any]
Terms = dict[str, Tensor]


@dataclass(frozen=True)
class Attack:
    """What the student's adversarial input x' maximizes: ``objective(student(x'), target(inputs))``."""
    target: Callable[[Inputs], Tensor]  # built from declared inputs only (labels, teacher probs, ...)
    objective: str = "ce"               # "ce": CE of the student's logits; "l2": raw-feature distance


@dataclass(frozen=True)
class Method:
    """One alignment method as the loop sees it: what it needs and how it scores a batch."""
    name: str                                          # the config name
    needs: frozenset[str]                              # keys of INPUTS the loop must provide
    loss: Callable[[Inputs], tuple[Tensor, Terms]]     # inputs -> (scalar loss, named terms to log)
    attack: Attack | None = None                       # None: the method trains on clean images only

    def __post_init__(self):
        unknown = self.needs - set(INPUTS)
        if unknown:
            raise ValueError(f"{self.name} declares unknown inputs {sorted(unknown)}")
        if self.attack is None and self.needs & ADVERSARIAL_INPUTS:
            raise ValueError(f"{self.name} needs adversarial inputs but declares no attack")


@dataclass
class MethodSettings:
    name: str = "adv-w2s"        # which objective: a key of METHODS
    eur: bool = True             # adv-w2s: entropy re-weighting w = H_T / (H_T + kappa); off: w = beta
    iar: bool = True             # adv-w2s: teacher target on its inverse-adversarial input x~
    beta: float = 0.5            # constant self-label weight (adv-w2s without EUR; vanilla-w2s's final weight)
    beta_warmup: float = 0.1     # vanilla-w2s: fraction of training over which beta ramps up from 0
    agft_temperature: float = 1.0  # AGFT: r in softmax(r * s * cos(f_S0(x), W))
    fare_warmup_steps: int = 0   # optimizer steps of FARE before the method itself (0: none)


# --- the objectives: pure functions of tensors -------------------------------------------------

def entropy(probs: Tensor) -> Tensor:
    """H(p) = -sum_k p_k log p_k per row [B] (0 log 0 = 0)."""
    return -(probs * probs.clamp_min(1e-30).log()).sum(dim=-1)


def eur_weights(teacher_probs: Tensor, median: Tensor) -> Tensor:
    """EUR: w = H_T / (H_T + kappa) in [0, 1) per sample; the more uncertain the teacher, the larger."""
    h = entropy(teacher_probs.float())
    return h / (h + median).clamp_min(1e-12)


def adv_w2s_loss(adv_logits: Tensor, target_probs: Tensor, self_labels: Tensor,
                 weight: Tensor | float) -> tuple[Tensor, Terms]:
    """mean_b[(1 - w_b) CE(p_S(x^_b), q_b) + w_b CE(p_S(x^_b), onehot(self_b))] (Adv-W2S, Eq. 4/5)."""
    log_p = F.log_softmax(adv_logits.float(), dim=-1)
    guided = -(target_probs.float() * log_p).sum(dim=-1)
    self_term = F.nll_loss(log_p, self_labels, reduction="none")
    weight = torch.as_tensor(weight, dtype=log_p.dtype, device=log_p.device).expand_as(guided)
    loss = ((1 - weight) * guided + weight * self_term).mean()
    return loss, {"guided": guided.mean(), "self": self_term.mean(), "w": weight.mean()}


def vanilla_w2s_loss(clean_logits: Tensor, teacher_probs: Tensor, beta: float) -> tuple[Tensor, Terms]:
    """(1 - beta) CE(p_S(x), p_T(x)) + beta CE(p_S(x), M(p_S(x))) on clean x (Burns et al., 2023)."""
    return adv_w2s_loss(clean_logits, teacher_probs, clean_logits.detach().argmax(dim=-1), beta)


def tecoa_loss(adv_logits: Tensor, labels: Tensor) -> tuple[Tensor, Terms]:
    """CE(p_S(x'), y) (TeCoA, Mao et al., 2023)."""
    loss = cross_entropy(adv_logits, labels) / len(labels)
    return loss, {"ce": loss}


def pmg_aft_loss(adv_logits: Tensor, clean_logits: Tensor, frozen_adv_logits: Tensor,
                 labels: Tensor) -> tuple[Tensor, Terms]:
    """CE(p_S(x'), y) + KL(p_S0(x') || p_S(x')) + KL(p_S(x) || p_S(x')) (PMG-AFT, Wang et al., 2024);
    logits keep the model's logit scale. Gradient flows through both student terms."""
    n = len(labels)
    ce = cross_entropy(adv_logits, labels) / n
    general = kl_divergence(adv_logits, F.softmax(frozen_adv_logits.float(), dim=-1)) / n
    clean = kl_divergence(adv_logits, F.softmax(clean_logits.float(), dim=-1)) / n
    return ce + general + clean, {"ce": ce, "kl_frozen": general, "kl_clean": clean}


def fare_loss(adv_features: Tensor, frozen_features: Tensor) -> tuple[Tensor, Terms]:
    """mean_b ||f_S(x'_b) - f_S0(x_b)||_2^2 on unnormalized embeddings (FARE, Schlarmann et al., 2024)."""
    loss = feature_distance(adv_features, frozen_features) / len(adv_features)
    return loss, {"l2": loss}


def agft_target(frozen_logits: Tensor, temperature: float) -> Tensor:
    """AGFT's soft target softmax(r * s * cos(f_S0(x), W)): the frozen student's own zero-shot guess."""
    return F.softmax(temperature * frozen_logits.float(), dim=-1)


def agft_loss(adv_logits: Tensor, target_probs: Tensor) -> tuple[Tensor, Terms]:
    """CE(p_S(x'), softmax(r * s * cos(f_S0(x), W))) (AGFT)."""
    loss = cross_entropy(adv_logits, target_probs) / len(adv_logits)
    return loss, {"ce": loss}


# --- declarations: which inputs each method needs, and what its attack maximizes ---------------

def _adv_w2s(s: MethodSettings) -> Method:
    target = "refined_teacher_probs" if s.iar else "teacher_probs"
    needs = {"teacher_probs", "adv_logits", "self_labels", target}
    needs |= {"teacher_entropy_median"} if s.eur else set()

    def loss(inputs: Inputs):
        weight = (eur_weights(inputs["teacher_probs"], inputs["teacher_entropy_median"]) if s.eur
                  else s.beta)
        return adv_w2s_loss(inputs["adv_logits"], inputs[target], inputs["self_labels"], weight)
    # x^ maximizes CE(p_S(x + d), p_T(x)): the clean teacher's soft labels, with or without IAR.
    return Method("adv-w2s", frozenset(needs), loss, Attack(lambda inputs: inputs["teacher_probs"]))


def _vanilla_w2s(s: MethodSettings) -> Method:
    def loss(inputs: Inputs):
        ramp = min(1.0, inputs["progress"] / s.beta_warmup) if s.beta_warmup > 0 else 1.0
        return vanilla_w2s_loss(inputs["clean_logits"], inputs["teacher_probs"], s.beta * ramp)
    return Method("vanilla-w2s", frozenset({"clean_logits", "teacher_probs", "progress"}), loss)


def _tecoa(s: MethodSettings) -> Method:
    return Method("tecoa", frozenset({"adv_logits", "labels"}),
                  lambda inputs: tecoa_loss(inputs["adv_logits"], inputs["labels"]),
                  Attack(lambda inputs: inputs["labels"]))


def _pmg_aft(s: MethodSettings) -> Method:
    needs = frozenset({"adv_logits", "clean_logits", "frozen_adv_logits", "labels"})
    return Method("pmg-aft", needs,
                  lambda i: pmg_aft_loss(i["adv_logits"], i["clean_logits"], i["frozen_adv_logits"], i["labels"]),
                  Attack(lambda inputs: inputs["labels"]))


def _fare(s: MethodSettings) -> Method:
    return Method("fare", frozenset({"adv_features", "frozen_features"}),
                  lambda inputs: fare_loss(inputs["adv_features"], inputs["frozen_features"]),
                  Attack(lambda inputs: inputs["frozen_features"], objective="l2"))


def _agft(s: MethodSettings) -> Method:
    def target(inputs: Inputs) -> Tensor:
        return agft_target(inputs["frozen_logits"], s.agft_temperature)
    return Method("agft", frozenset({"adv_logits", "frozen_logits"}),
                  lambda inputs: agft_loss(inputs["adv_logits"], target(inputs)), Attack(target))


METHODS: dict[str, Callable[[MethodSettings], Method]] = {
    "adv-w2s": _adv_w2s, "vanilla-w2s": _vanilla_w2s, "tecoa": _tecoa, "pmg-aft": _pmg_aft,
    "fare": _fare, "agft": _agft,
}


def get_method(settings: MethodSettings) -> Method:
    """The declared method for ``settings.name``; an unknown name lists the valid ones."""
    if settings.name not in METHODS:
        raise unknown_name("method", settings.name, METHODS)
    return METHODS[settings.name](settings)


@dataclass(frozen=True)
class Plan:
    """Which method trains at which step: an optional FARE warm-up, then the configured method."""
    phases: tuple[tuple[int, Method], ...]  # (first step, method), first steps increasing from 0

    @classmethod
    def build(cls, settings: MethodSettings) -> "Plan":
        method = get_method(settings)
        if settings.fare_warmup_steps > 0:
            return cls(((0, _fare(settings)), (settings.fare_warmup_steps, method)))
        return cls(((0, method),))

    def at(self, step: int) -> Method:
        return [method for first, method in self.phases if first <= step][-1]

    @property
    def needs(self) -> frozenset[str]:
        """Every input some phase declares: what the data and the models must make available."""
        return frozenset().union(*(method.needs for _, method in self.phases))
