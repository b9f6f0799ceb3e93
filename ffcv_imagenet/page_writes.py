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
since every page is written before the processes report their allocations. Each page's
writeback to disk is started as soon as it is written, not left to the fsync at the end.
"""
from __future__ import annotations

import os

from ffcv.memory_allocator import MemoryAllocator


class PositionalAllocator(MemoryAllocator):
    """``MemoryAllocator`` (same pages, same allocation list) that writes a full page at its offset at once."""

    def __enter__(self) -> None:
        self.fd = os.open(self.fname, os.O_WRONLY)  # not O_APPEND: pwrite's offset would be ignored

    def flush_page(self) -> None:
        if self.my_page < 0:  # no page allocated yet
            return
        page_start = self.offset + self.my_page * self.page_size
        write_at(self.fd, memoryview(self.page_data), page_start)
        if hasattr(os, "posix_fadvise"):  # Linux: starts the page's writeback now (it drops only clean pages),
            # so the fsync before the rename has little left to wait for (was 0.3-0.4 s per 4000 images)
            os.posix_fadvise(self.fd, page_start, self.page_size, os.POSIX_FADV_DONTNEED)

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.flush_page()
        finally:
            os.close(self.fd)


def write_at(fd: int, data: memoryview, offset: int) -> None:
    """All of ``data`` at ``offset`` (pwrite may write less than asked; an error, e.g. a full disk, raises)."""
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written
