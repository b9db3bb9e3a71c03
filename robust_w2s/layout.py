"""Where robust-w2s keeps what it builds, and the embedded world's folder layout: the one home of both.

    HOME                      --home, else $RW2S_HOME, else $XDG_CACHE_HOME/robust_w2s (~/.cache/robust_w2s)
    HOME/world/world.json     the world's record (epsilon, alignment task, tasks, class names, ...)
    HOME/world/data/SPLIT/    save_to_disk folders: each task's test split and the alignment splits
    HOME/world/MODEL/         checkpoint folders, one per name in WORLD_MODELS
    HOME/world/runs/MODEL/    the alignment run that trained a world model (weak-robust), resumable
    HOME/cache/text_heads/    zero-shot text heads, keyed by text tower, class names and templates

Model specs ``embedded:MODEL`` and dataset specs ``embedded:SPLIT`` resolve through this module.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import UserError, unknown_name

EMBEDDED = "embedded:"                             # prefix of the world's model and dataset specs
# The world's CLIPs, as folder and spec names: the weak and strong CLIPs, the robust weak teacher,
# and two more weak teachers for multi-teacher methods (one pretrained on outline drawings, one poor).
WORLD_MODELS = ("weak", "weak-robust", "strong", "weak-outline", "weak-poor")
ALIGNMENT_SPLIT = "alignment"                      # the unlabelled alignment split's folder name
SHIFTED_ALIGNMENT_SPLIT = "alignment-shifted"      # the same, mostly outline drawings and textured scenes
RECORD_FILE = "world.json"

Home = str | os.PathLike | None


def resolve_home(home: Home = None) -> Path:
    """``home``, else ``$RW2S_HOME``, else the user's cache folder."""
    if home:
        return Path(home).expanduser()
    if os.environ.get("RW2S_HOME"):
        return Path(os.environ["RW2S_HOME"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "robust_w2s"


def world_dir(home: Home = None) -> Path:
    return resolve_home(home) / "world"


def text_head_cache(home: Home = None) -> Path:
    """Where evaluations cache zero-shot text heads (:func:`robust_w2s.zeroshot.build_text_head`)."""
    return resolve_home(home) / "cache" / "text_heads"


def model_spec(name: str) -> str:
    """The spec of a world model: ``model_spec("strong") == "embedded:strong"``."""
    return f"{EMBEDDED}{name}"


def model_dir(name: str, home: Home = None) -> Path:
    """The checkpoint folder of world model ``name``; an unknown name is an UnknownNameError."""
    if name not in WORLD_MODELS:
        raise unknown_name("embedded model", name, WORLD_MODELS)
    return world_dir(home) / name


def training_dir(name: str, home: Home = None) -> Path:
    """The alignment run folder (checkpoint/, state/, log.jsonl) that trained world model ``name``."""
    return world_dir(home) / "runs" / model_dir(name, home).name


def data_dir(split: str, home: Home = None) -> Path:
    """The save_to_disk folder of a world split: a task's name or an alignment split's."""
    return world_dir(home) / "data" / split


def read_world(home: Home = None, required: bool = True) -> dict | None:
    """The world's record (``world.json``). Not built: a one-line UserError, or None if not ``required``."""
    path = world_dir(home) / RECORD_FILE
    if path.is_file():
        return json.loads(path.read_text())
    if required:
        raise UserError(f"the embedded world is not built under {path.parent}: run `robust-w2s pretrain`")
    return None
