"""robust-w2s: weak-to-strong adversarial robustness for CLIP models.

The public names below are imported on first use, so that ``import robust_w2s.attacks`` (or
``robust-w2s --help``) does not pay for importing open_clip and datasets.

Packages: ``robust_w2s.attacks`` (PGD, AutoAttack; nothing of CLIP), ``robust_w2s.align`` (the
alignment objectives and the training loop), ``robust_w2s.eval`` (benchmark registry, runner,
audits, reports), ``robust_w2s.world`` (the embedded world), ``robust_w2s.study`` (the reference study),
``robust_w2s.theory`` (the theory lab: weak-to-strong theory papers as small synthetic experiments).
"""
from importlib import import_module
from typing import TYPE_CHECKING

_PUBLIC = {"UserError": "errors", "ZeroShotClassifier": "zeroshot", "load_checkpoint": "models",
           "load_image_dataset": "data", "load_model": "models", "save_checkpoint": "checkpoints"}
__all__ = sorted(_PUBLIC)

if TYPE_CHECKING:
    from .checkpoints import save_checkpoint
    from .data import load_image_dataset
    from .errors import UserError
    from .models import load_checkpoint, load_model
    from .zeroshot import ZeroShotClassifier


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module 'robust_w2s' has no attribute {name!r}")
