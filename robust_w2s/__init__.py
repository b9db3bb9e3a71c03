"""robust-w2s: weak-to-strong adversarial robustness for CLIP models."""
from .checkpoints import save_checkpoint
from .data import load_image_dataset
from .errors import UserError
from .models import load_checkpoint, load_model
from .zeroshot import ZeroShotClassifier

__all__ = ["UserError", "ZeroShotClassifier", "load_checkpoint", "load_image_dataset", "load_model",
           "save_checkpoint"]
