"""FFCV's DatasetWriter made safe to run on dirty folders and to stop with Ctrl-C.

Stock DatasetWriter waits forever when a worker raises or dies (its main loop
polls a counter that never reaches the total, the other workers spin waiting
for the dead one's page), leaves its shared memory behind when interrupted,
and draws a bar that cannot be turned off. ``GuardedWriter`` keeps FFCV's
file format and worker code and changes the supervision around them, plus two
costs of its writer processes that ours need not pay: pages are written at their
offsets as soon as they are full instead of in turn (page_writes), and the write
mode is looked up in a plain dict, not FFCV's numba one (compiled anew in every process).
"""
from __future__ import annotations

import ctypes
import os
import queue
import signal
import tempfile
import time
from dataclasses import dataclass
from multiprocessing import Process, Queue, Value
from multiprocessing.sharedctypes import RawArray
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
from ffcv.fields import IntField, RGBImageField, rgb_image
from ffcv.fields.base import Field
from ffcv.writer import MIN_PAGE_SIZE, DatasetWriter
from tqdm import tqdm

from ..beton_format import IMAGE_MODES
from .image_files import Sample, Skipped, load_rgb
from .jpeg_passthrough import (NEVER, SourceJpeg, chooses_jpeg, decodes_cleanly, may_store_as_jpeg,
                               passthrough_candidate, passthrough_mode, with_passthrough)
from .page_writes import PositionalAllocator

POLL_SECONDS = 0.1
DEFAULT_PAGE_SIZE = 4 * MIN_PAGE_SIZE  # DatasetWriter's own default
RGB_CHANNELS = 3
PLACEHOLDER = np.zeros((1, 1, RGB_CHANNELS), dtype=np.uint8)


class WorkerFailed(RuntimeError):
    """A writer process raised or was killed; the message says why."""


class SourceImages:
    """What DatasetWriter's workers index: (RGB array or SourceJpeg, label) for each selected file.

    A worker that raises would stop the whole write, so a file that fails to
    decode here (rare: ``probe`` rejected the usual suspects) is recorded in
    ``failure_dir`` and stands in as one pixel; the caller rewrites without it.
    With ``field`` able to pass JPEGs through, a file that qualifies under the
    ``passthrough`` mode (see jpeg_passthrough) is handed over as its own bytes and flagged in ``passed_through``,
    an array in shared memory that the writer processes fill in.
    """

    def __init__(self, samples: list[Sample], field: RGBImageField, seed: int, failure_dir: str,
                 passthrough: str | bool):
        self.samples = samples
        self.field = field
        self.seed = seed
        self.failure_dir = failure_dir
        self.mode = passthrough_mode(passthrough)
        self.passthrough = self.mode != NEVER and may_store_as_jpeg(field)
        self.passed_through = RawArray(ctypes.c_bool, len(samples))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray | SourceJpeg, int]:
        # RGBImageField.encode draws np.random.rand() right after this call, in this
        # process, to store the record as JPEG or raw: seeding here makes that choice
        # a function of (seed, index) instead of which worker got which chunk.
        draw_seed = [self.seed, index]
        np.random.seed(draw_seed)
        path, label = self.samples[index]
        try:
            with open(path, "rb") as handle:
                data = handle.read()  # once: the pass-through tests and the decode share it
            as_jpeg = stored_as_jpeg(self.field, draw_seed)  # smart mode: decided by the size, below
            if self.passthrough and (as_jpeg or self.field.write_mode == "smart"):
                # the cheap tests first: a record drawn as raw is decoded anyway
                source = passthrough_candidate(data, self.field.max_resolution, self.mode, self.field.jpeg_quality)
                if (source is not None and (as_jpeg or chooses_jpeg(self.field, source.width, source.height, draw_seed))
                        and decodes_cleanly(source)):
                    self.passed_through[index] = True
                    return source, label
            return load_rgb(data, self.field.max_resolution, exact=not as_jpeg), label
        except Exception as err:
            Path(self.failure_dir, str(index)).write_text(f"{type(err).__name__}: {err}")
            return PLACEHOLDER, label


def stored_as_jpeg(field: RGBImageField, draw_seed: list[int]) -> bool:
    """Whether ``field.encode`` stores the record as JPEG whatever its size (``jpg`` mode, ``proportion``'s draw):
    its shrink then need not be OpenCV's to the byte, the encode's error being several times larger."""
    if field.write_mode == "jpg":
        return True
    return field.write_mode == "proportion" and chooses_jpeg(field, 0, 0, draw_seed)


def _page_size_for(max_resolution: int) -> int:
    """A page must hold the largest raw record (max_resolution^2 RGB pixels)."""
    largest = max_resolution * max_resolution * RGB_CHANNELS
    return max(DEFAULT_PAGE_SIZE, 1 << (largest - 1).bit_length())


def _supervised(errors: Queue, work_fn: Callable, *args: object) -> None:
    """A writer process: Ctrl-C is the parent's to handle; an error becomes a message, not a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    rgb_image.IMAGE_MODES = IMAGE_MODES  # RGBImageField.encode's lookup, not compiled here: this process only writes
    try:
        work_fn(*args)
    except BaseException as err:  # noqa: B036 - anything, so the parent can say what happened
        errors.put(f"{type(err).__name__}: {err}")
        raise SystemExit(1) from None


class GuardedWriter(DatasetWriter):
    """DatasetWriter whose write fails fast (WorkerFailed) instead of hanging, always frees its
    shared memory, stops its processes on any exit (Ctrl-C included) and shows an optional bar."""

    def __init__(self, fname: str | Path, fields: Mapping[str, Field], num_workers: int, page_size: int,
                 progress_label: str | None):
        super().__init__(str(fname), fields, page_size=page_size, num_workers=num_workers)
        self.progress_label = progress_label

    def _write_common(self, num_samples: int, queue_content: Iterable, work_fn: Callable,
                      extra_worker_args: tuple) -> None:
        self.num_samples = num_samples
        self.prepare()  # header, field descriptors and the shared metadata segment
        work, allocations, errors = Queue(), Queue(), Queue()
        processes: list[Process] = []
        try:
            for todo in queue_content:
                work.put(todo)
            for _ in range(self.num_workers):
                work.put(None)  # one stop token per worker
            done = Value(ctypes.c_uint64, 0)
            allocator = PositionalAllocator(self.fname, self.data_region_start, self.page_size)
            args = (work, self.metadata_sm, self.metadata_type, self.fields, allocator, done, allocations,
                    *extra_worker_args)
            processes = [Process(target=_supervised, args=(errors, work_fn, *args), daemon=True)
                         for _ in range(self.num_workers)]
            for process in processes:
                process.start()
            self._follow(done, processes, errors)
            allocation_list = self._collect(allocations, processes, errors)
            self.finalize(allocation_list)
        finally:
            _stop(processes)
            for channel in (work, allocations, errors):
                channel.cancel_join_thread()  # never block exit on unread queue data
            self.metadata_sm.close()
            self.metadata_sm.unlink()

    def _follow(self, done: Value, processes: list[Process], errors: Queue) -> None:
        with tqdm(total=self.num_samples, desc=self.progress_label, unit="img", disable=self.progress_label is None,
                  dynamic_ncols=True) as bar:
            shown = 0  # not bar.n: a disabled bar does not count
            while shown < self.num_samples:
                _raise_if_failed(processes, errors)
                current = int(done.value)
                bar.update(current - shown)
                shown = current
                if shown < self.num_samples:
                    time.sleep(POLL_SECONDS)

    def _collect(self, allocations: Queue, processes: list[Process], errors: Queue) -> list:
        """Every worker's allocation list (sent after its last page is written)."""
        collected: list = []
        for _ in processes:
            while True:
                try:
                    collected.extend(allocations.get(timeout=POLL_SECONDS))
                    break
                except queue.Empty:
                    _raise_if_failed(processes, errors)
        return collected


def _raise_if_failed(processes: list[Process], errors: Queue) -> None:
    failed = [process for process in processes if process.exitcode not in (None, 0)]
    if not failed:
        return
    try:
        reason = errors.get(timeout=POLL_SECONDS)
    except queue.Empty:
        code = failed[0].exitcode
        reason = (f"killed by signal {-code} (out of memory?)" if code is not None and code < 0
                  else f"exit code {code}")
    raise WorkerFailed(f"a writer process stopped: {reason}")


def _stop(processes: list[Process]) -> None:
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join()


@dataclass
class Written:
    """What ``write_records`` stored: ``samples[i]`` is record i; ``passed_through[i]``: its source bytes kept."""

    samples: list[Sample]
    passed_through: np.ndarray
    failed: list[Skipped]


def write_records(samples: list[Sample], path: Path, field: RGBImageField, *, workers: int, chunk_size: int,
                  seed: int, passthrough: str | bool, progress_label: str | None) -> Written:
    """Write ``samples`` to ``path`` in the given order, redoing the write without any file that failed to decode.

    A redo costs a full write but only happens for files that pass ``probe`` yet
    fail to decode, which real folders almost never have.
    """
    failed: list[Skipped] = []
    if passthrough_mode(passthrough) != NEVER:
        field = with_passthrough(field)
    passed_through = np.zeros(0, dtype=bool)
    while samples:
        with tempfile.TemporaryDirectory(prefix="ffcv-imagenet-failures-") as failure_dir:
            dataset = SourceImages(samples, field, seed, failure_dir, passthrough)
            writer = GuardedWriter(path, {"image": field, "label": IntField()},
                                   num_workers=max(1, min(workers, len(samples))),
                                   page_size=_page_size_for(field.max_resolution), progress_label=progress_label)
            writer.from_indexed_dataset(dataset, chunksize=chunk_size)
            passed_through = np.frombuffer(dataset.passed_through, dtype=bool).copy()
            bad = {int(name): Path(failure_dir, name).read_text() for name in os.listdir(failure_dir)}
        if not bad:
            break
        failed += [(samples[index][0], f"decode failed: {reason}") for index, reason in sorted(bad.items())]
        samples = [sample for index, sample in enumerate(samples) if index not in bad]
    return Written(samples, passed_through, failed)
