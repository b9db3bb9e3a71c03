"""Model specs -> (model, preprocess, tokenizer): the network the weights were trained with.

A spec is one of (DESIGN.md sections 7 and 8):

    embedded:weak | embedded:weak-robust | embedded:strong   the embedded world's models
    local-dir:PATH or a bare folder path                      a checkpoint folder (ours or open_clip's)
    hf-hub:ORG/NAME                                           an open_clip model on the Hugging Face hub
    NAME                                                      an open_clip architecture, random init
    NAME@TAG                                                  ... with pretrained tag TAG's weights
    NAME@PATH                                                 ... with a weight file, no lineage
    NAME@TAG:PATH                                             ... with a weight file descending from TAG

A pretrained tag fixes more than the weights: OpenAI-lineage weights (``openai``, ``laion400m_*``,
``yfcc15m``, ...) were trained with QuickGELU, and each tag has its own preprocessing (LAION's
ViT-L-14 ``laion2b_s32b_b82k`` normalizes with mean = std = 0.5). open_clip only warns when a tag's
activation differs from the architecture's; here the tag's flags always win. A weight file
fine-tuned from a tag (every published robust CLIP is) names it as ``NAME@TAG:PATH`` and inherits the
tag's activation and preprocessing; a file that holds only the image tower (FARE's) takes its text
tower from the tag's weights. Weight files are read by :mod:`robust_w2s.published`, which knows the
field's checkpoint layouts.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import open_clip
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict
from torch import nn

from .checkpoints import (CONFIG_FILE, WEIGHTS_FILE, check_state_dict, load_weights, read_checkpoint_config,
                          weights_file)
from .errors import UserError, unknown_name
from .layout import EMBEDDED, model_dir
from .published import read_published_weights

LOCAL_DIR = "local-dir:"
HF_HUB = "hf-hub:"


def load_model(spec: str, home: str | os.PathLike | None = None, device: str = "cpu"):
    """Return (model, preprocess, tokenizer) for a model spec, the model in eval mode.

    ``preprocess`` is the weights' own eval transform (PIL -> normalized tensor); use
    ``eval_transform(model, normalize=False)`` for the [0, 1] pixels that attacks need.
    ``model.rw2s_model_cfg`` holds the open_clip config it was built from (QuickGELU included) and
    ``model.rw2s_lineage`` the pretrained tag its weights descend from, if any; both are what
    :func:`robust_w2s.save_checkpoint` records.

    Raises:
        UserError: an unknown architecture or tag, a missing or unreadable weight file, weights that
            do not match the architecture, a hub id that is unknown or not cached while offline.

    Example:
        >>> model, preprocess, tokenizer = load_model("ViT-B-32@openai")
    """
    if not spec.strip():
        raise UserError("empty model spec")
    if spec.startswith(EMBEDDED):
        folder = model_dir(spec.removeprefix(EMBEDDED), home)
        if not (folder / WEIGHTS_FILE).is_file():
            raise UserError(f"{spec} is not built yet under {folder.parent}: run `robust-w2s pretrain`")
        loaded = load_checkpoint(folder)
    elif spec.startswith(LOCAL_DIR) or (Path(spec).expanduser().is_dir() and open_clip.get_model_config(spec) is None):
        loaded = load_checkpoint(Path(spec.removeprefix(LOCAL_DIR)).expanduser())
    elif spec.startswith(HF_HUB):
        loaded = _load_hub(spec)
    elif "/" in spec.partition("@")[0]:  # a path, not an architecture: only a folder can be meant
        raise UserError(f"checkpoint folder not found: {spec}")
    else:
        loaded = _load_open_clip(parse_spec(spec))
    model = loaded[0].to(device).eval()
    return model, loaded[1], loaded[2]


def resolve_device(name: str | None, what: str = "--device") -> torch.device:
    """The torch device named by a ``--device`` or ``train.device`` value (``what`` names it in errors).

    "auto" or None: CUDA if available, else the CPU. Raises UserError for a name torch does not know
    or a CUDA device this machine lacks (torch would fail later, at the first ``.to()``, with a
    traceback). Example: ``resolve_device("cpu") == torch.device("cpu")``.
    """
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"{what}: unknown device {name!r} (auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"{what}: no CUDA device {name!r} on this machine ({torch.cuda.device_count()} visible)")
    return device


def load_checkpoint(path: str | os.PathLike):
    """Load a checkpoint folder (see :mod:`robust_w2s.checkpoints`) as (model, preprocess, tokenizer).

    The folder is the one plain ``open_clip.create_model_and_transforms('local-dir:PATH')`` reads;
    this function adds one-line errors for a missing folder or a mismatched architecture.
    """
    path = Path(path)
    config = read_checkpoint_config(path)
    try:
        with _quiet_open_clip():  # it warns "initialized randomly": the weights are loaded just below
            model = open_clip.create_model(f"{LOCAL_DIR}{path}", load_weights=False)
    except Exception as error:  # open_clip raises TypeError/KeyError/ValueError for a malformed model_cfg
        raise UserError(f"{path / CONFIG_FILE}: open_clip cannot build its model_cfg ({_first_line(error)})") from None
    weights = weights_file(path)
    if weights.name == WEIGHTS_FILE:
        load_weights(model, weights)
    else:  # open_clip's own local-dir layout (a hub release downloaded as files)
        state = read_published_weights(weights).state
        check_state_dict(model, state, source=str(weights))
        with torch.no_grad():
            model.load_state_dict(state)
    model.rw2s_model_cfg = config["model_cfg"]
    model.rw2s_lineage = config.get("robust_w2s", {}).get("lineage")
    return model.eval(), eval_transform(model), open_clip.get_tokenizer(f"{LOCAL_DIR}{path}")


@dataclass(frozen=True)
class OpenClipSpec:
    """A parsed ``NAME[@TAG][:PATH]`` spec: architecture, pretrained tag (lineage), weight file."""
    name: str
    tag: str | None = None
    weights: Path | None = None

    def __str__(self) -> str:
        lineage = f"@{self.tag}" if self.tag else ""
        weights = f"{':' if self.tag else '@'}{self.weights}" if self.weights else ""
        return f"{self.name}{lineage}{weights}"


def parse_spec(spec: str) -> OpenClipSpec:
    """Parse ``NAME``, ``NAME@TAG``, ``NAME@PATH`` or ``NAME@TAG:PATH`` against open_clip's registry.

    After ``@``, a known tag of NAME is a tag (matched as open_clip matches tags: case-insensitive,
    ``-`` as ``_``); ``TAG:PATH`` is a file with its lineage; anything with a ``/`` or a file suffix
    is a file path. Raises UserError (one line) for an unknown architecture, an unknown tag, an
    empty tag or path, or a weight file that does not exist.
    """
    name, at, rest = spec.partition("@")
    if open_clip.get_model_config(name) is None:
        raise unknown_name("open_clip model", name, open_clip.list_models())
    tags = open_clip.list_pretrained_tags_by_model(name)
    if not at:
        return OpenClipSpec(name)
    if not rest:
        raise UserError(f"{spec!r}: nothing after '@' (a pretrained tag, a weight file, or TAG:FILE)")
    if _known_tag(rest, tags):
        return OpenClipSpec(name, tag=_known_tag(rest, tags))
    tag, colon, path = rest.partition(":")
    if colon and "/" not in tag and not Path(rest).expanduser().exists():
        if not _known_tag(tag, tags):
            raise unknown_name(f"pretrained tag (lineage) of {name}", tag, tags)
        tag = _known_tag(tag, tags)
        if not path:
            raise UserError(f"{spec!r}: no weight file after '{tag}:'")
    elif "/" in rest or Path(rest).suffix or Path(rest).expanduser().exists():
        tag, path = None, rest
    else:
        raise unknown_name(f"pretrained tag of {name} (or weight file)", rest, tags)
    file = Path(path).expanduser()
    if file.is_dir():
        raise UserError(f"{file} is a folder, not a weight file (a checkpoint folder is a spec of its own)")
    if not file.is_file():
        raise UserError(f"weight file not found: {file}")
    return OpenClipSpec(name, tag=tag, weights=file)


def _known_tag(tag: str, tags: list[str]) -> str | None:
    """open_clip's own spelling of ``tag`` among ``tags`` (it ignores case and reads - as _)."""
    cleaned = tag.lower().replace("-", "_")
    return next((t for t in tags if t.lower().replace("-", "_") == cleaned), None)


def network_config(spec: OpenClipSpec) -> tuple[dict, dict]:
    """(model_cfg, preprocess_cfg) of the network ``spec``'s weights were trained with.

    The architecture's open_clip config with the lineage tag's QuickGELU flag, and open_clip's
    default preprocessing overlaid with the tag's (mean, std, interpolation, resize mode). Without a
    tag: the architecture as open_clip defines it.
    """
    tag_cfg = open_clip.get_pretrained_cfg(spec.name, spec.tag) if spec.tag else {}
    model_cfg = open_clip.get_model_config(spec.name)
    model_cfg["quick_gelu"] = bool(tag_cfg.get("quick_gelu", model_cfg.get("quick_gelu", False)))
    size = model_cfg["vision_cfg"].get("image_size", 224)
    preprocess_cfg = {**asdict(PreprocessCfg()), "size": tuple(size) if isinstance(size, (list, tuple)) else (size, size)}
    return model_cfg, merge_preprocess_dict(preprocess_cfg, tag_cfg)


def _load_open_clip(spec: OpenClipSpec):
    model_cfg, preprocess = network_config(spec)
    published = read_published_weights(spec.weights) if spec.weights else None
    if published is not None and published.image_tower_only and not spec.tag:
        raise UserError(f"{spec.weights} holds only the image tower ({published.layout}): name the pretrained "
                        f"tag it was fine-tuned from, to take the text tower from, e.g. "
                        f"{spec.name}@openai:{spec.weights}")
    with _quiet_open_clip():  # it warns "initialized randomly": weights are loaded below
        model = open_clip.create_model(spec.name, force_quick_gelu=model_cfg["quick_gelu"])
    open_clip.set_model_preprocess_cfg(model, preprocess)
    target = model.visual if published is not None and published.image_tower_only else model
    if published is not None:  # checked before any download: a wrong architecture fails at once
        check_state_dict(target, published.state, source=str(spec.weights))
    # The tag's own weights: for the tag alone, or for the text tower under an image-tower-only file.
    if spec.tag and (published is None or published.image_tower_only):
        try:
            open_clip.load_checkpoint(model, open_clip.download_pretrained(open_clip.get_pretrained_cfg(
                spec.name, spec.tag)))
        except Exception as error:  # the hub raises several types when offline or unreachable
            raise UserError(f"cannot load the weights of {spec.name}@{spec.tag} (offline, or not downloadable?): "
                            f"{_first_line(error)}") from None
    if published is not None:
        with torch.no_grad():
            target.load_state_dict(published.state)
        model.rw2s_weights = {"file": str(spec.weights.resolve()), "layout": published.layout}
    tags = open_clip.list_pretrained_tags_by_model(spec.name)
    if spec.weights is not None and spec.tag is None and tags:
        logging.getLogger(__name__).warning(
            "%s: no lineage named, so built as open_clip's %s (quick_gelu=%s, its default preprocessing); "
            "if the weights were fine-tuned from a pretrained tag, write %s@TAG:%s (tags: %s)", spec, spec.name,
            model_cfg["quick_gelu"], spec.name, spec.weights, ", ".join(tags))
    model.rw2s_model_cfg = model_cfg
    model.rw2s_lineage = f"{spec.name}@{spec.tag}" if spec.tag else None
    return model.eval(), eval_transform(model), open_clip.get_tokenizer(spec.name)


def _load_hub(spec: str):
    model_id = spec.removeprefix(HF_HUB)
    try:
        # open_clip builds a hub model with random weights, warning only, when the config is cached
        # but the weights are not (an interrupted download, a tokenizer fetched alone): fetch first.
        open_clip.pretrained.download_pretrained_from_hf(model_id)
        with _quiet_open_clip():
            model = open_clip.create_model(spec)
            model_cfg = open_clip.get_model_config(spec)
    except Exception as error:  # unknown id, no network, or HF_HUB_OFFLINE without a cached copy
        raise UserError(f"cannot load {spec} from the Hugging Face hub (offline, or a wrong id?): "
                        f"{_first_line(error)}") from None
    model.rw2s_model_cfg = model_cfg
    model.rw2s_lineage = spec
    return model.eval(), eval_transform(model), open_clip.get_tokenizer(spec)


def _first_line(error: BaseException) -> str:
    """The innermost cause's first line: open_clip wraps the hub's error in two more."""
    while error.__cause__ is not None:
        error = error.__cause__
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


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
