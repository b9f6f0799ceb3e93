"""Conversion speed: ours vs the ffcv-imagenet way, side by side on the same folder.

The ffcv-imagenet way is FFCV's DatasetWriter over torchvision's ImageFolder (PIL
loader), with the same RGBImageField settings and worker count. The source folder
mimics ImageNet's stored sizes: most images about 500x375, a tail of large photos.

    python benchmarks/bench_conversion.py [--images 400] [--workers 0] [--repeats 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from ffcv.fields import IntField
from ffcv.writer import DatasetWriter
from PIL import Image
from torchvision.datasets import ImageFolder

from ffcv_imagenet.conversion import ConversionSettings, convert_imagefolder, image_field

LARGE_FRACTION = 0.15  # share of photos far above 500 px, as in ImageNet's train set
TYPICAL_SIZES = ((500, 375), (375, 500), (500, 333), (500, 400))


def photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    grain = rng.normal(0, 6, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(coarse) + grain, 0, 255).astype(np.uint8))


def make_folder(root: Path, images: int, classes: int = 10, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for k in range(images):
        if rng.random() < LARGE_FRACTION:
            long_side = int(rng.integers(1000, 2400))
            size = (long_side, int(long_side * 0.75))
        else:
            size = TYPICAL_SIZES[int(rng.integers(len(TYPICAL_SIZES)))]
        folder = root / f"n{k % classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        photo(rng, *size).save(folder / f"{k:06d}.JPEG", quality=90)


def ffcv_imagenet_way(root: Path, out: Path, settings: ConversionSettings) -> int:
    dataset = ImageFolder(str(root))
    writer = DatasetWriter(str(out), {"image": image_field(settings), "label": IntField()},
                           num_workers=settings.workers)
    writer.from_indexed_dataset(dataset, chunksize=settings.chunk_size)
    return len(dataset)


def ours(root: Path, out: Path, settings: ConversionSettings) -> int:
    return convert_imagefolder(root, out, settings, progress=False).images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--workers", type=int, default=0, help="0 = all cores")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    settings = ConversionSettings(num_workers=args.workers)  # ffcv-imagenet's RN-50 settings
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        make_folder(root, args.images)
        rates: dict[str, list[float]] = {"ffcv-imagenet way": [], "ours": []}
        for repeat in range(args.repeats):
            # alternate the order so page-cache warmth favours neither side
            order = [("ffcv-imagenet way", ffcv_imagenet_way), ("ours", ours)]
            for name, convert in order if repeat % 2 == 0 else order[::-1]:
                out = Path(tmp) / f"{name.split()[0]}-{repeat}.beton"
                started = time.perf_counter()
                count = convert(root, out, settings)
                rates[name].append(count / (time.perf_counter() - started))
                out.unlink()
    print(f"\n{args.images} ImageNet-like JPEGs, {settings.workers} workers, cores: {os.cpu_count()}")
    for name, values in rates.items():
        print(f"  {name:18s} {statistics.median(values):7.1f} img/s  (runs: {', '.join(f'{v:.1f}' for v in values)})")
    ratio = statistics.median(rates["ours"]) / statistics.median(rates["ffcv-imagenet way"])
    print(f"  ratio ours / ffcv-imagenet way: {ratio:.2f}x")


if __name__ == "__main__":
    main()
