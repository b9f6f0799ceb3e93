"""Source JPEGs that look like ImageNet's originals to a decoder: the benchmarks' default data.

What decides decode and conversion cost is matched to a public sample of 1,000 ImageNet validation
images (../shared/PERF-NOTES.md): chroma sampling (76% 4:4:4, 20% 4:2:0, 1% 4:2:2, 2.3% greyscale;
none progressive), quality as libjpeg scales its tables (median 96, 10th percentile 80, 69% at 95 or
above), size (long side 87% at or under 500 px, 10% 501-800, 2-3% larger; mostly 500 x 375 / 333),
and photo texture: a scene (the demo's shapes) under a 1/f "natural image" noise field whose
strength varies across the picture (smooth sky beside foliage), plus patches of fine oriented
stripes near the pixel pitch (fabric, fur, text): the detail that resizing can alias and that
makes entropy decoding cost what it does (about 0.6 bytes per pixel at quality 96).

    make_real_like_folder(root, images, seed) -> SourceStats (the mix actually drawn)
    make_sources(kind, root, images): what the benchmarks' --sources real-like|synthetic makes
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ffcv_imagenet.convert.demo_data import make_image

CLASSES = 10
# chroma sampling: (share, PIL subsampling code or "L" for greyscale)
CHROMA = {"4:4:4": (0.767, 0), "4:2:0": (0.20, 2), "4:2:2": (0.01, 1), "greyscale": (0.023, "L")}
# quality: 69% at 95 or above (median 96), 21% at 81-94, 10% at 60-80 (10th percentile 80)
HIGH_QUALITIES = {95: 0.15, 96: 0.30, 97: 0.10, 98: 0.08, 100: 0.06}
MIDDLE_QUALITIES, MIDDLE_SHARE = (81, 95), 0.21
LOW_QUALITIES = (60, 81)
# long side: share, range; 500 itself (Flickr's "medium" size) is the commonest of all
SIZES = {"500": (0.55, (500, 501)), "300-499": (0.32, (300, 500)), "501-800": (0.10, (501, 801)),
         "801-2000": (0.03, (801, 2001))}
ASPECTS = (0.75, 0.667, 0.75, 0.6, 1.0)  # short / long side: 4:3 most often, then 3:2
LANDSCAPE_SHARE = 0.7
NOISE_EXPONENT = 1.0  # amplitude ~ 1 / frequency^exponent: natural images' spectrum
NOISE_STRENGTH = (3.0, 14.0)  # standard deviation of the noise field, smooth to busy regions
CHROMA_NOISE = 0.25  # colour noise relative to the luminance noise
STRIPE_PATCHES = (2, 8)  # patches of fine oriented stripes per image
STRIPE_PERIOD = (2.1, 4.5)  # pixels per cycle: near the pixel pitch
STRIPE_AMPLITUDE = (15.0, 50.0)
DISTINCT_SCENES = 40


@dataclass
class SourceStats:
    """The mix make_real_like_folder drew: counts per chroma sampling and the files' sizes."""

    chroma: dict[str, int] = field(default_factory=dict)
    qualities: list[int] = field(default_factory=list)
    long_sides: list[int] = field(default_factory=list)
    bytes: int = 0
    pixels: int = 0

    def __str__(self) -> str:
        count = len(self.qualities)
        qualities, long_sides = np.array(self.qualities), np.array(self.long_sides)
        chroma = ", ".join(f"{name} {n / count:.0%}" for name, n in self.chroma.items())
        return (f"{count} real-like JPEGs: {chroma}; quality median {np.median(qualities):.0f}, 10th percentile "
                f"{np.percentile(qualities, 10):.0f}, {np.mean(qualities >= 95):.0%} at 95+; long side <= 500: "
                f"{np.mean(long_sides <= 500):.0%}, 501-800: {np.mean((long_sides > 500) & (long_sides <= 800)):.0%}, "
                f"larger: {np.mean(long_sides > 800):.0%}; {self.bytes / count / 1024:.0f} KiB mean, "
                f"{self.bytes / self.pixels:.2f} bytes/pixel")


def draw_quality(rng: np.random.Generator) -> int:
    share = rng.random()
    high_total = sum(HIGH_QUALITIES.values())
    if share < high_total:
        return int(rng.choice(list(HIGH_QUALITIES), p=np.array(list(HIGH_QUALITIES.values())) / high_total))
    if share < high_total + MIDDLE_SHARE:
        return int(rng.integers(*MIDDLE_QUALITIES))
    return int(rng.integers(*LOW_QUALITIES))


def draw_chroma(rng: np.random.Generator) -> str:
    names = list(CHROMA)
    shares = np.array([share for share, _ in CHROMA.values()])
    return names[int(rng.choice(len(names), p=shares / shares.sum()))]


def draw_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height)."""
    shares = np.array([share for share, _ in SIZES.values()])
    _, (low, high) = list(SIZES.values())[int(rng.choice(len(SIZES), p=shares / shares.sum()))]
    long_side = int(rng.integers(low, high))
    short_side = max(1, int(round(long_side * float(rng.choice(ASPECTS)))))
    return (long_side, short_side) if rng.random() < LANDSCAPE_SHARE else (short_side, long_side)


def natural_noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Zero-mean, unit-deviation noise with a 1/f amplitude spectrum (height x width)."""
    fy, fx = np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None, :]
    radius = np.hypot(fy, fx)
    radius[0, 0] = 1.0
    spectrum = (rng.normal(size=radius.shape) + 1j * rng.normal(size=radius.shape)) / radius ** NOISE_EXPONENT
    spectrum[0, 0] = 0
    noise = np.fft.irfft2(spectrum, s=(height, width))
    return (noise / noise.std()).astype(np.float32)


def stripes(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A few soft-edged patches of fine oriented stripes (height x width, zero where none)."""
    out = np.zeros((height, width), dtype=np.float32)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    for _ in range(int(rng.integers(*STRIPE_PATCHES))):
        angle, period = rng.uniform(0, np.pi), rng.uniform(*STRIPE_PERIOD)
        centre_y, centre_x = rng.uniform(0, height), rng.uniform(0, width)
        radius = rng.uniform(0.1, 0.3) * min(height, width)
        mask = np.exp(-(((rows - centre_y) ** 2 + (cols - centre_x) ** 2) / (2 * radius ** 2)))
        phase = 2 * np.pi * (np.cos(angle) * cols + np.sin(angle) * rows) / period
        out += rng.uniform(*STRIPE_AMPLITUDE) * mask * np.sin(phase)
    return out


def real_like_pixels(scene: Image.Image, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    base = np.asarray(scene.resize((width, height), Image.BICUBIC), dtype=np.float32)
    # where the picture is busy: a smooth field between the two noise strengths
    busy = np.asarray(Image.fromarray(rng.random((4, 4)).astype(np.float32), mode="F").resize(
        (width, height), Image.BICUBIC), dtype=np.float32).clip(0, 1)
    strength = NOISE_STRENGTH[0] + (NOISE_STRENGTH[1] - NOISE_STRENGTH[0]) * busy
    luma = natural_noise(rng, height, width) * strength + stripes(rng, height, width)
    colour = np.stack([natural_noise(rng, height, width) for _ in range(3)], axis=-1) * (CHROMA_NOISE * strength)[..., None]
    return np.clip(base + luma[..., None] + colour, 0, 255).astype(np.uint8)


def save_jpeg(pixels: np.ndarray, path: Path, chroma: str, quality: int) -> None:
    _, code = CHROMA[chroma]
    image = Image.fromarray(pixels)
    if code == "L":
        image.convert("L").save(path, quality=quality)
    else:
        image.save(path, quality=quality, subsampling=code)


def make_real_like_folder(root: Path, images: int, seed: int = 0, first: int = 0) -> SourceStats:
    """``images`` real-like JPEGs under root/<class>/, numbered from ``first``; the mix drawn."""
    rng = np.random.default_rng([seed, first])
    scenes = [make_image(k % CLASSES, rng) for k in range(DISTINCT_SCENES)]
    stats = SourceStats(chroma={name: 0 for name in CHROMA})
    for k in range(first, first + images):
        width, height = draw_size(rng)
        chroma, quality = draw_chroma(rng), draw_quality(rng)
        path = root / f"n{k % CLASSES:08d}" / f"{k:06d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_jpeg(real_like_pixels(scenes[k % DISTINCT_SCENES], rng, width, height), path, chroma, quality)
        stats.chroma[chroma] += 1
        stats.qualities.append(quality)
        stats.long_sides.append(max(width, height))
        stats.bytes += path.stat().st_size
        stats.pixels += width * height
    return stats


# ---------------------------------------------------------------- the benchmarks' --sources option
REAL_LIKE, SYNTHETIC = "real-like", "synthetic"
SOURCES = (REAL_LIKE, SYNTHETIC)
DESCRIPTION_FILE = "SOURCES.txt"  # what a generated folder holds, so that --folder can reuse it


def add_sources_option(parser: argparse.ArgumentParser) -> None:
    """--sources real-like|synthetic and --folder DIR, read by ``prepare_sources``."""
    parser.add_argument("--sources", choices=SOURCES, default=REAL_LIKE,
                        help="real-like (default): ImageNet's mix of chroma sampling, quality and sizes, photo "
                             "texture; synthetic: the earlier generator (quality 95 4:2:0 scenes with grain)")
    parser.add_argument("--folder", type=Path, help="where to keep (and find) the generated images")


def prepare_sources(args: argparse.Namespace, tmp: Path) -> Path:
    """The source folder the options ask for (``--folder``, else under ``tmp``), made or reused; prints what it holds."""
    root = args.folder or tmp / "images"
    print(make_sources(args.sources, root, args.images), flush=True)
    return root


def make_sources(kind: str, root: Path, images: int) -> str:
    """``images`` source JPEGs of ``kind`` in ``root`` (reused when it already holds them); a line saying what."""
    description = root / DESCRIPTION_FILE
    if description.is_file() and description.read_text().startswith(f"{kind}: {images} "):
        return description.read_text().strip() + " (reused)"
    if kind == REAL_LIKE:
        text = f"{kind}: {make_real_like_folder(root, images)}"
    else:
        from bench_conversion import MIX, imagenet_size, make_folder  # the earlier generator

        bytes_per_pixel = make_folder(root, images, size=imagenet_size)
        text = (f"{kind}: {images} quality-95 4:2:0 JPEGs ({bytes_per_pixel:.2f} bytes/pixel; "
                + ", ".join(f"{share:.0%} {what}" for what, share in MIX.items()) + ")")
    description.write_text(text + "\n")
    return text
