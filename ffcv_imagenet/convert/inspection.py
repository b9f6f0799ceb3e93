"""``write_datasets.py inspect``: is this ``.beton`` sound? Counts, labels, sizes, a few decodes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from ffcv.libffcv import imdecode
from ffcv.reader import Reader

from ..beton_format import (DEFAULT_FIELDS, JPEG_MODE, ConversionError, Fields, allocation_sizes, class_names,  # noqa: F401
                           image_metadata, index_path, label_range, labels, load_class_names, loader_pipelines,
                           load_sidecar, open_beton, read_index, record_bytes, sidecar_path, stored_bytes_by_field)
from .jpeg_passthrough import chroma_sampling, estimated_quality, passthrough_mode, read_jpeg_header
from ..yuv420_records import YUV420_MODE, YUV420ImageField, decode_yuv420
from ..remote_cache import CacheSettings, stored_range, stored_record_bytes

SAMPLES_TO_DECODE = 8
DECODE_SIDE = 64
FULL_HISTOGRAM_MAX_CLASSES = 20  # above this, the histogram is summarised
EXTREMES_SHOWN = 3
BAR_WIDTH = 30
CLASS_WINDOWS = (64, 512, 4096)  # records in a row: a batch drawn from a few pages sees about this many
SHUFFLE_SEED = 0
KIB = 1024
JPEG_PROFILE_SAMPLE = 2000  # JPEG records whose headers are read (a seeded sample of larger files)
HEADER_BYTES = 4096  # read first: the tables and frame header usually lie within; else the whole record
QUALITY_RANGES = (("95-100", 95, 100), ("90-94", 90, 94), ("80-89", 80, 89), ("under 80", 1, 79))


def read_image(reader: Reader, index: int, fields: Fields = DEFAULT_FIELDS) -> np.ndarray:
    """Record ``index`` at its stored size: JPEG records through FFCV's own decoder (TurboJPEG), raw ones copied
    (yuv420 ones converted to RGB)."""
    meta = image_metadata(reader, fields)[index]
    height, width = int(meta["height"]), int(meta["width"])
    data = stored_record_bytes(reader, index, fields)
    if meta["mode"] == YUV420_MODE:
        return decode_yuv420(data, height, width)
    if meta["mode"] != JPEG_MODE:
        return data.reshape(height, width, 3)
    image = np.empty((height, width, 3), dtype=np.uint8)
    if imdecode(data, image, height, width, height, width, 0, 0, 1, 1, False, False) != 0:
        raise ConversionError(f"{reader.file_name}: record {index} is not a decodable JPEG")
    return image


def spread_indices(count: int, wanted: int = SAMPLES_TO_DECODE) -> list[int]:
    """``wanted`` record indices from the start to the end of the file, first and last included."""
    return sorted({int(i) for i in np.linspace(0, count - 1, num=min(wanted, count))})


def decode_samples(reader: Reader, indices: list[int], fields: Fields = DEFAULT_FIELDS,
                   remote: CacheSettings = CacheSettings()) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``indices`` of the file ``reader`` has open (``open_beton``) through FFCV's Loader, the path
    training takes: (images NxSxSx3, labels N).

    Records differ in size, so each is decoded as its full centre square resized
    to DECODE_SIDE: every byte of the image is decoded, the output is uniform. FFCV has no decoder for a
    yuv420 field: its images are read whole (``read_image``, our C++) and area-resized, its labels come
    through the Loader with the image field off.
    """
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder
    from ffcv.loader import OrderOption

    from ..remote_pages import open_loader

    path = reader.file_name
    yuv420 = isinstance(reader.handlers[fields.image], YUV420ImageField)
    if yuv420:  # the Loader reads the labels only
        pipelines = {**{name: None for name in reader.field_names}, fields.label: [IntDecoder()]}
    else:
        pipelines = loader_pipelines(path, fields, [CenterCropRGBImageDecoder((DECODE_SIDE, DECODE_SIDE), ratio=1.0)],
                                     [IntDecoder()])
    loader, _ = open_loader(path, remote, batch_size=len(indices), num_workers=1, order=OrderOption.SEQUENTIAL,
                            indices=indices, pipelines=pipelines)
    batch = next(iter(loader))
    labels = np.asarray(batch[-1][:, 0]).astype(np.int64)
    if yuv420:
        return np.stack([centre_square(read_image(reader, index, fields), DECODE_SIDE) for index in indices]), labels
    return np.asarray(batch[0]), labels


def centre_square(image: np.ndarray, side: int) -> np.ndarray:
    """The image's full centre square, area-resized to ``side`` (FFCV's centre crop at ratio 1)."""
    import cv2

    height, width = image.shape[:2]
    crop = min(height, width)
    top, left = (height - crop) // 2, (width - crop) // 2
    return cv2.resize(image[top:top + crop, left:left + crop], (side, side), interpolation=cv2.INTER_AREA)


def histogram_lines(counts: np.ndarray, names: list[str]) -> list[str]:
    """Every class with a bar when there are few; otherwise the extremes and the empty ones."""
    lines = [f"records per class: min {counts.min()} / median {int(np.median(counts))} / max {counts.max()}"]
    if len(counts) <= FULL_HISTOGRAM_MAX_CLASSES:
        width = max(len(name) for name in names)
        scale = BAR_WIDTH / max(1, counts.max())
        lines += [f"  {label:4d} {name:{width}s} {count:8d} {'#' * int(round(count * scale))}"
                  for label, (name, count) in enumerate(zip(names, counts))]
        return lines
    order = np.argsort(counts, kind="stable")

    def describe(chosen: np.ndarray) -> str:
        return ", ".join(f"{names[i]} ({counts[i]})" for i in chosen)

    lines.append(f"  fewest: {describe(order[:EXTREMES_SHOWN])}; most: {describe(order[::-1][:EXTREMES_SHOWN])}")
    empty = int((counts == 0).sum())
    if empty:
        lines.append(f"  {empty} class(es) have no record, e.g. {names[int(order[0])]}")
    return lines


def size_lines(reader: Reader, fields: Fields) -> list[str]:
    meta = image_metadata(reader, fields)
    heights, widths = meta["height"].astype(int), meta["width"].astype(int)
    stored = stored_bytes_by_field(reader)
    others = "".join(f", {name} {size / len(meta) / KIB:.1f} KiB" for name, size in stored.items()
                     if name != fields.image)
    return [f"stored height: min {heights.min()} / mean {heights.mean():.0f} / max {heights.max()}; "
            f"width: min {widths.min()} / mean {widths.mean():.0f} / max {widths.max()}; "
            f"longest side at most {int(np.maximum(heights, widths).max())}",
            f"stored as JPEG: {np.mean(meta['mode'] == JPEG_MODE):.0%}, raw: {np.mean(meta['mode'] != JPEG_MODE):.0%}"
            + (f" (yuv420: {np.mean(meta['mode'] == YUV420_MODE):.0%})" if (meta["mode"] == YUV420_MODE).any() else "")
            + f"; {stored[fields.image] / len(meta) / KIB:.1f} KiB of image data per record{others}"]


def record_sizes(reader: Reader, fields: Fields = DEFAULT_FIELDS) -> np.ndarray:
    """Every record's image bytes (its allocation at the metadata's data pointer)."""
    return allocation_sizes(reader, image_metadata(reader, fields)["data_ptr"])


def record_kind_lines(reader: Reader, fields: Fields = DEFAULT_FIELDS) -> list[str]:
    """KiB per record of each kind; for JPEG records, the shares of chroma samplings and of quality ranges:
    what decides how fast a record decodes."""
    meta, sizes = image_metadata(reader, fields), record_sizes(reader, fields)
    is_jpeg = meta["mode"] == JPEG_MODE
    is_yuv420 = meta["mode"] == YUV420_MODE
    lines = ["KiB per record: " + "; ".join(
        f"{name} {sizes[chosen].mean() / KIB:.1f} ({int(chosen.sum())} records)" if chosen.any() else f"{name}: none"
        for name, chosen in (("JPEG", is_jpeg), ("raw", ~is_jpeg & ~is_yuv420)))]
    if is_yuv420.any():
        pixels = meta["height"][is_yuv420].astype(np.int64) * meta["width"][is_yuv420].astype(np.int64)
        lines[0] += (f"; yuv420 {sizes[is_yuv420].mean() / KIB:.1f} ({int(is_yuv420.sum())} records, "
                     f"{sizes[is_yuv420].sum() / pixels.sum():.2f} bytes per pixel)")
    jpeg_indices = np.flatnonzero(is_jpeg)
    if not len(jpeg_indices):
        return lines
    sampled = len(jpeg_indices) > JPEG_PROFILE_SAMPLE
    if sampled:
        jpeg_indices = np.sort(np.random.default_rng(SHUFFLE_SEED).choice(jpeg_indices, JPEG_PROFILE_SAMPLE,
                                                                         replace=False))
    headers = [_jpeg_header(reader, int(meta["data_ptr"][i]), int(sizes[i])) for i in jpeg_indices]
    headers = [header for header in headers if header is not None]
    what = f"a sample of {len(jpeg_indices)}" if sampled else f"all {len(jpeg_indices)}"
    if not headers:
        return lines + [f"JPEG records ({what}): no readable header"]
    samplings = [chroma_sampling(header) for header in headers]
    qualities = np.array([estimated_quality(header) or 0 for header in headers])
    lines.append(f"JPEG records ({what}), chroma: " + ", ".join(
        f"{name} {samplings.count(name) / len(samplings):.0%}" for name in sorted(set(samplings), key=samplings.count,
                                                                                reverse=True)))
    lines.append("  quality (estimated from the luma table): " + ", ".join(
        f"{name} {np.mean((qualities >= low) & (qualities <= high)):.0%}" for name, low, high in QUALITY_RANGES)
        + f"; median {np.median(qualities):.0f}")
    return lines


def _jpeg_header(reader: Reader, offset: int, size: int) -> object:
    header = read_jpeg_header(stored_range(reader, offset, min(size, HEADER_BYTES)).tobytes())
    if header is None or (size > HEADER_BYTES and not header.component_tables()):
        header = read_jpeg_header(stored_range(reader, offset, size).tobytes())
    return header


def distinct_classes_per_window(label_values: np.ndarray, window: int) -> float:
    """Mean number of classes among ``window`` consecutive records, over the file's whole windows."""
    starts = range(0, len(label_values) - window + 1, window)
    return float(np.mean([len(np.unique(label_values[start:start + window])) for start in starts]))


def class_mix_lines(label_values: np.ndarray) -> list[str]:
    """Classes a quasi-random batch can draw from (a few pages in a row), against the same labels shuffled."""
    windows = sorted({min(window, len(label_values)) for window in CLASS_WINDOWS})
    shuffled = np.random.default_rng(SHUFFLE_SEED).permutation(label_values)
    return ["mean distinct classes in windows of consecutive records (what a quasi_random batch draws from), "
            "this file / shuffled: " + "; ".join(
                f"{window}: {distinct_classes_per_window(label_values, window):.1f} / "
                f"{distinct_classes_per_window(shuffled, window):.1f}" for window in windows)]


def index_lines(path: Path, label_values: np.ndarray) -> list[str]:
    """The share of records that are their source JPEG's own bytes, from the ``.index``, checked against the labels."""
    if not index_path(path).is_file():
        return [f"no {index_path(path).name}: sources and JPEG pass-through unknown"]
    rows = read_index(path)
    if [label for _, label, _ in rows] != label_values.tolist():
        raise ConversionError(f"{index_path(path)} does not match {path}: its labels differ; they come from "
                              "different conversions")
    kept = sum(kept for _, _, kept in rows)
    return [f"source JPEGs stored as they are (pass-through {passthrough_setting(path)}): {kept} of {len(rows)} records "
            f"({kept / len(rows):.0%}); sources listed in {index_path(path).name}"]


def passthrough_setting(path: Path) -> str:
    """The conversion's --jpeg-passthrough, from the sidecar (an on/off switch in older ones)."""
    setting = load_sidecar(path).get("settings", {}).get("jpeg_passthrough") if sidecar_path(path).is_file() else None
    try:
        return passthrough_mode(setting)
    except ValueError:  # no sidecar (adopted files have one without settings) or an unknown value
        return "mode unknown"


def report(path: str | Path, fields: Fields = DEFAULT_FIELDS, decode_rate: bool = False,
           recipe: str | Path | None = None, decode_sample: int = 1000,
           remote: CacheSettings = CacheSettings()) -> str:
    """What ``inspect`` prints; raises ConversionError if the file is not a sound conversion. With
    ``decode_rate``, also the measured per-core decode rate (decode_rate: ``recipe``'s decoder against FFCV's).
    A remote dataset's stand-in reads its pages through the node cache ``remote`` describes."""
    path = Path(path)
    reader = open_beton(path, fields)
    count = int(reader.num_samples)
    label_values = label_range(path, reader, fields)
    names, source = class_names(path, label_values)
    counts = np.bincount(label_values, minlength=len(names))
    lines = [f"{path}: {count} records, fields {reader.field_names}",
             f"classes: {len(names)} ({source})", *histogram_lines(counts, names),
             *size_lines(reader, fields), *record_kind_lines(reader, fields), *index_lines(path, label_values),
             *class_mix_lines(label_values)]

    indices = spread_indices(count)
    full_size = [read_image(reader, index, fields) for index in indices]
    lines.append(f"decoded {len(full_size)} records at their stored size through FFCV's reader: "
                 + ", ".join(f"#{index} {image.shape[1]}x{image.shape[0]}" for index, image in zip(indices, full_size)))
    images, decoded_labels = decode_samples(reader, indices, fields, remote)
    if decoded_labels.tolist() != label_values[indices].tolist():
        raise ConversionError(f"{path}: labels read through FFCV's Loader differ from its metadata")
    lines.append(f"and through FFCV's Loader (centre {DECODE_SIDE} px), record: label, mean pixel:")
    lines.append("  " + "; ".join(f"#{index}: {names[label]}, {image.mean():.0f}"
                                  for index, label, image in zip(indices, decoded_labels, images)))
    if decode_rate:
        from ..decode_rate import measure_decode_rates

        lines.append(str(measure_decode_rates(path, recipe, decode_sample, fields=fields, remote=remote)))
    return "\n".join(lines)
