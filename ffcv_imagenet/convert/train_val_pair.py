"""A train/val pair of .beton files from two ImageFolder roots (``imagenet`` and ``demo`` commands), and
one folder to a local path or an object-store URL (``convert``).

Val is converted after train with train's class indices and in folder order; its classes are
checked against train's before train's conversion starts, not after the hours it takes.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from .conversion import FOLDER, ConversionError, ConversionSettings, ConversionSummary, convert_imagefolder, \
    find_class_folders, require_known_classes
from .demo_data import make_demo_imagefolder

DEMO_MAX_RESOLUTION = 256  # demo images are at most 540 px; small records keep the demo quick
DEMO_CLASSES, DEMO_TRAIN_PER_CLASS, DEMO_VAL_PER_CLASS = 10, 80, 20


def print_summary(summary: ConversionSummary) -> None:
    print(summary, flush=True)


def convert_one(root: Path, out: str | Path, settings: ConversionSettings, class_map: Path | None = None) -> None:
    """root -> out; an ``s3://``-style ``out`` is written in the local cache, then uploaded (``remote_cache``)."""
    from ..remote_cache import CacheSettings, written_locally

    with written_locally(out, CacheSettings()) as local:
        print_summary(convert_imagefolder(root, local, settings, class_map=class_map))
    if local != out:
        print(f"uploaded {local.name} and the files beside it to {out}", flush=True)


def convert_pair(train_root: Path, val_root: Path, out_dir: Path, settings: ConversionSettings,
                 progress: bool = True) -> tuple[ConversionSummary, ConversionSummary]:
    """train -> out_dir/train.beton, then val -> out_dir/val.beton with train's class indices, in folder order."""
    for root in (train_root, val_root):
        if not root.is_dir():
            raise ConversionError(f"{root} does not exist: expected {root.parent}/train and {root.parent}/val")
    # val's classes are checked now, not after the hours train takes
    require_known_classes(val_root, find_class_folders(val_root), find_class_folders(train_root), str(train_root))
    train = out_dir / "train.beton"
    train_summary = convert_imagefolder(train_root, train, settings, progress=progress)
    print_summary(train_summary)
    val_settings = dataclasses.replace(settings, record_order=FOLDER)  # evaluation reads every record anyway
    val_summary = convert_imagefolder(val_root, out_dir / "val.beton", val_settings, class_map=train, progress=progress)
    print_summary(val_summary)
    return train_summary, val_summary


def convert_demo(out_dir: Path, num_classes: int = DEMO_CLASSES, train_per_class: int = DEMO_TRAIN_PER_CLASS,
                 val_per_class: int = DEMO_VAL_PER_CLASS, seed: int = 0,
                 num_workers: int = 0) -> tuple[ConversionSummary, ConversionSummary]:
    """The demo ImageFolder under out_dir/images, converted to out_dir/{train,val}.beton."""
    settings = ConversionSettings(max_resolution=DEMO_MAX_RESOLUTION, num_workers=num_workers)
    images = make_demo_imagefolder(out_dir / "images", num_classes=num_classes, train_per_class=train_per_class,
                                   val_per_class=val_per_class, seed=seed)
    return convert_pair(images / "train", images / "val", out_dir, settings)
