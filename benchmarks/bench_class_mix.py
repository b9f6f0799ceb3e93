"""Distinct classes per batch: random vs quasi_random order, on a .beton written in folder order and in
the seeded shuffled order (``write_datasets.py --record-order``).

quasi_random (data larger than RAM) draws each batch from a window of a few pages; if each page
holds one class, so does the batch. Two measurements, both with the training loader's own orders:

1. real files: a folder of CLASSES x PER_CLASS images converted by ``convert_imagefolder`` in both
   orders, raw records of RECORD_SIDE^2 pixels (about 30 per 8 MiB page, as ImageNet's records in
   the rn50 data: about 110 KiB as JPEG or 400 KiB raw, half each); the orders of TrainLoader
   (FFCV's random permutation, our PageShuffleOrder for quasi_random) at several ``cache_mib``;
2. ImageNet at the recipe's scale (1,000 classes x 1,281 images, 30 records per page, batch 512,
   cache_mib 512 and 4096 per rank): the same PageShuffleOrder over a page table built from the
   record count per page, without writing 300 GiB.

    python benchmarks/bench_class_mix.py [--classes 100] [--per-class 30] [--cache-mib 16 64 256]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ffcv_imagenet.convert.conversion import ConversionSettings, convert_imagefolder
from ffcv_imagenet.convert.inspection import labels, open_beton
from ffcv_imagenet.loaders import LoaderSettings, TrainLoader
from ffcv_imagenet.schedule import RRC, EpochPlan
from ffcv_imagenet.traversal import PageShuffleOrder

RECORD_SIDE = 300  # 270 KiB raw records: 30 to an 8 MiB page
IMAGENET_CLASSES, IMAGENET_PER_CLASS = 1000, 1281
IMAGENET_RECORDS_PER_PAGE = 30
PAGE_MIB = 8
RECIPE_BATCH = 512
RECIPE_CACHE_MIB = (512, 4096)
BATCHES_MEASURED = 400  # of an ImageNet epoch (2,500 batches): plenty for a mean
ORDERS = ("folder", "shuffled")


def distinct_per_batch(sample_order: np.ndarray, label_values: np.ndarray, batch: int, limit: int = 0) -> float:
    batches = len(sample_order) // batch
    batches = min(batches, limit) if limit else batches
    return float(np.mean([len(np.unique(label_values[sample_order[k * batch:(k + 1) * batch]]))
                          for k in range(batches)]))


def make_folder(root: Path, classes: int, per_class: int) -> None:
    """Flat-colour PNGs: cheap to make and to decode; stored raw, every record has the same size."""
    rng = np.random.default_rng(0)
    for label in range(classes):
        folder = root / f"n{label:08d}"
        folder.mkdir(parents=True)
        for k in range(per_class):
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            Image.new("RGB", (RECORD_SIDE, RECORD_SIDE), colour).save(folder / f"{k:05d}.png")


def loader_order(beton: Path, order: str, cache_mib: int, batch: int) -> np.ndarray:
    settings = LoaderSettings(batch_size=batch, num_workers=1, device=torch.device("cpu"))
    loader = TrainLoader(beton, settings, order=order, in_memory=order == "random", distributed=False, seed=0,
                         fixres_crop_ratio=0.875, cache_mib=cache_mib)
    plan = EpochPlan(0, 64, RRC)
    loader.prepare(plan)
    return np.asarray(loader._loader.traversal_order.sample_order(plan.epoch))


def real_files(classes: int, per_class: int, cache_mibs: list[int], batch: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        make_folder(Path(tmp) / "images", classes, per_class)
        print(f"\n1. {classes} classes x {per_class} images, raw {RECORD_SIDE}x{RECORD_SIDE} records "
              f"({RECORD_SIDE ** 2 * 3 / 1024:.0f} KiB), batch {batch}; distinct classes per batch "
              f"(random order / quasi_random / ratio)")
        for record_order in ORDERS:
            beton = Path(tmp) / f"{record_order}.beton"
            convert_imagefolder(Path(tmp) / "images", beton, ConversionSettings(write_mode="raw",
                                record_order=record_order), progress=False)
            label_values = labels(open_beton(beton))
            pages = open_beton(beton).alloc_table["ptr"] // (PAGE_MIB << 20)
            random = distinct_per_batch(loader_order(beton, "random", 0, batch), label_values, batch)
            cells = []
            for cache_mib in cache_mibs:
                quasi = distinct_per_batch(loader_order(beton, "quasi_random", cache_mib, batch), label_values, batch)
                window = max(1, cache_mib // PAGE_MIB // 2)
                cells.append(f"cache {cache_mib} MiB ({window} of {len(np.unique(pages))} pages): "
                             f"{random:.1f} / {quasi:.1f} / {quasi / random:.2f}")
            print(f"  {record_order:8s} " + "; ".join(cells))


def imagenet_scale() -> None:
    label_values = np.repeat(np.arange(IMAGENET_CLASSES), IMAGENET_PER_CLASS)
    count = len(label_values)
    pages = [np.arange(start, min(start + IMAGENET_RECORDS_PER_PAGE, count))
             for start in range(0, count, IMAGENET_RECORDS_PER_PAGE)]
    print(f"\n2. ImageNet scale: {count} records, {len(pages)} pages of {IMAGENET_RECORDS_PER_PAGE}, batch "
          f"{RECIPE_BATCH}, first {BATCHES_MEASURED} batches; distinct classes per batch "
          f"(random order / quasi_random / ratio)")
    random_order = np.random.default_rng(0).permutation(count)
    for record_order in ORDERS:
        stored = (label_values if record_order == "folder"
                  else np.random.default_rng(1).permutation(label_values))
        random = distinct_per_batch(random_order, stored, RECIPE_BATCH, BATCHES_MEASURED)
        cells = []
        for cache_mib in RECIPE_CACHE_MIB:
            window = cache_mib // PAGE_MIB // 2  # as TrainLoader: half the cache per window
            order = PageShuffleOrder(pages, seed=0, rank=0, world_size=1, window_pages=window).sample_order(0)
            quasi = distinct_per_batch(order, stored, RECIPE_BATCH, BATCHES_MEASURED)
            cells.append(f"cache {cache_mib} MiB ({window} pages, {window / len(pages):.2%} of the file): "
                         f"{random:.1f} / {quasi:.1f} / {quasi / random:.2f}")
        print(f"  {record_order:8s} " + "; ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--per-class", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=51, help="about half the classes, as 512 of 1000")
    parser.add_argument("--cache-mib", type=int, nargs="+", default=[16, 64, 256])
    args = parser.parse_args()
    real_files(args.classes, args.per_class, args.cache_mib, args.batch_size)
    imagenet_scale()


if __name__ == "__main__":
    main()
