"""ImageFolder tree -> FFCV ``.beton``: the one-time conversion.

Three stages, each over every core:
1. scan: class folders and candidate files (hidden files and non-image files are
   reported, never read as images);
2. check: a cheap structural probe per file (JPEG end-of-image marker, PNG
   chunk CRCs, a full decode for the rare other formats) so that truncated,
   empty and garbage files are skipped before any writing starts;
3. write: FFCV's DatasetWriter, whose workers decode each image once (JPEGs
   much larger than the target are decoded at a reduced DCT scale) and encode
   it. A file that still fails there is excluded and the write repeated, so
   nothing bad reaches the ``.beton``.

The ``.beton`` is written under a temporary name and renamed when complete.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path
from typing import Sequence

import numpy as np
from ffcv.fields import IntField, RGBImageField
from ffcv.writer import DatasetWriter
from PIL import Image
from tqdm import tqdm

from .fileio import atomic_path, atomic_write_text, check_writable_dir

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff", ".gif")
WRITE_MODES = ("raw", "jpg", "proportion", "smart")
JPEG_EOI = b"\xff\xd9"
JPEG_TAIL_BYTES = 4096  # some cameras append bytes after the end-of-image marker
WHITE = (255, 255, 255)  # transparent pixels are composited over white


class ConversionError(RuntimeError):
    """A problem with the input or output, reported to the user as one line."""


@dataclass
class ConversionSettings:
    write_mode: str = "proportion"
    max_resolution: int = 500
    compress_probability: float = 0.5
    jpeg_quality: int = 90
    num_workers: int = 0  # 0 = all cores
    chunk_size: int = 100
    max_per_class: int = 0  # 0 = no cap
    subset: int = 0  # 0 = every image; else a fixed-seed random subset of this many
    seed: int = 0

    def __post_init__(self) -> None:
        if self.write_mode not in WRITE_MODES:
            raise ConversionError(f"write mode must be one of {', '.join(WRITE_MODES)}: {self.write_mode!r}")
        if self.max_resolution <= 0:
            raise ConversionError(f"max resolution must be positive: {self.max_resolution}")
        if not 0.0 <= self.compress_probability <= 1.0:
            raise ConversionError(f"compress probability must be in [0, 1]: {self.compress_probability}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConversionError(f"JPEG quality must be in [1, 100]: {self.jpeg_quality}")
        for name in ("num_workers", "max_per_class", "subset"):
            if getattr(self, name) < 0:
                raise ConversionError(f"{name.replace('_', ' ')} must not be negative: {getattr(self, name)}")
        if self.chunk_size <= 0:
            raise ConversionError(f"chunk size must be positive: {self.chunk_size}")

    @property
    def workers(self) -> int:
        return self.num_workers or os.cpu_count() or 1


@dataclass
class ConversionSummary:
    output: Path
    images: int
    classes: int
    skipped: int
    bytes_per_image: float
    images_per_second: float

    def __str__(self) -> str:
        return (f"wrote {self.images} images of {self.classes} classes to {self.output} "
                f"({self.skipped} skipped, {self.bytes_per_image / 1024:.1f} KiB/image, "
                f"{self.images_per_second:.0f} img/s)")


Sample = tuple[str, int]  # (path, label)
Skipped = tuple[str, str]  # (path, reason)


def sidecar_path(beton: str | Path) -> Path:
    beton = Path(beton)
    return beton.with_name(beton.name + ".json")


def skipped_report_path(beton: str | Path) -> Path:
    beton = Path(beton)
    return beton.with_name(beton.name + ".skipped")


def load_sidecar(beton_or_json: str | Path) -> dict:
    path = Path(beton_or_json)
    if path.suffix != ".json":
        path = sidecar_path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConversionError(f"{path} is missing: convert with write_datasets.py, which writes it beside the .beton") from None
    except (OSError, json.JSONDecodeError) as err:
        raise ConversionError(f"{path} is unreadable: {err}") from None


def load_class_names(beton_or_json: str | Path) -> list[str]:
    """Index -> class folder name, as recorded when the ``.beton`` was written."""
    return list(load_sidecar(beton_or_json)["classes"])


# ---------------------------------------------------------------- scan
def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def find_class_folders(root: Path) -> list[str]:
    if not root.is_dir():
        raise ConversionError(f"image root {root} does not exist or is not a folder")
    classes = sorted(entry.name for entry in os.scandir(root)
                     if entry.is_dir() and not _is_hidden(entry.name))
    if not classes:
        raise ConversionError(f"image root {root} has no class folders (expected {root}/<class>/<image>)")
    return classes


def scan_class(folder: Path, label: int) -> tuple[list[Sample], list[Skipped]]:
    """Candidate images under one class folder (recursively, links followed)."""
    samples: list[Sample] = []
    skipped: list[Skipped] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if _is_hidden(name):
                skipped.append((path, "hidden file"))
            elif not name.lower().endswith(IMAGE_EXTENSIONS):
                skipped.append((path, "not an image file extension"))
            elif not os.path.exists(path):
                skipped.append((path, "broken symbolic link"))
            else:
                samples.append((path, label))
    return samples, skipped


def scan_imagefolder(root: Path, classes: Sequence[str]) -> tuple[list[Sample], list[Skipped]]:
    samples: list[Sample] = []
    skipped: list[Skipped] = []
    for label, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            continue  # a val tree may lack some of train's classes
        found, rejected = scan_class(folder, label)
        samples += found
        skipped += rejected
    return samples, skipped


# ---------------------------------------------------------------- check
def _jpeg_is_complete(path: str) -> bool:
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - JPEG_TAIL_BYTES))
        return JPEG_EOI in handle.read()


def probe(path: str) -> str | None:
    """Why ``path`` cannot be converted, or None. Cheap: no full JPEG/PNG decode."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        with Image.open(path) as image:
            width, height = image.size
            kind = image.format
            if kind == "PNG":
                image.verify()  # every chunk's CRC: catches truncation and bit rot
            elif kind != "JPEG":
                image.load()
        if kind == "JPEG" and not _jpeg_is_complete(path):
            return "truncated JPEG (no end-of-image marker)"
        if width < 1 or height < 1:
            return f"degenerate size {width}x{height}"
    except Exception as err:  # PIL raises many types for garbage input
        return f"unreadable image: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")
    return None


def check_samples(samples: list[Sample], workers: int, progress: bool) -> tuple[list[Sample], list[Skipped]]:
    paths = [path for path, _ in samples]
    with Pool(workers) as pool:
        reasons = list(tqdm(pool.imap(probe, paths, chunksize=64), total=len(paths), desc="check",
                            unit="img", disable=not progress))
    good = [sample for sample, reason in zip(samples, reasons) if reason is None]
    bad = [(sample[0], reason) for sample, reason in zip(samples, reasons) if reason is not None]
    return good, bad


# ---------------------------------------------------------------- decode
def _draft_size(width: int, height: int, max_resolution: int) -> tuple[int, int]:
    """Smallest size the DCT downscale may reach while the longest side stays >= max_resolution."""
    scale = min(1.0, max_resolution / max(width, height))
    return max(1, int(np.ceil(width * scale))), max(1, int(np.ceil(height * scale)))


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> HxWx3 uint8 RGB (16-bit scaled down, alpha over white)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grey: PIL's convert would clip at 255 instead of scaling
        wide = np.asarray(image, dtype=np.uint32)
        peak = 65535 if wide.max() > 255 else 255
        grey = (wide * 255 // peak).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        image = image.convert("RGBA")
        background = Image.new("RGB", image.size, WHITE)
        background.paste(image, mask=image.getchannel("A"))
        image = background
    return np.ascontiguousarray(np.asarray(image.convert("RGB")))


def load_rgb(path: str, max_resolution: int) -> np.ndarray:
    with Image.open(path) as image:
        if image.format == "JPEG":
            image.draft("RGB", _draft_size(*image.size, max_resolution))
        return to_rgb_array(image)


class ImageFiles:
    """The indexed dataset DatasetWriter's workers read: (RGB array, label).

    A worker that raises makes DatasetWriter wait forever, so a file that fails
    here is recorded in ``failure_dir`` and stands in as one black pixel; the
    caller then rewrites without it.
    """

    def __init__(self, samples: list[Sample], max_resolution: int, failure_dir: str):
        self.samples = samples
        self.max_resolution = max_resolution
        self.failure_dir = failure_dir

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        path, label = self.samples[index]
        try:
            return load_rgb(path, self.max_resolution), label
        except Exception as err:
            Path(self.failure_dir, str(index)).write_text(f"{type(err).__name__}: {err}")
            return np.zeros((1, 1, 3), dtype=np.uint8), label


# ---------------------------------------------------------------- write
def select_samples(samples: list[Sample], settings: ConversionSettings) -> list[Sample]:
    """Per-class cap (first files in name order), then a fixed-seed random subset."""
    if settings.max_per_class:
        kept: dict[int, int] = {}
        capped = []
        for path, label in samples:
            if kept.get(label, 0) < settings.max_per_class:
                kept[label] = kept.get(label, 0) + 1
                capped.append((path, label))
        samples = capped
    if settings.subset and settings.subset < len(samples):
        chosen = np.random.default_rng(settings.seed).choice(len(samples), settings.subset, replace=False)
        samples = [samples[i] for i in sorted(chosen)]
    return samples


def image_field(settings: ConversionSettings) -> RGBImageField:
    return RGBImageField(write_mode=settings.write_mode, max_resolution=settings.max_resolution,
                         compress_probability=settings.compress_probability,
                         jpeg_quality=settings.jpeg_quality)


def write_beton(samples: list[Sample], out_path: Path, settings: ConversionSettings) -> tuple[list[Sample], list[Skipped]]:
    """Write until no sample fails in the workers; returns (written, failed)."""
    failed: list[Skipped] = []
    while True:
        with tempfile.TemporaryDirectory(prefix="ffcv-imagenet-failures-") as failure_dir:
            dataset = ImageFiles(samples, settings.max_resolution, failure_dir)
            writer = DatasetWriter(str(out_path), {"image": image_field(settings), "label": IntField()},
                                   num_workers=min(settings.workers, max(1, len(samples))))
            # DatasetWriter draws its own tqdm bar: count, rate and ETA.
            writer.from_indexed_dataset(dataset, chunksize=settings.chunk_size)
            bad = {int(name): Path(failure_dir, name).read_text() for name in os.listdir(failure_dir)}
        if not bad:
            return samples, failed
        failed += [(samples[i][0], f"decode failed: {reason}") for i, reason in sorted(bad.items())]
        samples = [sample for i, sample in enumerate(samples) if i not in bad]
        if not samples:
            return samples, failed


def _classes_for(root: Path, class_map: Path | None) -> list[str]:
    folders = find_class_folders(root)
    if class_map is None:
        return folders
    classes = load_class_names(class_map)
    unknown = sorted(set(folders) - set(classes))
    if unknown:
        raise ConversionError(f"{root} has {len(unknown)} class folder(s) not in {class_map}'s class list, "
                              f"e.g. {unknown[0]!r}: convert val with the class map of its own train set")
    return classes


def _require_images_per_class(root: Path, samples: list[Sample], classes: Sequence[str]) -> None:
    labels_present = {label for _, label in samples}
    for label, name in enumerate(classes):
        if (root / name).is_dir() and label not in labels_present:
            raise ConversionError(f"class folder {root / name} holds no readable image")


def convert_imagefolder(root: str | Path, out_path: str | Path,
                        settings: ConversionSettings = ConversionSettings(), *,
                        class_map: str | Path | None = None, progress: bool = True) -> ConversionSummary:
    """Convert ``root/<class>/<image>`` into ``out_path`` (+ sidecar JSON and skipped report)."""
    root, out_path = Path(root), Path(out_path)
    started = time.perf_counter()
    check_writable_dir(out_path.parent)
    classes = _classes_for(root, Path(class_map) if class_map else None)
    candidates, skipped = scan_imagefolder(root, classes)
    _require_images_per_class(root, candidates, classes)  # fail before the per-file check
    good, unreadable = check_samples(candidates, settings.workers, progress)
    skipped += unreadable
    _require_images_per_class(root, good, classes)
    selected = select_samples(good, settings)

    with atomic_path(out_path) as tmp:
        written, failed = write_beton(selected, tmp, settings)
        if not written:
            raise ConversionError(f"no image of {root} could be decoded")
    skipped += failed

    seconds = time.perf_counter() - started
    summary = ConversionSummary(output=out_path, images=len(written), classes=len(classes),
                                skipped=len(skipped),
                                bytes_per_image=out_path.stat().st_size / len(written),
                                images_per_second=len(written) / seconds)
    _write_reports(out_path, root, classes, settings, summary, skipped)
    return summary


def _write_reports(out_path: Path, root: Path, classes: list[str], settings: ConversionSettings,
                   summary: ConversionSummary, skipped: list[Skipped]) -> None:
    sidecar = {
        "classes": classes,
        "num_images": summary.images,
        "num_skipped": summary.skipped,
        "source_root": str(root.resolve()),
        "fields": {"image": "RGBImageField", "label": "IntField"},
        "settings": dataclasses.asdict(settings),
    }
    atomic_write_text(sidecar_path(out_path), json.dumps(sidecar, indent=1) + "\n")
    atomic_write_text(skipped_report_path(out_path),
                      "".join(f"{path}\t{reason}\n" for path, reason in skipped))
