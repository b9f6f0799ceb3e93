"""A small ImageNet-shaped ImageFolder made from scratch, deterministic from a seed.

Every class is a visual concept (a shape drawn in a colour family over a textured
background) varied in position, scale, rotation, lighting and background, so a
ResNet can learn it in a few CPU minutes but cannot solve it from one pixel.
Images are JPEGs of ImageNet-like size and aspect, in ImageNet's folder layout
(``train/<wnid>/<name>.JPEG``, ``val/<wnid>/<name>.JPEG``).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("disc", "square", "triangle", "stripes", "ring", "cross", "checker", "star")
JPEG_QUALITY = 90
# ImageNet's typical stored sizes: shorter side 300-500 px, aspect 3:4 to 4:3.
SHORT_SIDE_RANGE = (160, 360)
ASPECTS = (1.0, 4 / 3, 3 / 4, 3 / 2)


def class_name(index: int) -> str:
    """A WordNet-id-looking folder name, so demo paths read like ImageNet's."""
    return f"n{index + 1:08d}"


def _background(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    """Smooth random colour field plus grain: no class information in it."""
    coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    field = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    grain = rng.normal(0, 12, size=(height, width, 3))
    return Image.fromarray(np.clip(np.asarray(field) + grain, 0, 255).astype(np.uint8))


def _class_colour(index: int, rng: np.random.Generator) -> tuple[int, int, int]:
    # Classes that share a shape (index and index + len(SHAPES)) get opposite hues.
    hue = ((index % len(SHAPES)) * 0.61803 + (index // len(SHAPES)) * 0.5) % 1.0 + rng.normal(0, 0.02)
    rgb = [0.5 + 0.5 * math.cos(2 * math.pi * (hue + k / 3)) for k in range(3)]
    light = rng.uniform(0.7, 1.0)
    return tuple(int(255 * c * light) for c in rgb)  # type: ignore[return-value]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float],
                colour: tuple[int, int, int], angle: float) -> None:
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2

    def polygon(n: int, radius_of: callable) -> list[tuple[float, float]]:  # type: ignore[valid-type]
        return [(cx + radius_of(k) * math.cos(angle + 2 * math.pi * k / n),
                 cy + radius_of(k) * math.sin(angle + 2 * math.pi * k / n)) for k in range(n)]

    if shape == "disc":
        draw.ellipse(box, fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(2, int(r / 3)))
    elif shape == "square":
        draw.polygon(polygon(4, lambda k: r), fill=colour)
    elif shape == "triangle":
        draw.polygon(polygon(3, lambda k: r), fill=colour)
    elif shape == "star":
        draw.polygon(polygon(10, lambda k: r if k % 2 == 0 else r / 2.5), fill=colour)
    elif shape == "cross":
        w = r / 3
        draw.rectangle((cx - w, y0, cx + w, y1), fill=colour)
        draw.rectangle((x0, cy - w, x1, cy + w), fill=colour)
    elif shape == "stripes":
        step = max(4, int(r / 3))
        for offset in range(int(x0), int(x1), 2 * step):
            draw.rectangle((offset, y0, offset + step, y1), fill=colour)
    elif shape == "checker":
        step = max(4, int(r / 2))
        for i, xs in enumerate(range(int(x0), int(x1), step)):
            for j, ys in enumerate(range(int(y0), int(y1), step)):
                if (i + j) % 2 == 0:
                    draw.rectangle((xs, ys, xs + step, ys + step), fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def make_image(class_index: int, rng: np.random.Generator) -> Image.Image:
    """One RGB photo-sized image of class ``class_index``."""
    short = int(rng.integers(*SHORT_SIDE_RANGE))
    aspect = ASPECTS[int(rng.integers(len(ASPECTS)))]
    height, width = (short, int(short * aspect)) if rng.random() < 0.5 else (int(short * aspect), short)
    image = _background(rng, height, width)
    draw = ImageDraw.Draw(image)
    side = min(height, width) * rng.uniform(0.35, 0.7)
    x0 = rng.uniform(0, width - side)
    y0 = rng.uniform(0, height - side)
    shape = SHAPES[class_index % len(SHAPES)]
    _draw_shape(draw, shape, (x0, y0, x0 + side, y0 + side), _class_colour(class_index, rng),
                angle=rng.uniform(0, 2 * math.pi))
    return image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0, 1.2))))


def make_demo_imagefolder(root: str | Path, num_classes: int = 10, train_per_class: int = 80,
                          val_per_class: int = 20, seed: int = 0) -> Path:
    """Write ``root/train`` and ``root/val``; returns ``root``. Same seed, same bytes."""
    if num_classes > 2 * len(SHAPES):
        raise ValueError(f"num_classes must be at most {2 * len(SHAPES)}: {num_classes}")
    root = Path(root)
    for split, per_class, split_seed in (("train", train_per_class, 0), ("val", val_per_class, 1)):
        for index in range(num_classes):
            folder = root / split / class_name(index)
            folder.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng([seed, split_seed, index])
            for k in range(per_class):
                image = make_image(index, rng)
                image.save(folder / f"{split}_{index:03d}_{k:05d}.JPEG", quality=JPEG_QUALITY)
    return root
