"""Adversarial attacks on any module mapping images in [0, 1] to logits or features.

Nothing here knows about CLIP: normalization, text heads and logit scales live inside the
attacked module. Attacks run with the model in eval mode, sum their losses over the batch,
restore the model's train/eval flags and never touch the caller's global RNG. Their forward
passes run in fp32, or, for training-time attacks that ask for it, under bf16 autocast; the
loss and the input gradient are fp32 either way.
"""

from ._common import PRECISIONS, eval_mode
from .autoattack import VERSIONS, AttackResult, autoattack
from .eps import parse_eps
from .inverse import inverse_adversarial
from .objectives import OBJECTIVES, cross_entropy, feature_distance, kl_divergence
from .pgd import EVAL_STEP_FRACTION, evaluation_pgd, pgd

__all__ = [
    "EVAL_STEP_FRACTION",
    "OBJECTIVES",
    "PRECISIONS",
    "VERSIONS",
    "AttackResult",
    "autoattack",
    "cross_entropy",
    "eval_mode",
    "evaluation_pgd",
    "feature_distance",
    "inverse_adversarial",
    "kl_divergence",
    "parse_eps",
    "pgd",
]
