"""ImageFolder tree -> FFCV ``.beton``: the one-time conversion.

1. classes: the class folders of ``root`` (sorted), or the class list of a train
   conversion that a val conversion must follow;
2. scan: candidate files per class (hidden and non-image files are reported);
3. check and select: a cheap probe per file, in parallel, only as many files as
   the selection needs (a per-class cap or a seeded subset probes just those);
4. order: a train set's records in a seeded random permutation, so that every
   FFCV page holds many classes (a quasi-random batch draws from a few pages);
   a val set (converted with a class map) in folder order;
5. write: FFCV's DatasetWriter, every core decoding each image once (or, for a
   JPEG that needs no work and costs no decode time, keeping its bytes: jpeg_passthrough), under a
   temporary name renamed when complete; then the sidecar JSON (class list,
   counts, settings), the ``.index`` (source and label of every record, in
   record order) and the ``.skipped`` report beside it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from ..beton_format import (DECODED, KEPT, ConversionError, index_path, load_class_names,  # noqa: F401
                           read_index, sidecar_path, skipped_report_path)
from ..fileio import atomic_path, atomic_write_text, check_writable_dir
from .image_files import Sample, Skipped, is_hidden, probe, scan_class
from .jpeg_passthrough import AUTO, passthrough_mode

if TYPE_CHECKING:
    from ffcv.fields import RGBImageField

# FFCV is imported where records are read or written, not here: importing it pulls in
# torch and numba (about 4 s), and bad input should fail in a fraction of that.

WRITE_MODES = ("raw", "jpg", "proportion", "smart", "yuv420")  # yuv420: every record raw, as YUV 4:2:0
RAW_FORMATS = ("rgb", "yuv420")  # how raw records store pixels (yuv420_records.RAW_FORMATS, without importing FFCV)
SHUFFLED, FOLDER, BY_ROLE = "shuffled", "folder", "auto"
RECORD_ORDERS = (SHUFFLED, FOLDER)
ORDER_STREAM = 1  # the record order's random stream: apart from the subset's, same seed
MAX_RESOLUTION_LIMIT = 8192  # a raw record of this side fills a 256 MiB page per worker
PROBE_CHUNKS_PER_WORKER = 4
KIB = 1024


@dataclass(frozen=True)
class ConversionSettings:
    """How images are stored; defaults are ffcv-imagenet's ResNet-50 data."""

    write_mode: str = "proportion"  # raw | jpg | proportion | smart (FFCV RGBImageField modes) | yuv420
    max_resolution: int = 500  # longest stored side
    compress_probability: float = 0.5  # proportion mode: share stored as JPEG
    jpeg_quality: int = 90
    num_workers: int = 0  # 0 = all cores
    chunk_size: int = 100  # images per work unit
    max_per_class: int = 0  # 0 = no cap; else the first N readable images (name order) per class
    subset: int = 0  # 0 = all; else a fixed-seed random subset of this many images
    seed: int = 0  # of the subset and of proportion mode's JPEG-or-raw choice per image
    smart_threshold: int = 0  # smart mode: store as JPEG when the raw RGB record exceeds this many bytes
    record_order: str = BY_ROLE  # shuffled | folder | auto: shuffled for a train set, folder with a class map
    # auto: keep a source JPEG's bytes when it needs no work and decodes no slower than its re-encode;
    # always: whenever it needs no work; never: ffcv-imagenet's records (True/False: always/never)
    jpeg_passthrough: str = AUTO
    raw_format: str = "rgb"  # rgb (FFCV's raw, any FFCV reader opens the file) | yuv420 (yuv420_records)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "jpeg_passthrough", passthrough_mode(self.jpeg_passthrough))
        except ValueError as err:
            raise ConversionError(str(err)) from None
        if self.write_mode not in WRITE_MODES:
            raise ConversionError(f"write mode must be one of {', '.join(WRITE_MODES)}: {self.write_mode!r}")
        if self.raw_format not in RAW_FORMATS:
            raise ConversionError(f"raw format must be one of {', '.join(RAW_FORMATS)}: {self.raw_format!r}")
        if not 1 <= self.max_resolution <= MAX_RESOLUTION_LIMIT:
            raise ConversionError(f"max resolution must be in [1, {MAX_RESOLUTION_LIMIT}]: {self.max_resolution}")
        if not 0.0 <= self.compress_probability <= 1.0:
            raise ConversionError(f"compress probability must be in [0, 1]: {self.compress_probability}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConversionError(f"JPEG quality must be in [1, 100]: {self.jpeg_quality}")
        for name in ("num_workers", "max_per_class", "subset", "seed", "smart_threshold"):
            if getattr(self, name) < 0:
                raise ConversionError(f"{name.replace('_', ' ')} must not be negative: {getattr(self, name)}")
        if self.record_order not in (*RECORD_ORDERS, BY_ROLE):
            raise ConversionError(f"record order must be one of {', '.join(RECORD_ORDERS)}: {self.record_order!r}")
        if self.chunk_size <= 0:
            raise ConversionError(f"chunk size must be positive: {self.chunk_size}")
        if self.write_mode == "smart" and not self.smart_threshold:
            # FFCV's smart mode without a threshold silently stores everything raw
            raise ConversionError("write mode smart needs a smart threshold (raw bytes above which a record "
                                  "is stored as JPEG), e.g. 250000")

    def resolved(self, has_class_map: bool) -> ConversionSettings:
        """These settings with ``auto`` order decided: a set that follows a train set's class map is val."""
        if self.record_order != BY_ROLE:
            return self
        return dataclasses.replace(self, record_order=FOLDER if has_class_map else SHUFFLED)

    @property
    def workers(self) -> int:
        return self.num_workers or os.cpu_count() or 1

    @property
    def stores_yuv420(self) -> bool:
        """Whether raw records are YUV 4:2:0: the file is then ours alone (FFCV's reader refuses it)."""
        return self.write_mode == "yuv420" or (self.raw_format == "yuv420" and self.write_mode != "jpg")

    def image_field(self) -> RGBImageField:
        from ffcv.fields import RGBImageField

        options = dict(max_resolution=self.max_resolution, smart_threshold=self.smart_threshold or None,
                       jpeg_quality=self.jpeg_quality, compress_probability=self.compress_probability)
        if not self.stores_yuv420:
            return RGBImageField(write_mode=self.write_mode, **options)
        from ..yuv420_records import YUV420ImageField

        return YUV420ImageField(write_mode="raw" if self.write_mode == "yuv420" else self.write_mode, **options)


@dataclass
class ConversionSummary:
    output: Path
    images: int
    classes: int
    skipped: int
    passed_through: int  # JPEG records that are their source file's bytes
    bytes_per_image: float  # record data per image (what a loader reads), page padding excluded
    images_per_second: float  # images written / seconds of the whole conversion
    seconds: float

    def __str__(self) -> str:
        return (f"wrote {self.images} images of {self.classes} classes to {self.output} in {self.seconds:.1f} s "
                f"({self.images_per_second:.0f} img/s); {self.passed_through} JPEGs kept as they are; "
                f"{self.skipped} skipped "
                f"(listed in {skipped_report_path(self.output).name}); "
                f"{self.bytes_per_image / KIB:.1f} KiB per image")


# ---------------------------------------------------------------- classes and candidates
def find_class_folders(root: Path) -> list[str]:
    if not root.is_dir():
        raise ConversionError(f"image root {root} does not exist or is not a folder")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not is_hidden(entry.name))
    if not classes:
        raise ConversionError(f"image root {root} has no class folders (expected {root}/<class>/<image>)")
    return classes


def classes_for(root: Path, class_map: Path | None) -> list[str]:
    """``root``'s class folders, or the class map's list when given (which must cover every folder)."""
    folders = find_class_folders(root)
    if class_map is None:
        return folders
    classes = load_class_names(class_map)
    require_known_classes(root, folders, classes, str(class_map))
    return classes


def require_known_classes(root: Path, folders: Sequence[str], known: Sequence[str], known_from: str) -> None:
    """A val tree may lack some of train's classes, never have one of its own."""
    unknown = sorted(set(folders) - set(known))
    if unknown:
        raise ConversionError(f"{root} has {len(unknown)} class folder(s) that {known_from} lacks, e.g. "
                              f"{unknown[0]!r}: convert val with the class map of its own train set")


def scan_imagefolder(root: Path, classes: Sequence[str]) -> tuple[list[list[Sample]], list[Skipped]]:
    """Candidates per class index (empty for a class folder that is absent, as val may be)."""
    by_class: list[list[Sample]] = []
    skipped: list[Skipped] = []
    for label, name in enumerate(classes):
        folder = root / name
        found, rejected = scan_class(folder, label) if folder.is_dir() else ([], [])
        if folder.is_dir() and not found:
            raise ConversionError(f"class folder {folder} holds no image file")
        by_class.append(found)
        skipped += rejected
    return by_class, skipped


# ---------------------------------------------------------------- check and select
class Prober:
    """Probes files in parallel, each at most once, and no more of them than a selection needs."""

    def __init__(self, probe_many: Callable[[list[str]], list[str | None]], bar: tqdm):
        self.probe_many = probe_many
        self.bar = bar
        self.reasons: dict[str, str | None] = {}

    def first_good(self, samples: Sequence[Sample], wanted: int) -> list[Sample]:
        """The first ``wanted`` samples (in the given order) that pass ``probe``."""
        good: list[Sample] = []
        start = 0
        while len(good) < wanted and start < len(samples):
            batch = samples[start:start + wanted - len(good)]
            start += len(batch)
            todo = [path for path, _ in batch if path not in self.reasons]
            self.reasons.update(zip(todo, self.probe_many(todo)))
            self.bar.update(len(todo))
            good += [sample for sample in batch if self.reasons[sample[0]] is None]
        return good

    @property
    def skipped(self) -> list[Skipped]:
        return [(path, reason) for path, reason in self.reasons.items() if reason is not None]


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle


@contextmanager
def probe_pool(workers: int) -> Iterator[Callable[[list[str]], list[str | None]]]:
    with Pool(workers, initializer=_ignore_sigint) as pool:
        def probe_many(paths: list[str]) -> list[str | None]:
            chunk = max(1, len(paths) // (PROBE_CHUNKS_PER_WORKER * workers))
            return pool.map(probe, paths, chunksize=chunk) if paths else []
        yield probe_many


def select_samples(root: Path, classes: Sequence[str], by_class: list[list[Sample]],
                   settings: ConversionSettings, prober: Prober) -> list[Sample]:
    """Readable samples in (class, name) order: all, the first ``max_per_class`` of each class,
    and/or a ``subset`` drawn with ``seed``. Fails if a class folder has no readable image."""
    for label, group in enumerate(by_class):
        if group and not prober.first_good(group, 1):
            raise ConversionError(f"class folder {root / classes[label]} holds no readable image")
    everything = [sample for group in by_class for sample in group]
    rng = np.random.default_rng(settings.seed)
    if settings.subset and not settings.max_per_class:
        # probe in a seeded random order until enough are good: a 10k subset of
        # ImageNet reads about 10k files, not 1.28M
        order = [everything[i] for i in rng.permutation(len(everything))]
        chosen = set(prober.first_good(order, settings.subset))
        return [sample for sample in everything if sample in chosen]
    samples = [sample for group in by_class
               for sample in prober.first_good(group, settings.max_per_class or len(group))]
    if settings.subset and settings.subset < len(samples):
        samples = [samples[i] for i in sorted(rng.choice(len(samples), settings.subset, replace=False))]
    return samples


def _probes_expected(by_class: list[list[Sample]], settings: ConversionSettings) -> int | None:
    """Every candidate is probed unless a selection stops early (then the total is unknown)."""
    return None if settings.max_per_class or settings.subset else sum(map(len, by_class))


# ---------------------------------------------------------------- convert
def check_output(out_path: Path) -> None:
    """Fail before any work if ``out_path`` could not be written at the end."""
    if out_path.is_dir():
        raise ConversionError(f"output {out_path} is a folder; name the .beton file to write")
    check_writable_dir(out_path.parent)


def convert_imagefolder(root: str | Path, out_path: str | Path,
                        settings: ConversionSettings = ConversionSettings(), *,
                        class_map: str | Path | None = None, progress: bool = True) -> ConversionSummary:
    """Convert ``root/<class>/<image>`` into ``out_path``, plus ``<out>.json`` (class list, counts,
    settings) and ``<out>.skipped`` (files left out, with reasons). ``class_map`` names the train
    ``.beton`` (or its sidecar) whose class indices a val conversion must use."""
    root, out_path = Path(root), Path(out_path)
    settings = settings.resolved(has_class_map=class_map is not None)
    started = time.perf_counter()
    classes = classes_for(root, Path(class_map) if class_map else None)
    check_output(out_path)
    by_class, skipped = scan_imagefolder(root, classes)
    with probe_pool(settings.workers) as probe_many, \
            tqdm(desc="check", unit="img", total=_probes_expected(by_class, settings), disable=not progress,
                 dynamic_ncols=True) as bar:
        prober = Prober(probe_many, bar)
        selected = in_record_order(select_samples(root, classes, by_class, settings, prober), settings)
    skipped += prober.skipped

    importing = time.perf_counter()
    from ..beton_format import stored_bytes
    from .beton_writer import WorkerFailed, write_records  # FFCV: only now there is work

    started += time.perf_counter() - importing  # a one-time cost of the process, not of this conversion

    with atomic_path(out_path) as tmp:
        try:
            written = write_records(selected, tmp, settings.image_field(), workers=settings.workers,
                                    chunk_size=settings.chunk_size, seed=settings.seed,
                                    passthrough=settings.jpeg_passthrough,
                                    progress_label=f"write {out_path.name}" if progress else None)
        except WorkerFailed as err:
            raise ConversionError(f"writing {out_path} failed: {err}") from None
        if not written.samples:
            raise ConversionError(f"no image of {root} could be decoded")
        data_bytes = stored_bytes(tmp)
    skipped += written.failed

    seconds = time.perf_counter() - started
    images = len(written.samples)
    summary = ConversionSummary(output=out_path, images=images, classes=len(classes), skipped=len(skipped),
                                passed_through=int(written.passed_through.sum()),
                                bytes_per_image=data_bytes / images, images_per_second=images / seconds,
                                seconds=seconds)
    write_reports(out_path, root, classes, settings, written.samples, written.passed_through, skipped)
    return summary


def in_record_order(samples: list[Sample], settings: ConversionSettings) -> list[Sample]:
    """Folder order as selected, or a permutation seeded by ``settings.seed``: pages of many classes."""
    if settings.record_order == FOLDER:
        return samples
    permutation = np.random.default_rng([settings.seed, ORDER_STREAM]).permutation(len(samples))
    return [samples[i] for i in permutation]




def write_reports(out_path: Path, root: Path, classes: list[str], settings: ConversionSettings,
                  written: list[Sample], passed_through: np.ndarray, skipped: list[Skipped]) -> None:
    counts = np.bincount([label for _, label in written], minlength=len(classes))
    sidecar = {
        "classes": classes,
        "num_images": len(written),
        "images_per_class": counts.tolist(),
        "num_skipped": len(skipped),
        "source_root": str(root.resolve()),
        "fields": {"image": "YUV420ImageField" if settings.stores_yuv420 else "RGBImageField", "label": "IntField"},
        "settings": dataclasses.asdict(settings),
        "record_order": settings.record_order,
        "num_passed_through": int(passed_through.sum()),
        "index": index_path(out_path).name,
    }
    atomic_write_text(index_path(out_path), "".join(f"{path}\t{label}\t{KEPT if kept else DECODED}\n"
                                                    for (path, label), kept in zip(written, passed_through)))
    atomic_write_text(sidecar_path(out_path), json.dumps(sidecar, indent=1) + "\n")
    atomic_write_text(skipped_report_path(out_path),
                      "".join(f"{path}\t{reason}\n" for path, reason in sorted(skipped)))
