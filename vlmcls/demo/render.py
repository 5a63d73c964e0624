"""Procedural images of the demo world: one shape with a colour, surface pattern and size on a noisy background.

Deterministic by seed: the same (attributes, seed) always gives the same pixels, so held-out sets are simply
seeds the training script never uses.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vlmcls.demo.world import ATTRIBUTES, class_attributes

__all__ = ["IMAGE_SIZE", "render_image", "render_two_objects", "render_dataset", "render_open_world", "image_rng"]

IMAGE_SIZE = 64  # pixels per side; small enough for a CPU-trained ViT, large enough for stripes on small shapes
_SUPERSAMPLE = 4  # shapes are drawn 4x larger then reduced, which anti-aliases their edges

# Base RGB per colour; each image jitters it so the model learns a colour name, not one exact pixel value.
_BASE_RGB: dict[str, tuple[int, int, int]] = {
    "red": (210, 40, 40),
    "green": (40, 165, 60),
    "blue": (45, 85, 225),
    "yellow": (235, 210, 40),
    "purple": (150, 55, 195),
}

# Radius range (pixels, centre to outermost point) per size; far apart so "small" and "large" never overlap.
_RADIUS_RANGE: dict[str, tuple[float, float]] = {"small": (9.0, 12.0), "large": (19.0, 25.0)}
_MAX_TILT_DEGREES = 25.0  # rotation away from upright
_MAX_OFFSET = 12.0  # pixels the object centre may wander from the image centre (less for large objects)


def image_rng(seed: int, class_key: str, index: int) -> np.random.Generator:
    """The random generator for one image: independent of class order, so subsets render identically."""
    return np.random.default_rng([seed, zlib.crc32(class_key.encode("utf-8")), index])


def _check_attributes(attrs: Mapping[str, str]) -> None:
    for attr_type, values in ATTRIBUTES.items():
        if attrs.get(attr_type) not in values:
            raise KeyError(
                f"attribute '{attr_type}' has value '{attrs.get(attr_type)}'; valid values: {', '.join(values)}"
            )


def _background(rng: np.random.Generator) -> np.ndarray:
    """A muted, blotchy, noisy background [H, W, 3] float in 0..255 that no object colour can be mistaken for."""
    size = IMAGE_SIZE
    grey = rng.uniform(80, 180)
    tint = rng.normal(0, 12, size=3)  # a faint cast so backgrounds are not all neutral grey
    coarse = rng.normal(0, 18, size=(6, 6, 1))  # low-frequency blotches, upsampled smoothly below
    blotches = np.asarray(
        Image.fromarray(coarse[..., 0].astype(np.float32), mode="F").resize((size, size), Image.BICUBIC)
    )[..., None]
    grain = rng.normal(0, rng.uniform(5, 14), size=(size, size, 3))
    return grey + tint + blotches + grain


def _outline(shape: str, centre: tuple[float, float], radius: float, angle: float) -> list[tuple[float, float]]:
    """Polygon vertices of a shape (a circle is a 48-gon), in supersampled pixel coordinates."""
    if shape == "circle":
        corners, radii = 48, [radius]
    elif shape == "square":
        corners, radii = 4, [radius]
    elif shape == "triangle":
        corners, radii = 3, [radius]
    else:  # star: five points alternating with an inner radius
        corners, radii = 10, [radius, radius * 0.45]
    cx, cy = centre
    points = []
    for k in range(corners):
        theta = angle + 2 * math.pi * k / corners
        r = radii[k % len(radii)]
        points.append((cx + r * math.cos(theta), cy + r * math.sin(theta)))
    return points


def _object_mask(shape: str, size: str, rng: np.random.Generator, centre_x: float | None = None) -> np.ndarray:
    """Coverage [H, W] in 0..1 of one randomly placed and rotated shape (``centre_x``: across at about this x)."""
    radius = rng.uniform(*_RADIUS_RANGE[size])
    # Squares and triangles look smaller than a circle of the same radius; scale up so sizes read alike.
    radius *= {"circle": 0.9, "square": 1.0, "triangle": 1.1, "star": 1.1}[shape]
    # near the middle, as in most photos: a tiny ViT learns shapes far faster when they do not roam the frame
    slack = max(0.0, min(_MAX_OFFSET, IMAGE_SIZE / 2 - radius - 1))
    centre = tuple(IMAGE_SIZE / 2 + rng.uniform(-slack, slack, size=2))
    if centre_x is not None:
        centre = (centre_x + rng.uniform(-2, 2), centre[1])
    # mostly upright (a point up, a side down), tilted a little: objects as people usually photograph them
    angle = -math.pi / 2 + math.radians(rng.uniform(-_MAX_TILT_DEGREES, _MAX_TILT_DEGREES))
    if shape == "square":
        angle += math.pi / 4  # corners at the diagonals, so the sides are level
    big = IMAGE_SIZE * _SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    scaled = [(x * _SUPERSAMPLE, y * _SUPERSAMPLE) for x, y in _outline(shape, centre, radius, angle)]
    ImageDraw.Draw(canvas).polygon(scaled, fill=255)
    return np.asarray(canvas.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX), dtype=np.float32) / 255.0


def _pattern_mask(pattern: str, rng: np.random.Generator) -> np.ndarray:
    """Where [H, W] in 0..1 the surface shows its darker pattern colour: stripes, dots, or nowhere."""
    ys, xs = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)
    if pattern == "plain":
        return np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    if pattern == "striped":
        period = rng.uniform(4.5, 6.5)
        angle = rng.uniform(0, math.pi)
        phase = rng.uniform(0, 2 * math.pi)
        wave = np.sin((xs * math.cos(angle) + ys * math.sin(angle)) * 2 * math.pi / period + phase)
        return np.clip(wave * 2.0 + 0.3, 0.0, 1.0)  # soft-edged stripes a bit under half the period wide
    spacing = rng.uniform(4.5, 6.0)
    dot_radius = rng.uniform(1.2, 1.7)
    offset_x, offset_y = rng.uniform(0, spacing, size=2)
    dx = (xs - offset_x + spacing / 2) % spacing - spacing / 2
    dy = (ys - offset_y + spacing / 2) % spacing - spacing / 2
    return np.clip(dot_radius + 0.5 - np.sqrt(dx * dx + dy * dy), 0.0, 1.0)


def render_image(attrs: Mapping[str, str], rng: np.random.Generator) -> Image.Image:
    """One RGB image of an object with the given shape, colour, pattern and size on a noisy background."""
    _check_attributes(attrs)
    background = _background(rng)  # [H, W, 3]
    base = np.asarray(_BASE_RGB[attrs["colour"]], dtype=np.float32)
    body_rgb = np.clip(base * rng.uniform(0.8, 1.1) + rng.normal(0, 12, size=3), 0, 255)  # [3]
    pattern_rgb = body_rgb * rng.uniform(0.25, 0.45)  # a darker shade keeps the hue readable under the pattern
    coverage = _object_mask(attrs["shape"], attrs["size"], rng)[..., None]  # [H, W, 1]
    pattern = _pattern_mask(attrs["pattern"], rng)[..., None]  # [H, W, 1]
    surface = body_rgb * (1 - pattern) + pattern_rgb * pattern  # [H, W, 3]
    surface = surface + rng.normal(0, 6, size=surface.shape)  # lighting grain on the object too
    pixels = background * (1 - coverage) + surface * coverage
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8), mode="RGB")


def _paint(pixels: np.ndarray, attrs: Mapping[str, str], rng: np.random.Generator,
           centre_x: float | None = None) -> np.ndarray:
    """One object drawn over ``pixels`` [H, W, 3]."""
    _check_attributes(attrs)
    base = np.asarray(_BASE_RGB[attrs["colour"]], dtype=np.float32)
    body_rgb = np.clip(base * rng.uniform(0.8, 1.1) + rng.normal(0, 12, size=3), 0, 255)  # [3]
    pattern_rgb = body_rgb * rng.uniform(0.25, 0.45)
    coverage = _object_mask(attrs["shape"], attrs["size"], rng, centre_x)[..., None]  # [H, W, 1]
    pattern = _pattern_mask(attrs["pattern"], rng)[..., None]  # [H, W, 1]
    surface = body_rgb * (1 - pattern) + pattern_rgb * pattern + rng.normal(0, 6, size=pixels.shape)
    return pixels * (1 - coverage) + surface * coverage


def render_two_objects(first: Mapping[str, str], second: Mapping[str, str], rng: np.random.Generator) -> Image.Image:
    """Two small objects side by side (left and right half) on one background: a multi-label picture."""
    pixels = _background(rng)
    pixels = _paint(pixels, first, rng, IMAGE_SIZE * 0.27)
    pixels = _paint(pixels, second, rng, IMAGE_SIZE * 0.73)
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8), mode="RGB")


def render_dataset(
    out_dir: str | Path,
    classes: Iterable[str] | Mapping[str, Mapping[str, str]],
    n_per_class: int,
    seed: int,
) -> list[Path]:
    """Write `out_dir/<class>/<i>.png` for every class; names alone are looked up among the demo classes."""
    if isinstance(classes, Mapping):
        class_attrs = dict(classes)
    else:
        class_attrs = {name: class_attributes(name) for name in classes}
    out_dir = Path(out_dir)
    written = []
    for class_name, attrs in class_attrs.items():
        class_dir = out_dir / class_name
        class_dir.mkdir(parents=True, exist_ok=True)
        for index in range(n_per_class):
            path = class_dir / f"{index}.png"
            render_image(attrs, image_rng(seed, class_name, index)).save(path)
            written.append(path)
    return written


def render_open_world(out_dir: str | Path, per_kind: int = 4, seed: int = 2025) -> dict[str, list[Path]]:
    """The open-world demo sets: ``none_of_these/`` (attribute combinations no demo class has, ``per_kind`` each) and
    ``two_objects/`` (two demo objects per picture) with ``two_objects.jsonl`` (path → both labels)."""
    import json

    from vlmcls.demo.world import TWO_OBJECT_PAIRS, UNKNOWN_COMBINATIONS

    out_dir = Path(out_dir)
    written: dict[str, list[Path]] = {"none_of_these": [], "two_objects": []}
    (out_dir / "none_of_these").mkdir(parents=True, exist_ok=True)
    for attrs in UNKNOWN_COMBINATIONS:
        key = "-".join(attrs[t] for t in ("size", "colour", "pattern", "shape"))
        for index in range(per_kind):
            path = out_dir / "none_of_these" / f"{key}-{index}.png"
            render_image(attrs, image_rng(seed, key, index)).save(path)
            written["none_of_these"].append(path)
    (out_dir / "two_objects").mkdir(parents=True, exist_ok=True)
    truth = []
    for a, b in TWO_OBJECT_PAIRS:
        for index in range(per_kind):
            path = out_dir / "two_objects" / f"{a}+{b}-{index}.png"
            render_two_objects(class_attributes(a), class_attributes(b), image_rng(seed, f"{a}+{b}", index)).save(path)
            written["two_objects"].append(path)
            truth.append({"path": f"two_objects/{path.name}", "labels": [a, b]})
    (out_dir / "two_objects.jsonl").write_text("".join(json.dumps(t) + "\n" for t in truth), encoding="utf-8")
    return written
