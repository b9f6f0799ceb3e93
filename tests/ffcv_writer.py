"""Writing .beton files the way FFCV users already have them: ffcv-imagenet's write_imagenet.py.

That script runs FFCV's own DatasetWriter (default 8 MiB pages) over torchvision's
ImageFolder, with fields ``image`` (RGBImageField) and ``label`` (IntField), and
writes no sidecar. Its published ImageNet files use proportion mode, 50% JPEG at
quality 90 (``train_500_0.50_90.ffcv``); its own default is smart mode.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

FFCV_IMAGENET_QUALITY = 90
FFCV_IMAGENET_PROBABILITY = 0.5
WRITER_PROCESSES = 2  # the dev box's cores
CHUNK_SIZE = 100  # write_imagenet.py's default


def write_like_ffcv_imagenet(root: Path, out: Path, *, max_resolution: int, write_mode: str = "proportion",
                             compress_probability: float | None = FFCV_IMAGENET_PROBABILITY,
                             smart_threshold: int | None = None, fields: dict[str, Any] | None = None) -> Path:
    """``ImageFolder(root)`` -> ``out`` with FFCV's DatasetWriter, as write_imagenet.py calls it.
    ``fields`` replaces its {'image': ..., 'label': ...} (for files that differ from it)."""
    import numpy as np
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter
    from torchvision.datasets import ImageFolder

    np.random.seed(0)  # proportion mode draws JPEG-or-raw from numpy's global generator
    image = RGBImageField(write_mode=write_mode, max_resolution=max_resolution, smart_threshold=smart_threshold,
                          compress_probability=compress_probability, jpeg_quality=FFCV_IMAGENET_QUALITY)
    writer = DatasetWriter(str(out), fields or {"image": image, "label": IntField()}, num_workers=WRITER_PROCESSES)
    writer.from_indexed_dataset(ImageFolder(root=str(root)), chunksize=CHUNK_SIZE)
    return out
