"""The embedded world's data: pretraining corpora, zero-shot tasks and the alignment splits.

Every split is a ``datasets.Dataset`` (columns ``image`` and ``label`` with ``ClassLabel`` names,
or ``image`` and ``caption`` for corpora), drawn deterministically from (world seed, split name).

Why the strong model knows more than the weak one (as with real CLIPs): its corpus shows every
drawing style and background and its captions name every attribute, while the weak corpus is
mostly plain filled shapes described by shape and colour, with size, position, outlines and
textures rare. The alignment task (shape, plain filled scenes) is one both know well; the
strong model's headroom lies in the other tasks.

Two more weak teachers give a multi-teacher method something to weigh: one pretrained on a corpus of
mostly outline drawings (competent on ``outline-shape``, where the others are not) and a clearly poor
one (briefly trained on the weak corpus). The shifted alignment split is mostly outlines and
textured backgrounds, as RAVEN's alignment data is shifted from its teachers' strengths.
"""
from __future__ import annotations

import itertools
import zlib
from dataclasses import dataclass, field
from typing import Callable

import datasets
import numpy as np
from PIL import Image

from ..layout import ALIGNMENT_SPLIT, SHIFTED_ALIGNMENT_SPLIT
from .scenes import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, Scene, caption, render

SHAPE_TEMPLATES = ("a {}.", "a picture of a {}.", "an image of a {}.", "a photo of a {}.")
COLOUR_TEMPLATES = ("a {} shape.", "a picture of a {} shape.", "an image of a {} shape.")
TEXTURED = tuple(b for b in BACKGROUNDS if b != "plain")


@dataclass(frozen=True)
class Corpus:
    """Which scenes a pretraining corpus shows and how often its captions name each attribute."""
    mention: dict[str, float]          # attribute -> probability a caption names it
    outline_rate: float                # fraction of scenes drawn as outlines
    textured_rate: float               # fraction of scenes on a textured background


_WEAK_MENTION = {"shape": 0.9, "colour": 0.8, "size": 0.1, "position": 0.3, "style": 0.5}
CORPORA = {
    "weak": Corpus(_WEAK_MENTION, outline_rate=0.15, textured_rate=0.1),
    # The weak corpus's captions over mostly outline drawings (a sketch collection).
    "outline": Corpus(_WEAK_MENTION, outline_rate=0.8, textured_rate=0.1),
    "strong": Corpus({"shape": 0.85, "colour": 0.7, "size": 0.8, "position": 0.6, "style": 0.9,
                      "background": 0.5}, outline_rate=0.35, textured_rate=0.5),
}


@dataclass(frozen=True)
class Task:
    """A zero-shot classification task: class names, prompt templates and a scene sampler."""
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    sample: Callable[[np.random.Generator], tuple[Scene, int]] = field(repr=False)


def _random_scene(rng: np.random.Generator, style: str = "filled", background: str = "plain") -> Scene:
    return Scene(shape=SHAPES[rng.integers(len(SHAPES))], colour=list(COLOURS)[rng.integers(len(COLOURS))],
                 size=list(SIZES)[rng.integers(len(SIZES))], position=list(POSITIONS)[rng.integers(len(POSITIONS))],
                 style=style, background=background)


def _labelled_by(attribute: Callable[[Scene], str], classes: tuple[str, ...], **scene_kwargs):
    def sample(rng: np.random.Generator) -> tuple[Scene, int]:
        kwargs = {k: v(rng) if callable(v) else v for k, v in scene_kwargs.items()}
        scene = _random_scene(rng, **kwargs)
        return scene, classes.index(attribute(scene))
    return sample


_COLOUR_SHAPES = tuple(f"{c} {s}" for c, s in itertools.product(COLOURS, SHAPES))
_SIZE_SHAPES = tuple(f"{z} {s}" for z, s in itertools.product(SIZES, SHAPES))
TASKS = {
    "shape": Task(SHAPES, SHAPE_TEMPLATES, _labelled_by(lambda s: s.shape, SHAPES)),
    "colour": Task(tuple(COLOURS), COLOUR_TEMPLATES, _labelled_by(lambda s: s.colour, tuple(COLOURS))),
    # Position is deliberately not a task: like real CLIPs, these models do not learn spatial
    # words from contrastive captions (both stayed at chance on a 5-way position task).
    "size-shape": Task(_SIZE_SHAPES, SHAPE_TEMPLATES, _labelled_by(lambda s: f"{s.size} {s.shape}", _SIZE_SHAPES)),
    "colour-shape": Task(_COLOUR_SHAPES, SHAPE_TEMPLATES,
                         _labelled_by(lambda s: f"{s.colour} {s.shape}", _COLOUR_SHAPES)),
    # Distribution-shifted variants of the shape task (analogues of ImageNet-Sketch / -R): same
    # classes and prompts, images unlike the alignment data.
    "outline-shape": Task(SHAPES, SHAPE_TEMPLATES, _labelled_by(lambda s: s.shape, SHAPES, style="outline")),
    "textured-shape": Task(SHAPES, SHAPE_TEMPLATES, _labelled_by(
        lambda s: s.shape, SHAPES, background=lambda rng: TEXTURED[rng.integers(len(TEXTURED))])),
}
ALIGNMENT_TASK = "shape"


def _styled_scene(rng: np.random.Generator, outline_rate: float, textured_rate: float) -> Scene:
    """A random scene drawn as an outline with probability ``outline_rate`` and, independently, on a
    textured background with probability ``textured_rate``."""
    style = "outline" if rng.random() < outline_rate else "filled"
    background = TEXTURED[rng.integers(len(TEXTURED))] if rng.random() < textured_rate else "plain"
    return _random_scene(rng, style=style, background=background)


def _alignment_sampler(outline_rate: float, textured_rate: float):
    def sample(rng: np.random.Generator) -> tuple[Scene, int]:
        scene = _styled_scene(rng, outline_rate, textured_rate)
        return scene, SHAPES.index(scene.shape)
    return sample


# The alignment splits: unlabelled images of the alignment task's classes, classified with its class
# names and prompts (their shape labels are read only by methods defined with labels).
_ALIGNED = TASKS[ALIGNMENT_TASK]
ALIGNMENT_SPLITS = {
    # Like the shape task's images, with some outline drawings and textured backgrounds mixed in, as
    # a web-scale training set mixes styles (ImageNet holds drawings too).
    ALIGNMENT_SPLIT: Task(_ALIGNED.classnames, _ALIGNED.templates,
                          _alignment_sampler(outline_rate=0.15, textured_rate=0.15)),
    # Under distribution shift: mostly outline drawings and textured backgrounds (a quarter of its
    # scenes are plain filled ones), where the weak teachers differ most.
    SHIFTED_ALIGNMENT_SPLIT: Task(_ALIGNED.classnames, _ALIGNED.templates,
                                  _alignment_sampler(outline_rate=0.6, textured_rate=0.4)),
}
GENERATOR_VERSION = 2  # bump when rendering, captions or samplers change: cached worlds are rebuilt


def split_rng(seed: int, split: str) -> np.random.Generator:
    """The generator of one split: independent of every other split and of the call order."""
    return np.random.default_rng([seed, zlib.crc32(split.encode())])


def _image_feature_rows(images: list[np.ndarray]) -> list[Image.Image]:
    return [Image.fromarray(image) for image in images]


def task_dataset(task: str, n: int, seed: int, *, split: str = "test", image_size: int = 32) -> datasets.Dataset:
    """``n`` labelled scenes of ``task`` (columns ``image``, ``label``), a task's name or an
    alignment split's (a key of ``ALIGNMENT_SPLITS``)."""
    spec = ALIGNMENT_SPLITS[task] if task in ALIGNMENT_SPLITS else TASKS[task]
    rng = split_rng(seed, f"{task}/{split}")
    scenes, labels = zip(*(spec.sample(rng) for _ in range(n)))
    images = [render(scene, rng, image_size) for scene in scenes]
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=list(spec.classnames))})
    return datasets.Dataset.from_dict({"image": _image_feature_rows(images), "label": list(labels)},
                                      features=features)


def corpus_arrays(corpus: str, n: int, seed: int, image_size: int = 32) -> tuple[np.ndarray, list[str]]:
    """``n`` captioned scenes of a pretraining corpus as (uint8 [n, H, W, 3], captions)."""
    spec = CORPORA[corpus]
    rng = split_rng(seed, f"corpus/{corpus}")
    images, captions = [], []
    for _ in range(n):
        scene = _styled_scene(rng, spec.outline_rate, spec.textured_rate)
        images.append(render(scene, rng, image_size))
        captions.append(caption(scene, rng, spec.mention))
    return np.stack(images), captions


def corpus_dataset(corpus: str, n: int, seed: int, image_size: int = 32) -> datasets.Dataset:
    """A pretraining corpus as a ``datasets.Dataset`` (columns ``image``, ``caption``)."""
    images, captions = corpus_arrays(corpus, n, seed, image_size)
    return datasets.Dataset.from_dict({"image": _image_feature_rows(list(images)), "caption": captions},
                                      features=datasets.Features({"image": datasets.Image(),
                                                                  "caption": datasets.Value("string")}))
