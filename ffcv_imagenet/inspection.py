"""``write_datasets.py inspect``: is this ``.beton`` sound? Counts, labels, sizes, a few decodes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from ffcv.reader import Reader

from .conversion import ConversionError, load_class_names, sidecar_path

EXPECTED_FIELDS = ("image", "label")
SAMPLES_TO_DECODE = 8
DECODE_SIDE = 64


def open_beton(path: str | Path) -> Reader:
    """FFCV's reader, with one-line errors for a missing, corrupt or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path} does not exist")
    try:
        reader = Reader(str(path))
    except Exception as err:
        raise ConversionError(f"{path} is not a readable .beton: {type(err).__name__}: {err}") from None
    missing = [name for name in EXPECTED_FIELDS if name not in reader.field_names]
    if missing:
        raise ConversionError(f"{path} lacks the field(s) {missing}: it has {reader.field_names}; "
                              "write it with write_datasets.py")
    return reader


def image_metadata(reader: Reader) -> np.ndarray:
    return reader.metadata[f"f{reader.field_names.index('image')}"]


def labels(reader: Reader) -> np.ndarray:
    return np.asarray(reader.metadata[f"f{reader.field_names.index('label')}"])


def decode_samples(path: str | Path, count: int = SAMPLES_TO_DECODE) -> list[tuple[float, int]]:
    """Decode the first ``count`` records through FFCV's Loader: (mean pixel, label) each.

    Records differ in size, so each is decoded as its full centre square resized
    to DECODE_SIDE: every byte of the image is decoded, the output is uniform.
    """
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    loader = Loader(str(path), batch_size=count, num_workers=1, order=OrderOption.SEQUENTIAL,
                    indices=list(range(count)),
                    pipelines={"image": [CenterCropRGBImageDecoder((DECODE_SIDE, DECODE_SIDE), ratio=1.0)],
                               "label": [IntDecoder()]})
    images, label_batch = next(iter(loader))
    return [(float(image.mean()), int(label)) for image, label in zip(images, label_batch[:, 0])]


def report(path: str | Path) -> str:
    reader = open_beton(path)
    meta = image_metadata(reader)
    label_values = labels(reader)
    heights, widths = meta["height"].astype(int), meta["width"].astype(int)
    lines = [f"{path}: {reader.num_samples} records, fields {reader.field_names}"]
    if sidecar_path(path).is_file():
        classes = load_class_names(path)
        lines.append(f"classes: {len(classes)} (from {sidecar_path(path).name})")
    counts = np.bincount(label_values)
    lines.append(f"label histogram: {len(counts)} labels, min {counts.min()} / median "
                 f"{int(np.median(counts))} / max {counts.max()} images per label")
    lines.append(f"image height: min {heights.min()} mean {heights.mean():.0f} max {heights.max()}; "
                 f"width: min {widths.min()} mean {widths.mean():.0f} max {widths.max()}")
    lines.append(f"stored as JPEG: {np.mean(meta['mode'] == 0):.0%}, raw: {np.mean(meta['mode'] != 0):.0%}")
    count = min(SAMPLES_TO_DECODE, reader.num_samples)
    decoded = decode_samples(path, count)
    lines.append(f"decoded the first {len(decoded)} records (mean pixel -> label): "
                 + ", ".join(f"{mean:.0f}->{label}" for mean, label in decoded))
    return "\n".join(lines)
