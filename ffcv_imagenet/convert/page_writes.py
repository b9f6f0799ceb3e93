"""FFCV's page allocator without turn-taking: each full page is written at its own offset at once.

FFCV 1.0.2's ``MemoryAllocator`` opens the file for appending (O_APPEND), so pages must
reach it in page order: a writer process whose page is full sleeps in 1 ms steps until
every lower-numbered page, held by the other processes, has been written. Records vary
widely in cost (a kept JPEG is copied in well under a millisecond, a large photo takes
tens), so a process often idles while another finishes its page. A page's place in the
file is fixed by its number (``offset + number * page_size``), so writing it there with
``pwrite`` as soon as it is full gives the same bytes: no waiting. The gap between the
header and the first page, which the stock allocator fills with zeros, is left as a hole
that reads as zeros; each page is written whole, its unused tail zero as before. The
allocation table that ``DatasetWriter.finalize`` appends lands after the highest page,
since every page is written before the processes report their allocations.

Pages go to disk with O_DIRECT, past the page cache: a buffered write of 8 MiB first makes
the kernel find and fill 2048 cache pages, CPU the writer processes need for images (the
figures, buffered against direct, are in benchmarks/README.md, "Conversion"), and a write-once
file the size of ImageNet would push the source images out of the cache besides. Pages start
on a page-size boundary, so only the buffer needs aligning. Where the file system refuses
O_DIRECT (tmpfs, some network mounts) pages are written through the cache, each page's
writeback started as soon as it is written, not left to the fsync at the end.

A direct write waits for the disk (about 4 ms per 8 MiB page against 0.8 ms of CPU), so pages are
written by a thread of the writer process while it goes on with the next records in a second page
buffer: one write in flight at a time, and a buffer is refilled only once its write has finished.
"""
from __future__ import annotations

import errno
import os
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from ffcv.memory_allocator import MemoryAllocator


DIRECT_ALIGNMENT = 4096  # O_DIRECT buffers, offsets and sizes: a multiple of the logical block size (512 or 4096)


class PositionalAllocator(MemoryAllocator):
    """``MemoryAllocator`` (same pages, same allocation list) that writes a full page at its offset at once,
    from a thread, while the records of the next page fill a second buffer."""

    def __enter__(self) -> None:
        # in the writer process: an aligned buffer does not survive pickling, and the parent's is never used
        self.page_data = aligned_zeros(self.page_size)
        self.spare_page = aligned_zeros(self.page_size)  # the page being written, or the next one to fill
        self.fd = os.open(self.fname, os.O_WRONLY)  # not O_APPEND: pwrite's offset would be ignored
        self.direct_fd = open_direct(self.fname)
        self.page_writer = ThreadPoolExecutor(max_workers=1)
        self.pending_write: Future | None = None

    def flush_page(self) -> None:
        """Hand the full page to the writing thread; ``page_data`` becomes the other buffer (which
        ``malloc`` zero-fills next) once its own write has finished."""
        if self.my_page < 0:  # no page allocated yet
            return
        self.wait_for_write()
        full, self.page_data, self.spare_page = self.page_data, self.spare_page, self.page_data
        self.pending_write = self.page_writer.submit(self.write_page, full, self.my_page)

    def wait_for_write(self) -> None:
        """Until the page in flight is on disk; its error, if any, raised here."""
        if self.pending_write is not None:
            pending, self.pending_write = self.pending_write, None
            pending.result()

    def write_page(self, page: np.ndarray, number: int) -> None:
        """Page ``number`` at its offset: past the cache where allowed, else through it (the writing thread)."""
        page_start = self.offset + number * self.page_size
        if self.direct_fd is not None:
            try:
                write_at(self.direct_fd, memoryview(page), page_start)
                return
            except OSError as err:  # refused after all: write through the cache from now on
                if err.errno != errno.EINVAL:
                    raise
                self._close_direct()
        write_at(self.fd, memoryview(page), page_start)
        if hasattr(os, "posix_fadvise"):  # Linux: starts the page's writeback now (it drops only clean pages),
            # so the fsync before the rename has little left to wait for (benchmarks/README.md)
            os.posix_fadvise(self.fd, page_start, self.page_size, os.POSIX_FADV_DONTNEED)

    def _close_direct(self) -> None:
        if self.direct_fd is not None:
            os.close(self.direct_fd)
            self.direct_fd = None

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.flush_page()
            self.wait_for_write()
        finally:
            self.page_writer.shutdown(wait=True)
            self._close_direct()
            os.close(self.fd)


def open_direct(path: str) -> int | None:
    """A write descriptor of ``path`` that bypasses the page cache, or None where O_DIRECT is not offered."""
    if not hasattr(os, "O_DIRECT"):  # Linux and a few BSDs only
        return None
    try:
        return os.open(path, os.O_WRONLY | os.O_DIRECT)
    except OSError as err:
        if err.errno == errno.EINVAL:
            return None
        raise


def aligned_zeros(size: int) -> np.ndarray:
    """``size`` zero bytes starting on a DIRECT_ALIGNMENT boundary, as O_DIRECT needs."""
    padded = np.zeros(size + DIRECT_ALIGNMENT, dtype="<u1")
    start = -padded.ctypes.data % DIRECT_ALIGNMENT
    return padded[start:start + size]


def write_at(fd: int, data: memoryview, offset: int) -> None:
    """All of ``data`` at ``offset`` (pwrite may write less than asked; an error, e.g. a full disk, raises)."""
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written
