"""Conversion speed: ours vs the ffcv-imagenet way, side by side on the same folder, in one run.

The ffcv-imagenet way is its write_imagenet.py: FFCV's DatasetWriter over torchvision's
ImageFolder (PIL loader), with the same RGBImageField settings, worker count and chunk
size. Ours runs with its defaults (seeded shuffled order, ``--jpeg-passthrough auto``) and
with ``--jpeg-passthrough never``. The sources (``--sources``): real-like by default
(real_like_sources: ImageNet's mix of chroma sampling, quality and sizes, photo texture), or the
earlier synthetic ones: the demo data's scenes scaled up with grain and texture, all quality 95
4:2:0, mostly at or under 500 px on the long side, a share of 500-800 px, a tail of large photos (MIX).
Each write mode (proportion = the rn50 data, jpg) is timed separately; runs rotate in
order so page-cache warmth favours no side; the ratio of median img/s is the result.
Records both sides stored raw are compared pixel by pixel (PSNR), so a speed-up cannot
hide a quality loss. CPU seconds per image (every process of the conversion) are printed too:
on a shared machine they vary less than wall time, and with every core busy the images per
second of a dedicated machine are its cores over them.

    python benchmarks/bench_conversion.py [--images 600] [--workers 0] [--repeats 3] [--modes proportion jpg]
                                          [--folder DIR] [--sources real-like|synthetic]

``--folder DIR`` keeps the generated images in DIR and reuses them when DIR already holds
``--images`` of them (making 4000 takes minutes); the .beton files still go to a temporary folder.
"""
from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from ffcv.fields import IntField
from ffcv.writer import DatasetWriter
from PIL import Image
from torchvision.datasets import ImageFolder

from real_like_sources import add_sources_option, make_sources

from ffcv_imagenet.beton_format import RAW_MODE
from ffcv_imagenet.convert.conversion import ConversionSettings, convert_imagefolder, read_index
from ffcv_imagenet.convert.demo_data import make_image
from ffcv_imagenet.convert.inspection import image_metadata, open_beton, read_image

CLASSES = 10
TYPICAL_SIDE = (400, 800)  # make_folder's default sizes: each side in this range
LARGE_FRACTION = 0.15  # a tail of large photos, long side in LARGE_SIDE
LARGE_SIDE = (1000, 2500)
# ImageNet's originals: most are Flickr "medium" sizes, long side at most 500 px (500x375, 500x333, ...)
MIX = {"long side 300-500": 0.80, "long side 501-800": 0.12, "long side 1000-2500": 0.08}
SMALL_LONG_SIDE, MEDIUM_LONG_SIDE = (300, 501), (501, 801)
ASPECT = (0.6, 1.0)  # short side / long side
# Grain, texture at 1/2 and 1/4 scale and a high source quality give the JPEGs a photo's
# entropy, which is what decoding costs: about 0.7 bytes per pixel, near ImageNet's originals
# (about 110 KB for about 400x350 px: 0.8).
GRAIN = 10.0
DETAIL = 12.0
DETAIL_SCALES = (2, 4)
SOURCE_QUALITY = 95
DISTINCT_SCENES = 60  # scenes are reused across files (at other sizes) to keep set-up short
POLL_SECONDS = 0.02


def source_size(rng: np.random.Generator) -> tuple[int, int]:
    if rng.random() < LARGE_FRACTION:
        long_side = int(rng.integers(*LARGE_SIDE))
        short_side = int(long_side * rng.uniform(0.6, 0.8))
    else:
        long_side, short_side = sorted(int(v) for v in rng.integers(*TYPICAL_SIDE, size=2))[::-1]
    return (long_side, short_side) if rng.random() < 0.6 else (short_side, long_side)  # (width, height)


def texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Grain plus coarser detail, as in photographs; what makes JPEG decoding cost what it does."""
    out = rng.normal(0, GRAIN, (height, width, 3)).astype(np.float32)
    for scale in DETAIL_SCALES:
        coarse = rng.normal(128, DETAIL, (max(1, height // scale), max(1, width // scale), 3))
        out += np.asarray(Image.fromarray(coarse.clip(0, 255).astype(np.uint8)).resize((width, height)),
                          dtype=np.float32) - 128
    return out


def imagenet_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height) drawn from MIX."""
    share = rng.random()
    small, medium, _ = MIX.values()
    long_side = (int(rng.integers(*SMALL_LONG_SIDE)) if share < small
                 else int(rng.integers(*MEDIUM_LONG_SIDE)) if share < small + medium
                 else int(rng.integers(*LARGE_SIDE)))
    short_side = int(long_side * rng.uniform(*ASPECT))
    return (long_side, short_side) if rng.random() < 0.6 else (short_side, long_side)


SizeSampler = Callable[[np.random.Generator], tuple[int, int]]


def make_folder(root: Path, images: int, seed: int | Sequence[int] = 0, size: SizeSampler = source_size,
                quality: int = SOURCE_QUALITY, first: int = 0) -> float:
    """Write ``images`` photo-like JPEGs under root/<class>/, sides drawn by ``size``, numbered from
    ``first`` (so that processes can share a folder); returns their mean bytes per pixel. The other
    benchmarks make their data here too."""
    rng = np.random.default_rng(seed)
    scenes = [make_image(k % CLASSES, rng) for k in range(DISTINCT_SCENES)]
    total_bytes = total_pixels = 0
    for k in range(first, first + images):
        width, height = size(rng)
        scene = np.asarray(scenes[k % DISTINCT_SCENES].resize((width, height), Image.BICUBIC), dtype=np.float32)
        path = root / f"n{k % CLASSES:08d}" / f"{k:06d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(scene + texture(rng, width, height), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(path, quality=quality)
        total_bytes += path.stat().st_size
        total_pixels += width * height
    return total_bytes / total_pixels


def uniform_sides(low: int, high: int) -> SizeSampler:
    """Each side uniform in [low, high): photos of a few hundred pixels, as ImageNet's are once stored."""
    return lambda rng: tuple(int(side) for side in rng.integers(low, high, size=2))


def ffcv_imagenet_way(root: Path, out: Path, settings: ConversionSettings) -> int:
    dataset = ImageFolder(str(root))
    writer = DatasetWriter(str(out), {"image": settings.image_field(), "label": IntField()},
                           num_workers=settings.workers)
    writer.from_indexed_dataset(dataset, chunksize=settings.chunk_size)
    return len(dataset)


def ours(root: Path, out: Path, settings: ConversionSettings) -> int:
    return convert_imagefolder(root, out, settings, progress=False).images


def ours_reencoding(root: Path, out: Path, settings: ConversionSettings) -> int:
    return ours(root, out, dataclasses.replace(settings, jpeg_passthrough="never"))


WAYS = {"ffcv-imagenet way": ffcv_imagenet_way, "ours": ours, "ours, pass-through never": ours_reencoding}


def agreement(root: Path, reference: Path, candidate: Path) -> tuple[int, int, float]:
    """Over the records both files stored raw (decode and resize differences, no JPEG noise), matched by
    source path (ImageFolder's order in the reference, the .index in ours):
    (how many, how many identical, PSNR of the others pooled)."""
    a, b = open_beton(reference), open_beton(candidate)
    ours_index = {path: record for record, (path, _, _) in enumerate(read_index(candidate))}
    pairs = [(record, ours_index[path]) for record, (path, _) in enumerate(ImageFolder(str(root)).samples)]
    a_modes, b_modes = image_metadata(a)["mode"], image_metadata(b)["mode"]
    both_raw = [(i, j) for i, j in pairs if a_modes[i] == RAW_MODE and b_modes[j] == RAW_MODE]
    errors = [np.mean((read_image(a, i).astype(np.float64) - read_image(b, j)) ** 2) for i, j in both_raw]
    differing = [error for error in errors if error > 0]
    pooled = float(10 * np.log10(255 ** 2 / np.mean(differing))) if differing else float("inf")
    return len(errors), len(errors) - len(differing), pooled


def cpu_seconds() -> float:
    """User + system time of this process and of its children that have exited and been reaped."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def reap_children() -> None:
    """Wait for every child process to exit (FFCV's DatasetWriter does not join its workers), so that
    their CPU time is counted with the run that started them."""
    while multiprocessing.active_children():  # joins those that have exited
        time.sleep(POLL_SECONDS)


def time_mode(root: Path, tmp: Path, settings: ConversionSettings, repeats: int,
              ways: Iterable[str] = WAYS) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Images per second and CPU milliseconds per image, of each of ``ways``, in each run."""
    rates: dict[str, list[float]] = {name: [] for name in ways}
    cpu_ms: dict[str, list[float]] = {name: [] for name in ways}
    for repeat in range(repeats):
        names = list(rates)
        names = names[repeat % len(names):] + names[:repeat % len(names)]  # rotate: no side always goes first
        for name in names:
            reap_children()
            cpu_started, started = cpu_seconds(), time.perf_counter()
            count = WAYS[name](root, tmp / f"{name}.beton", settings)
            rates[name].append(count / (time.perf_counter() - started))
            reap_children()
            cpu_ms[name].append((cpu_seconds() - cpu_started) / count * 1e3)
    return rates, cpu_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--workers", type=int, default=0, help="0 = all cores")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=["proportion", "jpg"], choices=["proportion", "jpg", "raw"])
    add_sources_option(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.folder or Path(tmp) / "images"
        print(f"\n{make_sources(args.sources, root, args.images)}; "
              f"{ConversionSettings(num_workers=args.workers).workers} workers, {os.cpu_count()} cores, "
              f"{args.repeats} runs each")
        for mode in args.modes:
            settings = ConversionSettings(write_mode=mode, num_workers=args.workers)  # else ffcv-imagenet's RN-50
            rates, cpu_ms = time_mode(root, Path(tmp), settings, args.repeats)
            raw, identical, pooled_psnr = agreement(root, Path(tmp) / "ffcv-imagenet way.beton",
                                                    Path(tmp) / "ours.beton")
            kept = sum(kept for _, _, kept in read_index(Path(tmp) / "ours.beton"))
            print(f" write mode {mode} (max side {settings.max_resolution}, quality {settings.jpeg_quality}"
                  + (f", compress probability {settings.compress_probability}" if mode == "proportion" else "")
                  + f"); ours kept {kept} of {args.images} source JPEGs as they are")
            baseline = statistics.median(rates["ffcv-imagenet way"])
            baseline_cpu = statistics.median(cpu_ms["ffcv-imagenet way"])
            for name, values in rates.items():
                cpu = statistics.median(cpu_ms[name])
                print(f"  {name:22s} {statistics.median(values):7.1f} img/s  "
                      f"{statistics.median(values) / baseline:5.2f}x  (runs: {', '.join(f'{v:.1f}' for v in values)})"
                      f"  CPU {cpu:5.2f} ms/img  {baseline_cpu / cpu:5.2f}x  "
                      f"(runs: {', '.join(f'{v:.2f}' for v in cpu_ms[name])})")
            if raw:  # jpg mode stores none raw
                print(f"  records stored raw by both: {raw}; identical: {identical}; the others (large photos "
                      f"decoded at reduced DCT scale) differ by PSNR {pooled_psnr:.1f} dB")


if __name__ == "__main__":
    main()
