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

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from ..attacks import cross_entropy, feature_distance, kl_divergence
from ..errors import UserError, unknown_name

INPUTS = {
    "labels": "ground-truth labels y [B] (only for methods defined with labels)",
    "progress": "fraction of training done, a float in [0, 1)",
    "teacher_probs": "p_T(x) [B, K], read from the cache computed once before training",
    "teachers_probs": "p_Tt(x) of every teacher t of ``teachers`` [B, T, K], from the cache",
    "average_teacher_probs": "mean_t p_Tt(x) over ``teachers`` [B, K], from the cache",
    "smoothed_teacher_probs": "p_T(x) after label propagation over a kNN graph of S0's embeddings [B, K]",
    "teacher_weights": "RAVEN's combination weights of the teachers on the simplex [T], with gradient",
    "pik": "P(IK)(x): the probability that the initial student already knows x's label [B], from the cache",
    "teacher_entropy_median": "kappa: median over the alignment set of H(q0(x)), q0 the method's "
                              "unrefined guidance at the start (``Method.entropy_source``), a 0-d tensor",
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
    entropy_source: str | None = None                  # the cached input whose entropy median is kappa

    def __post_init__(self):
        unknown = self.needs - set(INPUTS)
        if unknown:
            raise ValueError(f"{self.name} declares unknown inputs {sorted(unknown)}")
        if self.attack is None and self.needs & ADVERSARIAL_INPUTS:
            raise ValueError(f"{self.name} needs adversarial inputs but declares no attack")


@dataclass
class RavenSettings:
    """RAVEN's learned combination of teachers (Jeon et al., NeurIPS 2025; mlbio-epfl/raven)."""
    lr: float = 0.01             # SGD learning rate of the combination weights (same loss as the student)
    freeze: float = 0.1          # fraction of training during which the weights stay uniform
    agreement: float = 0.1       # fraction of training that ignores samples where the teachers' argmax differ


@dataclass
class GraphSettings:
    """Graph smoothing of the teacher's soft labels (Selective W2SG; Zhou et al., 2004 propagation)."""
    neighbours: int = 10         # k of the symmetric kNN graph over S0's normalized image embeddings
    alpha: float = 0.5           # propagation strength: F <- alpha S F + (1 - alpha) p_T
    iterations: int = 20         # propagation steps


@dataclass
class PikSettings:
    """P(IK): where the initial student already knows the answer (Selective W2SG)."""
    labels: int = 512            # labelled alignment images it reads (a seeded subset; no other label is read)
    holdout: float = 0.2         # share of them held out to measure its precision and recall
    threshold: float = 0.5       # w(x) = 1[P(IK)(x) > threshold]: the student's own label where it knows


@dataclass
class MethodSettings:
    name: str = "adv-w2s"        # which objective: a key of METHODS
    # The two hooks of the weak-to-strong objectives (adv-w2s, vanilla-w2s): see W2S_DEFAULTS for None.
    reweighting: str | None = None  # w(x): "beta" | "eur" | "pik" (a key of REWEIGHTINGS)
    guidance: str | None = None  # q(x): "teacher" | "iar" | "graph" | "average" | "raven" (GUIDANCES)
    beta: float = 0.5            # the "beta" re-weighting's constant self-label weight
    beta_warmup: float = 0.0     # fraction of training over which beta ramps up from 0 (vanilla-w2s: 0.1)
    raven: RavenSettings = field(default_factory=RavenSettings)
    graph: GraphSettings = field(default_factory=GraphSettings)
    pik: PikSettings = field(default_factory=PikSettings)
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


def w2s_loss(student_logits: Tensor, target_probs: Tensor, self_labels: Tensor, weight: Tensor | float,
             sample_weights: Tensor | None = None) -> tuple[Tensor, Terms]:
    """The weak-to-strong objective: sum_b s_b [(1 - w_b) CE(p_S(x_b), q_b) + w_b CE(p_S(x_b), onehot(self_b))]
    / sum_b s_b, with x = x^ (Adv-W2S, Eq. 4/5) or clean x (Burns et al., 2023).

    student_logits [B, K]; target_probs q [B, K] (gradient flows into q too: RAVEN learns its weights
    through this loss); self_labels [B]; weight w: a float or [B] in [0, 1]; sample_weights s [B]
    (None: every sample counts 1; RAVEN's agreement schedule zeroes samples early on).
    """
    log_p = F.log_softmax(student_logits.float(), dim=-1)
    guided = -(target_probs.float() * log_p).sum(dim=-1)
    self_term = F.nll_loss(log_p, self_labels, reduction="none")
    weight = torch.as_tensor(weight, dtype=log_p.dtype, device=log_p.device).expand_as(guided)
    per_sample = (1 - weight) * guided + weight * self_term
    if sample_weights is None:
        loss = per_sample.mean()
    else:  # a batch whose samples all count 0 contributes a zero loss (and zero gradient)
        loss = (sample_weights * per_sample).sum() / sample_weights.sum().clamp_min(1)
    return loss, {"guided": guided.mean(), "self": self_term.mean(), "w": weight.mean()}


# --- the weak-to-strong hooks: re-weighting w(x) and guidance q(x) ------------------------------

def beta_weight(beta: float, warmup: float, progress: float) -> float:
    """Constant self-label weight beta, ramped linearly from 0 over the first ``warmup`` of training."""
    return beta * (min(1.0, progress / warmup) if warmup > 0 else 1.0)


def pik_weights(pik: Tensor, threshold: float) -> Tensor:
    """Selective W2SG: w = 1 where P(IK)(x) > threshold (the student keeps its own label), else 0 [B]."""
    return (pik > threshold).float()


def raven_combination(teachers_probs: Tensor, weights: Tensor) -> Tensor:
    """RAVEN's guidance sum_t w_t p_Tt(x) [B, K] from teachers_probs [B, T, K] and simplex weights [T]."""
    return (weights.to(teachers_probs.dtype)[None, :, None] * teachers_probs).sum(dim=1)


def teachers_agree(teachers_probs: Tensor) -> Tensor:
    """float [B]: 1 where every teacher's argmax is the same class (RAVEN's easy samples), else 0."""
    predictions = teachers_probs.argmax(dim=-1)
    return (predictions == predictions[:, :1]).all(dim=1).float()


@dataclass(frozen=True)
class Guidance:
    """q(x), what the student is aligned to; q0(x), its unrefined form without gradient (EUR's
    entropy and the student attack's target); ``entropy_source``, the cached input whose entropy
    median over the alignment set is kappa."""
    needs: frozenset[str]
    target: Callable[[Inputs], Tensor]
    clean: Callable[[Inputs], Tensor]
    entropy_source: str
    sample_weights: Callable[[Inputs], Tensor | None] = lambda inputs: None
    terms: Callable[[Inputs], Terms] = lambda inputs: {}


def _cached(name: str) -> Guidance:
    return Guidance(frozenset({name}), lambda i: i[name], lambda i: i[name], name)


def _raven(s: MethodSettings) -> Guidance:
    def target(inputs: Inputs) -> Tensor:
        return raven_combination(inputs["teachers_probs"], inputs["teacher_weights"])

    def sample_weights(inputs: Inputs) -> Tensor | None:
        return teachers_agree(inputs["teachers_probs"]) if inputs["progress"] < s.raven.agreement else None
    return Guidance(frozenset({"teachers_probs", "teacher_weights", "progress"}), target,
                    lambda inputs: target(inputs).detach(), "average_teacher_probs", sample_weights,
                    lambda inputs: {f"teacher_weight_{t}": w for t, w in enumerate(inputs["teacher_weights"].detach())})


GUIDANCES: dict[str, Callable[[MethodSettings], Guidance]] = {
    "teacher": lambda s: _cached("teacher_probs"),
    "iar": lambda s: Guidance(frozenset({"teacher_probs", "refined_teacher_probs"}),
                              lambda i: i["refined_teacher_probs"], lambda i: i["teacher_probs"], "teacher_probs"),
    "graph": lambda s: _cached("smoothed_teacher_probs"),
    "average": lambda s: _cached("average_teacher_probs"),
    "raven": _raven,
}
# Each re-weighting: (inputs it declares, (inputs, q0) -> w).
REWEIGHTINGS: dict[str, Callable[[MethodSettings], tuple[frozenset[str], Callable[[Inputs, Tensor], Any]]]] = {
    "beta": lambda s: (frozenset({"progress"}), lambda i, q0: beta_weight(s.beta, s.beta_warmup, i["progress"])),
    "eur": lambda s: (frozenset({"teacher_entropy_median"}), lambda i, q0: eur_weights(q0, i["teacher_entropy_median"])),
    "pik": lambda s: (frozenset({"pik"}), lambda i, q0: pik_weights(i["pik"], s.pik.threshold)),
}
W2S_DEFAULTS = {"adv-w2s": ("eur", "iar"), "vanilla-w2s": ("beta", "teacher")}  # (reweighting, guidance)


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

def _w2s(s: MethodSettings, *, adversarial: bool) -> Method:
    """adv-w2s (student on x^, found by PGD against q0) or vanilla-w2s (clean x), each with any
    re-weighting and any guidance: e.g. adversarial RAVEN with EUR is adv-w2s, eur, raven."""
    name = "adv-w2s" if adversarial else "vanilla-w2s"
    default_reweighting, default_guidance = W2S_DEFAULTS[name]
    reweighting = s.reweighting or default_reweighting
    guidance_name = s.guidance or default_guidance
    if reweighting not in REWEIGHTINGS:
        raise unknown_name("method.reweighting", reweighting, REWEIGHTINGS)
    if guidance_name not in GUIDANCES:
        raise unknown_name("method.guidance", guidance_name, GUIDANCES)
    guidance = GUIDANCES[guidance_name](s)
    weight_needs, weight_of = REWEIGHTINGS[reweighting](s)
    logits = "adv_logits" if adversarial else "clean_logits"

    def loss(inputs: Inputs):
        value, terms = w2s_loss(inputs[logits], guidance.target(inputs), inputs["self_labels"],
                                weight_of(inputs, guidance.clean(inputs)), guidance.sample_weights(inputs))
        return value, terms | guidance.terms(inputs)
    return Method(name, guidance.needs | weight_needs | {logits, "self_labels"}, loss,
                  Attack(guidance.clean) if adversarial else None, entropy_source=guidance.entropy_source)


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
    "adv-w2s": lambda s: _w2s(s, adversarial=True), "vanilla-w2s": lambda s: _w2s(s, adversarial=False),
    "tecoa": _tecoa, "pmg-aft": _pmg_aft,
    "fare": _fare, "agft": _agft,
}


def get_method(settings: MethodSettings) -> Method:
    """The declared method for ``settings.name``; an unknown name lists the valid ones."""
    if settings.name not in METHODS:
        raise unknown_name("method", settings.name, METHODS)
    hooks = [key for key in ("reweighting", "guidance") if getattr(settings, key) is not None]
    if hooks and settings.name not in W2S_DEFAULTS:
        raise UserError(f"method.{hooks[0]} is a hook of {' and '.join(W2S_DEFAULTS)}, not of {settings.name!r}: "
                        f"remove it or choose one of those methods")
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
