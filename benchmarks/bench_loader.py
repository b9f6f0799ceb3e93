"""Loader speed: ours vs FFCV's stock decoders vs torchvision, side by side on the same data, in one run.

Training path (RandomResizedCrop to RES + horizontal flip, uint8 NCHW batches out):
- ours: ``TrainLoader`` (``RandomResizedCropDecoder``: seeded crop, one resize, flip in the same pass);
- FFCV stock: ``RandomResizedCropRGBImageDecoder`` + ``RandomHorizontalFlip``, the same tail as ours;
- torchvision: ``ImageFolder`` (PIL) + ``RandomResizedCrop`` + ``RandomHorizontalFlip`` + ``PILToTensor``
  in a ``torch.utils.data.DataLoader`` (uint8 out, as ours: normalising is the GPU's job in both).
Validation path (resize + center crop, ratio 224/256): ours is FFCV's ``CenterCropRGBImageDecoder``
(``build_val_loader``); torchvision is ``Resize(res / ratio)`` + ``CenterCrop(res)``.

Data: ImageNet-like photos (the demo data's scenes with grain and texture, each side 300-500 px,
JPEG quality 90), converted to a .beton with ffcv-imagenet's RN-50 settings (proportion mode: half
of the records JPEG, half raw; ``--write-mode jpg`` stores all as JPEG). Every loader gets the same
worker count (default: all cores). Each loader runs one untimed epoch first (numba compiles FFCV
pipelines, DataLoader starts its worker processes, the page cache fills); then each repeat times one
epoch of every loader, in an order that rotates between repeats. Figures: median img/s (min-max),
img/s per core (per worker), and ratios (per repeat, then the median: a busy
spell of a shared machine slows both sides of a ratio alike).

    python benchmarks/bench_loader.py [--images 1000] [--res 160 192] [--repeats 5] [--workers 0]
"""
from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from bench_conversion import make_folder, uniform_sides
from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
from ffcv.loader import Loader, OrderOption
from ffcv.transforms import RandomHorizontalFlip
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import ImageFolder

from ffcv_imagenet.beton_format import RAW_MODE
from ffcv_imagenet.config import ValidationConfig
from ffcv_imagenet.convert.conversion import ConversionSettings, convert_imagefolder
from ffcv_imagenet.convert.inspection import image_metadata, open_beton
from ffcv_imagenet.loaders import LoaderSettings, TrainLoader, _image_tail, _label_pipeline, build_val_loader
from ffcv_imagenet.profiling import Rate
from ffcv_imagenet.schedule import RRC, EpochPlan

PHOTO_SIDE = (300, 500)  # ImageNet's photos: a few hundred pixels per side (mean about 400 x 350)
SETTLE_SECONDS = 20  # a freshly written file reads slower while the page cache flushes (PERF-NOTES)
OURS, STOCK, TORCHVISION = "ours (TrainLoader)", "FFCV stock RRC + flip", "torchvision ImageFolder + PIL"
VAL_OURS, VAL_TORCHVISION = "ours (build_val_loader)", "torchvision Resize + CenterCrop"

Epoch = Callable[[], int]  # runs one epoch, returns the images it delivered


def count(batches: Iterable) -> int:
    return sum(len(labels) for _, labels in batches)


# ---------------------------------------------------------------- the loaders
def ours_train(beton: Path, settings: LoaderSettings, res: int) -> Epoch:
    loader = TrainLoader(beton, settings, order="random", in_memory=True, distributed=False, seed=0,
                         fixres_crop_ratio=ValidationConfig().crop_ratio)
    epochs = itertools.count()
    return lambda: count(loader.epoch(EpochPlan(next(epochs), res, RRC)))


def stock_train(beton: Path, settings: LoaderSettings, res: int) -> Epoch:
    # The same tails as ours (to tensor, to the device, to NCHW uint8): only decode, crop and flip differ.
    image = [RandomResizedCropRGBImageDecoder((res, res)), RandomHorizontalFlip(),
             *_image_tail(settings.device, settings.channels_last)]
    loader = Loader(str(beton), batch_size=settings.batch_size, num_workers=settings.num_workers,
                    order=OrderOption.RANDOM, os_cache=True, drop_last=True,
                    pipelines={"image": image, "label": _label_pipeline(settings.device)})
    return lambda: count(loader)


def torchvision_loader(root: Path, settings: LoaderSettings, transform: Callable, train: bool) -> Epoch:
    # Spawned workers: forking this process, which runs FFCV's and numba's threads, is unsafe.
    loader = DataLoader(ImageFolder(str(root), transform=transform), batch_size=settings.batch_size,
                        shuffle=train, drop_last=train, num_workers=settings.num_workers, persistent_workers=True,
                        multiprocessing_context="spawn")
    return lambda: count(loader)


def torchvision_train(root: Path, settings: LoaderSettings, res: int) -> Epoch:
    transform = transforms.Compose([transforms.RandomResizedCrop(res), transforms.RandomHorizontalFlip(),
                                    transforms.PILToTensor()])
    return torchvision_loader(root, settings, transform, train=True)


def ours_val(beton: Path, settings: LoaderSettings, val: ValidationConfig) -> Epoch:
    samples = int(open_beton(beton).num_samples)
    loader = build_val_loader(beton, settings, res=val.resolution, crop_ratio=val.crop_ratio,
                              num_samples=samples, rank=0, world_size=1)
    return lambda: count(loader)


def torchvision_val(root: Path, settings: LoaderSettings, val: ValidationConfig) -> Epoch:
    transform = transforms.Compose([transforms.Resize(round(val.resolution / val.crop_ratio)),
                                    transforms.CenterCrop(val.resolution), transforms.PILToTensor()])
    return torchvision_loader(root, settings, transform, train=False)


# ---------------------------------------------------------------- timing and table
def measure(loaders: dict[str, Epoch], repeats: int) -> dict[str, Rate]:
    """One untimed epoch each, then per repeat one timed epoch each, the order rotating."""
    for epoch in loaders.values():
        epoch()
    seconds: dict[str, list[float]] = {name: [] for name in loaders}
    images: dict[str, int] = {}
    names = list(loaders)
    for repeat in range(repeats):
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            started = time.perf_counter()
            images[name] = loaders[name]()
            seconds[name].append(time.perf_counter() - started)
    return {name: Rate.from_seconds(seconds[name], images[name]) for name in loaders}


def paired_ratio(rate: Rate, reference: Rate) -> float:
    """Median over repeats of the two loaders' rates in the same repeat: robust to a busy spell."""
    return statistics.median(a / b for a, b in zip(rate.runs, reference.runs))


def table(title: str, rates: dict[str, Rate], cores: int, reference: str) -> str:
    lines = [title, f"  {'loader':<32} | {'img/s median (min-max)':<26} | per core | vs {reference} (paired)"]
    for name, rate in rates.items():
        lines.append(f"  {name:<32} | {rate.cell():<26} | {rate.median / cores:>8.1f} | "
                     f"{paired_ratio(rate, rates[reference]):.2f}x")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--res", type=int, nargs="+", default=[160, 192], help="training crop sides")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="decode threads/processes per loader; 0 = all cores")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write-mode", default="proportion", help="the .beton's RGBImageField mode (jpg: all JPEG)")
    args = parser.parse_args()
    cores = args.workers or os.cpu_count() or 1
    torch.set_num_threads(1)  # the main process only collects batches
    conversion = ConversionSettings(write_mode=args.write_mode, num_workers=cores)
    settings = LoaderSettings(batch_size=args.batch_size, num_workers=cores, device=torch.device("cpu"))
    val = ValidationConfig()
    with tempfile.TemporaryDirectory() as tmp:
        root, beton = Path(tmp) / "images", Path(tmp) / "train.beton"
        bytes_per_pixel = make_folder(root, args.images, size=uniform_sides(*PHOTO_SIDE),
                                      quality=conversion.jpeg_quality)
        convert_imagefolder(root, beton, conversion, progress=False)
        raw_share = float(np.mean(image_metadata(open_beton(beton))["mode"] == RAW_MODE))
        os.sync()
        time.sleep(SETTLE_SECONDS)
        print(f"{args.images} photo-like JPEGs, {PHOTO_SIDE[0]}-{PHOTO_SIDE[1]} px per side, quality "
              f"{conversion.jpeg_quality}, {bytes_per_pixel:.2f} bytes/pixel; .beton {args.write_mode}: "
              f"{100 * raw_share:.0f}% raw records; {cores} workers per loader on {os.cpu_count()} cores; "
              f"batch {args.batch_size}; median of {args.repeats} epochs after one untimed epoch")
        kept = []  # numba's finaliser raises on FFCV's compiled pipelines when a Loader is collected mid-run
        for res in args.res:
            kept.append({OURS: ours_train(beton, settings, res), STOCK: stock_train(beton, settings, res),
                         TORCHVISION: torchvision_train(root, settings, res)})
            rates = measure(kept[-1], args.repeats)
            print(table(f"\ntrain, RandomResizedCrop {res} + flip", rates, cores, STOCK))
            print(f"  ours / torchvision (paired): {paired_ratio(rates[OURS], rates[TORCHVISION]):.2f}x")
        kept.append({VAL_OURS: ours_val(beton, settings, val), VAL_TORCHVISION: torchvision_val(root, settings, val)})
        rates = measure(kept[-1], args.repeats)
        print(table(f"\nvalidation, resize + center crop {val.resolution} (ratio {val.crop_ratio:.3f})", rates,
                    cores, VAL_TORCHVISION))


if __name__ == "__main__":
    main()
