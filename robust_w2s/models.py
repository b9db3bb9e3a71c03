"""Model specs -> (model, preprocess, tokenizer).

A spec is one of (DESIGN.md section 8):
    embedded:weak | embedded:weak-robust | embedded:strong   the embedded world's models
    local-dir:PATH or a bare folder path                      a checkpoint folder
    NAME, NAME@TAG, NAME@/path/weights.safetensors            an open_clip architecture
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import open_clip
from open_clip.transform import PreprocessCfg, image_transform_v2
from torch import nn

from .checkpoints import load_weights, read_checkpoint_config, WEIGHTS_FILE
from .errors import UserError, unknown_name
from .layout import EMBEDDED, model_dir

LOCAL_DIR = "local-dir:"


def load_model(spec: str, home: str | os.PathLike | None = None, device: str = "cpu"):
    """Return (model, preprocess, tokenizer) for a model spec, the model in eval mode.

    ``preprocess`` is open_clip's eval transform (PIL -> normalized tensor); use
    ``eval_transform(model, normalize=False)`` for the [0, 1] pixels that attacks need.

    Example:
        >>> model, preprocess, tokenizer = load_model("embedded:strong")
    """
    if spec.startswith(EMBEDDED):
        folder = model_dir(spec.removeprefix(EMBEDDED), home)
        if not (folder / WEIGHTS_FILE).is_file():
            raise UserError(f"{spec} is not built yet under {folder.parent}: run `robust-w2s pretrain`")
        loaded = load_checkpoint(folder)
    elif spec.startswith(LOCAL_DIR) or Path(spec).is_dir():
        loaded = load_checkpoint(spec.removeprefix(LOCAL_DIR))
    else:
        loaded = _load_open_clip(spec)
    model = loaded[0].to(device).eval()
    return model, loaded[1], loaded[2]


def load_checkpoint(path: str | os.PathLike):
    """Load a checkpoint folder (see :mod:`robust_w2s.checkpoints`) as (model, preprocess, tokenizer).

    The folder is the one plain ``open_clip.create_model_and_transforms('local-dir:PATH')`` reads;
    this function adds one-line errors for a missing folder or a mismatched architecture.
    """
    path = Path(path)
    config = read_checkpoint_config(path)
    with _quiet_open_clip():  # it warns "initialized randomly": the weights are loaded just below
        model = open_clip.create_model(f"{LOCAL_DIR}{path}", load_weights=False)
    load_weights(model, path / WEIGHTS_FILE)
    model.rw2s_model_cfg = config["model_cfg"]
    return model.eval(), eval_transform(model), open_clip.get_tokenizer(f"{LOCAL_DIR}{path}")


@contextlib.contextmanager
def _quiet_open_clip():
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def eval_transform(model: nn.Module, normalize: bool = True):
    """open_clip's evaluation transform for ``model``; without normalization it yields [0, 1]
    pixels, the input of :class:`robust_w2s.ZeroShotClassifier` and of every attack."""
    cfg = dict(open_clip.get_model_preprocess_cfg(model))
    if not normalize:
        cfg.update(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    known = PreprocessCfg.__dataclass_fields__
    return image_transform_v2(PreprocessCfg(**{k: v for k, v in cfg.items() if k in known}), is_train=False)


def _load_open_clip(spec: str):
    name, _, pretrained = spec.partition("@")
    if open_clip.get_model_config(name) is None:  # not embedded:NAME, a checkpoint folder or open_clip's
        raise unknown_name("open_clip model", name, open_clip.list_models())
    try:
        model = open_clip.create_model(name, pretrained=pretrained or None)
    except Exception as error:  # open_clip raises RuntimeError/OSError for a bad tag or an offline hub
        raise UserError(f"cannot load {spec!r}: {str(error).splitlines()[0]}") from None
    model.rw2s_model_cfg = open_clip.get_model_config(name)
    return model, eval_transform(model), open_clip.get_tokenizer(name)
