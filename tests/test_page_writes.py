"""Pages written at their offsets as soon as they are full (page_writes): the same file as FFCV's
stock allocator, a valid one when a higher page reaches the disk before a lower one, written past the
page cache where the file system allows it and through it where it does not."""
from __future__ import annotations

import ctypes
import errno
import mmap
import os
import time
from pathlib import Path

import numpy as np
import pytest
from ffcv.fields import IntField, RGBImageField
from ffcv.fields.basics import IntDecoder
from ffcv.fields.rgb_image import IMAGE_MODES as FFCV_IMAGE_MODES
from ffcv.fields.rgb_image import SimpleRGBImageDecoder
from ffcv.loader import Loader, OrderOption
from ffcv.types import ALLOC_TABLE_TYPE
from ffcv.writer import MIN_PAGE_SIZE, DatasetWriter
from PIL import Image

from ffcv_imagenet.convert import beton_writer
from ffcv_imagenet.beton_format import IMAGE_MODES, read_header
from ffcv_imagenet.convert.beton_writer import GuardedWriter, SourceImages
from ffcv_imagenet.convert.jpeg_passthrough import with_passthrough
from ffcv_imagenet.convert.page_writes import DIRECT_ALIGNMENT, PositionalAllocator, open_direct

PAGE_SIZE = MIN_PAGE_SIZE  # 2 MiB: a few dozen files fill several pages
CHUNK_SIZE = 5
HELD = 1  # the record that waits, in the first chunk, after record 0 has taken a page
PAGES_WRITTEN_MEANWHILE = 2
GATE_SECONDS = 120  # only reached if pages had to be written in turn (FFCV's stock allocator)


def photo(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    return np.clip(np.asarray(coarse) + rng.normal(0, 6, (height, width, 3)), 0, 255).astype(np.uint8)


def jpeg_samples(root: Path, count: int) -> list[tuple[str, int]]:
    """Baseline JPEGs of mixed sizes, some above the stored size: kept, re-encoded, resized, raw."""
    rng = np.random.default_rng(0)
    samples = []
    for k in range(count):
        height, width = (int(side) for side in rng.integers(120, 420, size=2))
        path = root / f"{k:03d}.jpg"
        Image.fromarray(photo(height, width, seed=k)).save(path, quality=90)
        samples.append((str(path), k % 3))
    return samples


def png_samples(root: Path, count: int, side: int) -> list[tuple[str, int]]:
    """PNGs of one size (FFCV's SimpleRGBImageDecoder reads them) whose raw records fill several pages."""
    samples = []
    for k in range(count):
        path = root / f"{k:03d}.png"
        Image.fromarray(photo(side, side, seed=k)).save(path)
        samples.append((str(path), k % 4))
    return samples


def source_images(samples: list[tuple[str, int]], failure_dir: Path, **field_settings: object) -> SourceImages:
    field = with_passthrough(RGBImageField(**field_settings))
    return SourceImages(samples, field, seed=0, failure_dir=str(failure_dir), passthrough=True)


def fields_of(dataset: SourceImages) -> dict:
    return {"image": dataset.field, "label": IntField()}


def test_plain_mode_table_is_ffcvs() -> None:
    assert dict(FFCV_IMAGE_MODES) == IMAGE_MODES


PROPORTION = {"write_mode": "proportion", "max_resolution": 256, "compress_probability": 0.5}


@pytest.fixture(scope="module")
def stock_file(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """JPEGs written in proportion mode (records kept as they are, re-encoded and stored raw, several pages)
    by FFCV's own DatasetWriter and allocator, one worker."""
    root = tmp_path_factory.mktemp("stock")
    (root / "src").mkdir()
    samples = jpeg_samples(root / "src", 60)
    stock = root / "stock.beton"
    dataset = source_images(samples, root, **PROPORTION)
    DatasetWriter(str(stock), fields_of(dataset), page_size=PAGE_SIZE, num_workers=1).from_indexed_dataset(
        dataset, chunksize=CHUNK_SIZE)
    assert os.path.getsize(stock) > 3 * PAGE_SIZE
    return {"samples": samples, "path": stock}


def write_ours(stock_file: dict, out: Path) -> SourceImages:
    dataset = source_images(stock_file["samples"], out.parent, **PROPORTION)
    GuardedWriter(out, fields_of(dataset), num_workers=1, page_size=PAGE_SIZE, progress_label=None
                  ).from_indexed_dataset(dataset, chunksize=CHUNK_SIZE)
    return dataset


def test_one_worker_writes_the_same_bytes_as_ffcvs_allocator(stock_file: dict, tmp_path: Path) -> None:
    dataset = write_ours(stock_file, tmp_path / "ours.beton")
    assert 0 < dataset.passed_through[:].count(True) < len(stock_file["samples"])  # both paths were taken
    assert (tmp_path / "ours.beton").read_bytes() == stock_file["path"].read_bytes()


def resident_pages(path: Path, start: int, end: int) -> int:
    """How many of the file's 4 KiB pages in [start, end) are in the page cache (mincore)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    length = end - start
    with open(path, "rb") as handle:
        address = libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, handle.fileno(), start)
        assert address not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            flags = (ctypes.c_ubyte * (length // mmap.PAGESIZE))()
            assert libc.mincore(address, length, flags) == 0, os.strerror(ctypes.get_errno())
        finally:
            libc.munmap(address, length)
    return sum(flag & 1 for flag in flags)


def test_pages_go_to_disk_past_the_page_cache(stock_file: dict, tmp_path: Path) -> None:
    """A write-once file as large as ImageNet must not push the source images out of the cache."""
    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    descriptor = open_direct(str(probe))
    if descriptor is None:
        pytest.skip(f"the file system under {tmp_path} does not offer O_DIRECT")
    os.close(descriptor)
    out = tmp_path / "ours.beton"
    write_ours(stock_file, out)
    header = read_header(out)
    first_page, table = PAGE_SIZE, int(header["alloc_table_ptr"])  # the data pages: from the first page to the table
    assert table >= 3 * PAGE_SIZE
    assert resident_pages(out, first_page, table) == 0
    assert out.read_bytes() == stock_file["path"].read_bytes()
    assert resident_pages(out, first_page, table) == (table - first_page) // mmap.PAGESIZE  # the check sees a read


class MisalignedAllocator(PositionalAllocator):
    """PositionalAllocator whose page buffer starts one byte past an O_DIRECT boundary, which the kernel refuses
    with EINVAL (as file systems without O_DIRECT support do): each page must still reach the file."""

    log: Path

    def __enter__(self) -> None:
        super().__enter__()
        self.page_data, self.spare_page = self.misaligned(), self.misaligned()  # both page buffers

    def misaligned(self) -> np.ndarray:
        padded = np.zeros(self.page_size + DIRECT_ALIGNMENT + 1, dtype="<u1")
        start = -padded.ctypes.data % DIRECT_ALIGNMENT + 1
        return padded[start:start + self.page_size]

    def write_page(self, page: np.ndarray, number: int) -> None:
        super().write_page(page, number)
        with open(self.log, "a") as handle:
            handle.write(f"{number} {'direct' if self.direct_fd is not None else 'cached'}\n")


def test_a_refused_direct_write_falls_back_to_the_cache_with_the_same_bytes(
        stock_file: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    MisalignedAllocator.log = tmp_path / "pages.log"
    monkeypatch.setattr(beton_writer, "PositionalAllocator", MisalignedAllocator)
    write_ours(stock_file, tmp_path / "ours.beton")
    pages = dict(line.split() for line in MisalignedAllocator.log.read_text().splitlines())
    assert len(pages) >= 2 and set(pages.values()) == {"cached"}, pages
    assert (tmp_path / "ours.beton").read_bytes() == stock_file["path"].read_bytes()


class LoggedAllocator(PositionalAllocator):
    """PositionalAllocator that appends the number of each page it writes to ``log``."""

    log: Path

    def write_page(self, page: np.ndarray, number: int) -> None:
        super().write_page(page, number)
        with open(self.log, "a") as handle:
            handle.write(f"{number}\n")


def pages_written(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()] if log.exists() else []


class HeldBack:
    """The source images, except that record HELD waits until the other process has written pages:
    the process holding record 0's page keeps it open while higher pages reach the file."""

    def __init__(self, images: SourceImages, log: Path):
        self.images, self.log = images, log

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple:
        deadline = time.monotonic() + GATE_SECONDS
        while index == HELD and len(pages_written(self.log)) < PAGES_WRITTEN_MEANWHILE:
            if time.monotonic() > deadline:
                raise TimeoutError("no page was written while a lower one was held")
            time.sleep(0.01)
        return self.images[index]


def test_pages_written_out_of_order_make_a_valid_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "src").mkdir()
    side = 256
    samples = png_samples(tmp_path / "src", 48, side)
    LoggedAllocator.log = tmp_path / "pages.log"
    monkeypatch.setattr(beton_writer, "PositionalAllocator", LoggedAllocator)
    images = source_images(samples, tmp_path, write_mode="raw", max_resolution=side)
    out = tmp_path / "out.beton"
    GuardedWriter(out, fields_of(images), num_workers=2, page_size=PAGE_SIZE, progress_label=None
                  ).from_indexed_dataset(HeldBack(images, LoggedAllocator.log), chunksize=CHUNK_SIZE)

    order = pages_written(LoggedAllocator.log)
    assert sorted(order) == list(range(len(order))) and len(order) > PAGES_WRITTEN_MEANWHILE
    assert order != sorted(order), f"pages were written in order: {order}"
    header = read_header(out)
    table_bytes = os.path.getsize(out) - int(header["alloc_table_ptr"])
    table = np.fromfile(out, dtype=ALLOC_TABLE_TYPE, offset=int(header["alloc_table_ptr"]))
    assert table_bytes == table.nbytes and len(table) == len(samples)
    assert int(header["alloc_table_ptr"]) % PAGE_SIZE == 0  # right after the last page
    assert (table["ptr"] + table["size"]).max() <= int(header["alloc_table_ptr"])

    loader = Loader(str(out), batch_size=len(samples), num_workers=1, order=OrderOption.SEQUENTIAL,
                    pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]})
    pixels, label_batch = next(iter(loader))
    assert np.asarray(label_batch[:, 0]).tolist() == [label for _, label in samples]
    for image, (path, _) in zip(np.asarray(pixels), samples):
        np.testing.assert_array_equal(image, np.asarray(Image.open(path).convert("RGB")))


class FullDiskAllocator(PositionalAllocator):
    """PositionalAllocator whose second page write fails as on a full disk, in the writing thread."""

    def write_page(self, page: np.ndarray, number: int) -> None:
        if number == 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super().write_page(page, number)


def test_a_failed_page_write_in_the_writing_thread_stops_the_write_with_its_reason(
        stock_file: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(beton_writer, "PositionalAllocator", FullDiskAllocator)
    with pytest.raises(beton_writer.WorkerFailed, match="No space left on device"):
        write_ours(stock_file, tmp_path / "ours.beton")
