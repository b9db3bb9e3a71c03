"""Procedural scenes of the embedded world: one object on a background, with a caption.

A scene is a handful of discrete attributes (shape, colour, size, position, style, background)
plus continuous jitter. Rendering uses signed distance functions with a one-pixel soft edge, so
shapes stay recognisable at 32x32 and images have no aliasing artefacts an attack could exploit.
Everything is drawn from a numpy ``Generator`` that the caller seeds: same seed, same pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import unknown_name

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star", "ring", "moon")
COLOURS = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 235), "yellow": (235, 220, 50),
    "purple": (145, 60, 205), "orange": (245, 140, 30), "cyan": (40, 210, 220), "pink": (245, 125, 190),
}
SIZES = {"small": 0.17, "large": 0.29}  # object radius as a fraction of the image side
POSITIONS = {  # object centre as fractions of the image side (x, y)
    "in the center": (0.5, 0.5), "on the left": (0.23, 0.5), "on the right": (0.77, 0.5),
    "at the top": (0.5, 0.23), "at the bottom": (0.5, 0.77),
}
STYLES = ("filled", "outline")
BACKGROUNDS = ("plain", "striped", "dotted", "checkered", "noisy")


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    size: str
    position: str
    style: str = "filled"
    background: str = "plain"


def _shape_distance(shape: str, x: np.ndarray, y: np.ndarray, radius: float) -> np.ndarray:
    """Signed distance (pixels, negative inside) from each pixel to the shape's boundary."""
    r = radius
    if shape == "circle":
        return np.hypot(x, y) - r
    if shape == "square":
        s = r * 0.85
        return np.maximum(np.abs(x), np.abs(y)) - s
    if shape == "diamond":
        return (np.abs(x) + np.abs(y)) / np.sqrt(2) - r * 0.75
    if shape == "triangle":  # upward equilateral: max of the three edge half-planes
        edges = [(0.0, 1.0), (np.sqrt(3) / 2, -0.5), (-np.sqrt(3) / 2, -0.5)]
        return np.max([nx * x + ny * y for nx, ny in edges], axis=0) - r * 0.55
    if shape == "cross":
        arm, half = r, r * 0.33
        bar_h = np.maximum(np.abs(x) - arm, np.abs(y) - half)
        bar_v = np.maximum(np.abs(x) - half, np.abs(y) - arm)
        return np.minimum(bar_h, bar_v)
    if shape == "star":
        angle = np.arctan2(x, -y)
        outline = r * (0.62 + 0.38 * np.cos(5 * angle))
        return (np.hypot(x, y) - outline) * 0.8
    if shape == "ring":
        return np.abs(np.hypot(x, y) - r * 0.72) - r * 0.28
    if shape == "moon":
        return np.maximum(np.hypot(x, y) - r, r * 0.8 - np.hypot(x - r * 0.55, y + r * 0.15))
    raise unknown_name("shape", shape, SHAPES)


def _background(kind: str, side: int, rng: np.random.Generator) -> np.ndarray:
    """A float [side, side, 3] background in 0..255, dark and desaturated so colours stay nameable."""
    base = rng.uniform(15, 70)
    tint = rng.uniform(-8, 8, size=3)
    canvas = np.full((side, side, 3), base) + tint
    if kind == "plain":
        return canvas
    yy, xx = np.mgrid[0:side, 0:side]
    contrast = rng.uniform(45, 90)
    period = rng.integers(3, 6)
    if kind == "striped":
        direction = rng.integers(0, 3)
        coord = [xx, yy, xx + yy][direction]
        pattern = (coord // period) % 2
    elif kind == "dotted":
        pattern = ((xx % (period + 1) < 1.5) & (yy % (period + 1) < 1.5)).astype(float)
    elif kind == "checkered":
        pattern = ((xx // period + yy // period) % 2).astype(float)
    elif kind == "noisy":
        coarse = rng.uniform(0, 1, size=(side // 4, side // 4))
        pattern = np.kron(coarse, np.ones((4, 4)))[:side, :side]
    else:
        raise unknown_name("background", kind, BACKGROUNDS)
    return canvas + contrast * pattern[..., None]


def render(scene: Scene, rng: np.random.Generator, side: int = 32) -> np.ndarray:
    """Draw ``scene`` as a uint8 [side, side, 3] image; jitter comes from ``rng``."""
    canvas = _background(scene.background, side, rng)
    cx, cy = POSITIONS[scene.position]
    centre = (np.array([cx, cy]) + rng.uniform(-0.05, 0.05, size=2)) * side
    radius = SIZES[scene.size] * side * rng.uniform(0.9, 1.1)
    yy, xx = np.mgrid[0:side, 0:side] + 0.5
    angle = rng.uniform(-0.25, 0.25)  # a small tilt, so no shape is pixel-identical twice
    dx, dy = xx - centre[0], yy - centre[1]
    x = np.cos(angle) * dx + np.sin(angle) * dy
    y = -np.sin(angle) * dx + np.cos(angle) * dy
    distance = _shape_distance(scene.shape, x, y, radius)
    if scene.style == "outline":  # a thin pen stroke (thick strokes read as rings and filled shapes)
        coverage = np.clip(1.4 - np.abs(distance), 0.0, 1.0)
    else:
        coverage = np.clip(0.5 - distance, 0.0, 1.0)
    colour = np.array(COLOURS[scene.colour]) + rng.uniform(-18, 18, size=3)
    image = canvas * (1 - coverage[..., None]) + colour * coverage[..., None]
    image += rng.normal(0, 4, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def caption(scene: Scene, rng: np.random.Generator, mention: dict[str, float]) -> str:
    """A partial description of ``scene``, like web alt-text: each attribute is named with the
    probability ``mention[attribute]`` (attributes absent from ``mention`` are never named).

    Always names at least the shape or the colour, so every caption says something visible.
    """
    said = {k for k, p in mention.items() if rng.random() < p}
    if not said & {"shape", "colour"}:
        said.add("shape" if rng.random() < 0.5 else "colour")
    noun = scene.shape if "shape" in said else "shape"
    words = [w for w, k in ((scene.size, "size"), (scene.colour, "colour")) if k in said] + [noun]
    phrase = " ".join(words)
    if "style" in said and scene.style == "outline":
        kind = "outline" if rng.random() < 0.5 else "drawing"
        phrase = f"{kind} of {_article(phrase)} {phrase}"
    if "position" in said:
        phrase += f" {scene.position}"
    if "background" in said:
        phrase += f" on a {scene.background} background"
    prefix = ("", "a picture of ", "an image of ", "a photo of ")[rng.integers(0, 4)]
    return f"{prefix}{_article(phrase)} {phrase}."


def _article(phrase: str) -> str:
    return "an" if phrase[0] in "aeiou" else "a"
