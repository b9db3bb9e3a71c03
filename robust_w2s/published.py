"""The field's published robust CLIP checkpoints, read into open_clip state dicts.

Each repository saves its fine-tuned weights its own way (layouts read from each one's saving code):

- RobustVLM (FARE, and its TeCoA re-implementation; ``train/adversarial_training_clip.py``):
  ``torch.save(model.visual.state_dict())`` of an open_clip ViT built with ``pretrained='openai'``:
  the image tower only, keys ``conv1.weight``, ``transformer.resblocks.0.attn.in_proj_weight``,
  ``proj``, no prefix. Its hub releases (``hf-hub:chs20/fare2-clip``) are full open_clip models.
- TeCoA (cvlab-columbia/ZSRobust4FoundationModel, ``finetuning.py``), PMG-AFT (same code base) and
  TGA-ZSR: a dict ``{"epoch", "state_dict" (an empty prompter), "add_prompter",
  "vision_encoder_state_dict", "best_acc1", "optimizer"}``; the image tower of OpenAI's ``clip``
  package (the same key layout as open_clip's), with ``module.`` prefixes where DataParallel wrapped
  it. ``best_acc1`` is often a numpy float64, which ``weights_only`` loading refuses unless numpy's
  scalar type is allowed (it is, below: reconstructing a number runs no code).
- A full OpenAI ``clip`` or open_clip state dict (``.pt``/``.bin``/``.safetensors``), possibly under a
  ``state_dict`` key and with ``module.`` prefixes.

All of them fine-tune OpenAI's CLIP, whose weights use QuickGELU: load them as ``NAME@openai:FILE``
so that the network is built with the lineage's activation and preprocessing, and, for the image
tower-only formats, the text tower of that tag. Only ``torch.load(weights_only=True)`` and
safetensors are used; a file that needs more is refused.
"""
from __future__ import annotations

import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from .errors import UserError

IMAGE_TOWER_KEY = "vision_encoder_state_dict"  # TeCoA / PMG-AFT / TGA-ZSR checkpoints
OPENAI_JIT_EXTRAS = ("input_resolution", "context_length", "vocab_size")
# numpy scalars (TeCoA's best_acc1) in files written under numpy 1.x and 2.x: plain numbers.
_NUMPY_CORE = getattr(np, "_core", None) or np.core  # renamed in numpy 2
NUMPY_SCALARS = [(_NUMPY_CORE.multiarray.scalar, "numpy.core.multiarray.scalar"), _NUMPY_CORE.multiarray.scalar,
                 np.dtype, *{type(np.dtype(code)) for code in "?bhilqBHILQefdg"}]


@dataclass(frozen=True)
class PublishedWeights:
    """A weight file read into open_clip's key layout.

    ``state``: tensors keyed as open_clip's ``CLIP`` (full model) or its ``visual`` module
    (``image_tower_only``). ``layout``: which format was recognized, for messages and records.
    """
    state: dict[str, torch.Tensor]
    image_tower_only: bool
    layout: str


def read_published_weights(path: str | Path) -> PublishedWeights:
    """Read a weight file in any of the formats above.

    Raises:
        UserError: a missing or unreadable file, a pickle that is not weights-only, or a payload
            with no recognizable state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weight file not found: {path}")
    payload = _load(path)
    if isinstance(payload, dict) and isinstance(payload.get(IMAGE_TOWER_KEY), dict):
        state, layout = payload[IMAGE_TOWER_KEY], "TeCoA/PMG-AFT/TGA-ZSR checkpoint (vision_encoder_state_dict)"
    elif isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict) and payload["state_dict"]:
        state, layout = payload["state_dict"], "training checkpoint (state_dict)"
    else:
        state, layout = payload, "state dict"
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"{path} holds no state dict of tensors (a {type(payload).__name__})")
    state = _strip_prefix(state, "module.")
    state = {k: v for k, v in state.items() if k not in OPENAI_JIT_EXTRAS}
    has_text = any(k == "token_embedding.weight" or k.startswith("text.") for k in state)
    if not has_text and all(k.startswith("visual.") for k in state):
        state = _strip_prefix(state, "visual.")
    image_tower_only = not has_text and not any(k.startswith("visual.") for k in state)
    if image_tower_only and layout == "state dict":
        layout = "image tower state dict (RobustVLM/FARE)"
    return PublishedWeights(state=state, image_tower_only=image_tower_only, layout=layout)


def _load(path: Path):
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except Exception as error:  # safetensors raises several types for truncated/corrupt files
            raise UserError(f"{path}: unreadable safetensors file ({error})") from None
    try:
        # torch warns about old pickle protocols on its way to refusing them: the refusal is the message
        with torch.serialization.safe_globals(NUMPY_SCALARS), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = re.search(r"GLOBAL (\S+)", str(error))
        if unsafe:
            raise UserError(f"{path} is not a weights-only checkpoint (it pickles {unsafe.group(1)}); refusing "
                            f"to unpickle it: re-save its state_dict() with torch.save or safetensors") from None
        raise UserError(f"{path}: unreadable checkpoint (not a torch or safetensors file?)") from None
    except Exception as error:  # a truncated zip archive, an I/O error, ...
        raise UserError(f"{path}: unreadable checkpoint ({type(error).__name__}: "
                        f"{(str(error).splitlines() or [''])[0]})") from None


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if all(k.startswith(prefix) for k in state):
        return {k.removeprefix(prefix): v for k, v in state.items()}
    return state
