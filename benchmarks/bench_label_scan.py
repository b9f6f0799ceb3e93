"""The class count of a .beton without our sidecar, from its labels: what preflight reads for ImageNet.

FFCV keeps an IntField's values in the file's metadata table, so the labels of every record
are read without touching an image. ImageNet's train set (1,281,167 records) is built here as
a synthetic file: the header and field descriptors of a real FFCV file (fields ``image``,
``label``, as ffcv-imagenet writes them), that many metadata rows with ImageNet's 1,000 classes,
and an allocation table of that many entries (the Reader reads it too), but no image data:
what is timed never reads it. Side by side: preflight's whole dataset check (open, label range,
class names) on that file, against the same with a sidecar (our files, or an adopted one).

    python benchmarks/bench_label_scan.py [--records 1281167] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ffcv_imagenet.beton_format import JPEG_MODE, class_names, label_range, open_beton, read_header, sidecar_path

IMAGENET_RECORDS, IMAGENET_CLASSES = 1_281_167, 1000


def tiny_ffcv_file(folder: Path) -> Path:
    """One record written by FFCV's own DatasetWriter: the header and descriptors to copy."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    path = folder / "tiny.ffcv"
    image = np.asarray(Image.new("RGB", (8, 8)))
    writer = DatasetWriter(str(path), {"image": RGBImageField(), "label": IntField()}, num_workers=1)
    writer.from_indexed_dataset([(image, 0)])
    return path


def synthetic_file(template: Path, out: Path, records: int) -> Path:
    """``template``'s header and fields, ``records`` metadata rows and allocation entries, no image bytes."""
    from ffcv.reader import Reader
    from ffcv.types import ALLOC_TABLE_TYPE, HeaderType

    reader = Reader(str(template))
    rng = np.random.default_rng(0)
    metadata = np.zeros(records, dtype=reader.metadata_type)
    metadata["f1"] = rng.integers(0, IMAGENET_CLASSES, records)
    metadata["f0"]["mode"], metadata["f0"]["height"], metadata["f0"]["width"] = JPEG_MODE, 375, 500
    table = np.zeros(records, dtype=ALLOC_TABLE_TYPE)
    table["sample_id"] = np.arange(records)
    descriptors_end = HeaderType.itemsize + reader.field_descriptors.nbytes
    header = read_header(template).copy()
    header["num_samples"] = records
    header["alloc_table_ptr"] = descriptors_end + metadata.nbytes
    with open(out, "wb") as handle:
        handle.write(header.tobytes())
        handle.write(reader.field_descriptors.tobytes())
        handle.write(metadata.tobytes())
        handle.write(table.tobytes())
    return out


def dataset_check_seconds(path: Path) -> float:
    started = time.perf_counter()
    label_values = label_range(path, open_beton(path))
    names, _ = class_names(path, label_values)
    assert len(names) == IMAGENET_CLASSES
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=IMAGENET_RECORDS)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        bare = synthetic_file(tiny_ffcv_file(Path(folder)), Path(folder) / "train_500_0.50_90.ffcv", args.records)
        adopted = Path(folder) / "adopted.ffcv"
        adopted.hardlink_to(bare)
        sidecar_path(adopted).write_text(json.dumps({"classes": [f"n{i:08d}" for i in range(IMAGENET_CLASSES)],
                                                     "num_images": args.records}))
        timings: dict[str, list[float]] = {"labels": [], "sidecar": []}
        for _ in range(args.repeats):  # alternated, so both see the same page cache and load
            timings["labels"].append(dataset_check_seconds(bare))
            timings["sidecar"].append(dataset_check_seconds(adopted))
        print(f"{args.records} records, file of {bare.stat().st_size / 2 ** 20:.0f} MiB (metadata and "
              "allocation table only)")
        labels_s, sidecar_s = (statistics.median(timings[kind]) for kind in ("labels", "sidecar"))
        print(f"dataset check, classes from the labels: {labels_s:.3f} s; with a sidecar: {sidecar_s:.3f} s; "
              f"ratio {labels_s / sidecar_s:.2f}x (median of {args.repeats})")


if __name__ == "__main__":
    main()
