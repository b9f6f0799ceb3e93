"""FFCV reading a remote .beton: its process cache fed from the node cache, with prefetch from the order.

FFCV's Loader with ``os_cache=False`` reads pages through a ProcessCacheManager: per epoch it
knows every batch's samples, hence every batch's pages, and page-reader threads copy each page
into a slot a few batches before it is needed. ``RemotePageManager`` keeps all of that (the same
compiled reader, schedule and slots) and changes only where a page comes from: the node cache
(``remote_cache.NodeCache``), which downloads it on first use. Since the epoch's pages are known in
order, a prefetcher walks them ahead of the batches, ``data.remote_requests`` at a time, as far as
this rank's share of the cache allows: no blind read-ahead, and the eviction order knows which
pages this rank still needs this epoch. FFCV's schedule copies each page into its memory once per
epoch and keeps it there until its last batch, so a page this rank has copied is not needed from
the node cache again this epoch, however many later batches use it: it is the first to go.

A remote error in a page reader is handed to FFCV's epoch thread, which raises it
(``loaders.RankDeviceEpochIterator`` passes it on to the consumer).
"""
from __future__ import annotations

import bisect
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from queue import Queue
from typing import Any, Sequence

import numpy as np
from ffcv.loader import Loader
from ffcv.memory_managers.process_cache import ProcessCacheContext, ProcessCacheManager
from ffcv.memory_managers.process_cache.schedule import ScheduleExecutor, compute_schedule

from .remote_cache import INFINITY, CacheSettings, NodeCache, is_stand_in


class EpochPages:
    """One rank's epoch in pages: where each page is used, in batch order."""

    def __init__(self, pages_at_batch: Sequence[set[int]]):
        self.uses: dict[int, list[int]] = {}
        for batch, pages in enumerate(pages_at_batch):
            for page in sorted(pages):
                self.uses.setdefault(page, []).append(batch)
        self.in_order = sorted(self.uses, key=lambda page: self.uses[page][0])  # by first use
        self.first_uses = [self.uses[page][0] for page in self.in_order]

    def first_use(self, page: int) -> int:
        return self.uses[page][0]


class Prefetcher(threading.Thread):
    """Fetches this rank's pages in the order they will be used, at most ``ahead`` pages beyond
    those of the current batch, ``requests`` at a time. Its failures are left to the page readers,
    which meet the same error on the same page and report it."""

    def __init__(self, cache: NodeCache, pages: EpochPages, *, ahead: int, requests: int):
        super().__init__(daemon=True)
        self.cache, self.pages, self.ahead, self.requests = cache, pages, ahead, requests
        self.batch = 0
        self.copied: set[int] = set()  # pages this rank's page readers copied into FFCV's memory
        self.changed = threading.Condition()
        self.stopped = False

    def next_use(self, name: str) -> float:
        """The batch at which this rank next reads the page file ``name`` from the node cache: its first
        use this epoch until a page reader has copied it (FFCV keeps it from then on), then never."""
        page = self.cache.page_of(name)
        if page is None or page in self.copied or page not in self.pages.uses:
            return INFINITY
        return float(self.pages.first_use(page))

    def note_copied(self, page: int) -> None:
        self.copied.add(page)

    def advance(self, batch: int) -> None:
        with self.changed:
            self.batch = batch
            self.changed.notify_all()

    def stop(self) -> None:
        with self.changed:
            self.stopped = True
            self.changed.notify_all()

    def run(self) -> None:
        slots = threading.Semaphore(self.requests)
        with ThreadPoolExecutor(self.requests, thread_name_prefix="remote-prefetch") as pool:
            for index, page in enumerate(self.pages.in_order):
                with self.changed:  # no further ahead than the cache share allows
                    self.changed.wait_for(lambda: self.stopped or index < self._used_through() + self.ahead)
                    if self.stopped or self.pages.first_use(page) < self.batch:
                        continue  # past: its page reader has it already
                slots.acquire()
                if self.stopped:
                    return
                pool.submit(self._fetch, page, slots)

    def _used_through(self) -> int:
        """How many pages of ``in_order`` are first used before the current batch."""
        return bisect.bisect_left(self.pages.first_uses, self.batch)

    def _fetch(self, page: int, slots: threading.Semaphore) -> None:
        try:
            name = self.cache.page_name(page)
            self.cache.fetch(page, self.next_use, wanted=lambda: not self.stopped and self.next_use(name) < INFINITY)
        except Exception:  # noqa: BLE001 - the page reader meets it again and reports it
            pass
        finally:
            slots.release()


class RemotePageReader(threading.Thread):
    """FFCV's PageReader (process_cache/page_reader.py), reading from the node cache; an error is
    passed on through the ``loaded`` queue instead of killing the thread."""

    def __init__(self, cache: NodeCache, prefetcher: Prefetcher, queries: Queue, loaded: Queue, memory: np.ndarray):
        super().__init__(daemon=True)
        self.cache, self.prefetcher = cache, prefetcher
        self.queries, self.loaded, self.memory = queries, loaded, memory

    def run(self) -> None:
        while True:
            query = self.queries.get()
            if query is None:
                return
            page, slot = query
            try:
                self.cache.read_into(int(page), self.memory[slot], self.prefetcher.next_use)
                self.prefetcher.note_copied(int(page))
                self.loaded.put(page)
            except BaseException as err:  # noqa: B036 - handed to the epoch thread, which raises it
                self.loaded.put(err)


class RemoteScheduleExecutor(ScheduleExecutor):
    def __init__(self, cache: NodeCache, prefetcher: Prefetcher, schedule, memory: np.ndarray):
        super().__init__(cache.stand_in, schedule, memory)
        self.cache, self.prefetcher = cache, prefetcher

    def __enter__(self) -> None:
        self.entered = True
        self.threads = [RemotePageReader(self.cache, self.prefetcher, self.queries, self.loaded_queue, self.memory)
                        for _ in range(self.num_workers)]
        for thread in self.threads:
            thread.start()
        self.prefetcher.start()

    def __exit__(self, *args) -> None:
        self.prefetcher.stop()
        super().__exit__(*args)

    def load_batch(self, current_batch: int) -> None:
        # ScheduleExecutor.load_batch (ffcv 1.0.2), raising a page reader's error
        self.prefetcher.advance(current_batch)
        # in order of first use (FFCV queues a set): the nearest batch's pages are copied first
        for page in sorted(self.schedule.can_prefetch_at[current_batch], key=self.prefetcher.pages.first_use):
            self.queries.put((page, self.schedule.page_to_slot[page]))
        for page in self.schedule.entering_at[current_batch]:
            while page not in self.loaded:
                loaded = self.loaded_queue.get()
                if isinstance(loaded, BaseException):
                    raise loaded
                self.loaded.add(loaded)
        self.next_batch = current_batch + 1


class RemoteCacheContext(ProcessCacheContext):
    def __enter__(self) -> None:
        # ProcessCacheContext.__enter__ (ffcv 1.0.2) with the executor above
        manager: RemotePageManager = self.manager
        pages_at_batch = [set().union(*(manager.sample_to_pages[sample] for sample in batch))
                          for batch in self.batches]
        self.schedule = compute_schedule(pages_at_batch)
        self.memory = np.zeros((self.schedule.num_slots, self.page_size), dtype="<u1")
        max_page = max(self.schedule.page_to_slot.keys(), default=-1)
        self.page_to_slot = np.zeros(max_page + 1, dtype=np.uint32)
        for page, slot in self.schedule.page_to_slot.items():
            self.page_to_slot[page] = slot
        cache = manager.cache
        prefetcher = Prefetcher(cache, EpochPages(pages_at_batch), ahead=manager.ahead_pages,
                                requests=cache.settings.requests)
        self.executor = RemoteScheduleExecutor(cache, prefetcher, self.schedule, self.memory)
        self.executor.__enter__()


class RemotePageManager(ProcessCacheManager):
    """FFCV's process cache whose pages come from the node cache (module docstring)."""

    def __init__(self, reader, cache: NodeCache, ranks_on_node: int):
        super().__init__(reader)
        self.cache = cache
        # This rank's share of the cache, less room for its requests in flight and its page readers' own
        # fetches: the pages it has copied into FFCV's memory are the first to go, so they need none.
        share_pages = cache.settings.limit_bytes // cache.page_size // max(1, ranks_on_node)
        self.ahead_pages = max(cache.settings.requests, share_pages - 2 * cache.settings.requests)

    def schedule_epoch(self, batches: Sequence[Sequence[int]]) -> RemoteCacheContext:
        return RemoteCacheContext(self, batches)


def read_remote_pages(loader: Loader, settings: CacheSettings, ranks_on_node: int = 1) -> NodeCache | None:
    """Make ``loader`` (built with ``os_cache=False``) read its pages from the object its file stands
    for, if it is a stand-in (``remote_cache.local_view``), through the node cache ``settings`` bound;
    the node cache, or None for a local file. ``ranks_on_node`` share the cache."""
    cache = NodeCache.for_stand_in(loader.fname, settings)
    if cache is not None:
        loader.memory_manager = RemotePageManager(loader.reader, cache, ranks_on_node)
    return cache


def open_loader(path: str | Path, remote: CacheSettings, *, in_memory: bool = True, ranks_on_node: int = 1,
                loader_class: type[Loader] = Loader, **options: Any) -> tuple[Loader, NodeCache | None]:
    """FFCV's ``loader_class`` over ``path`` (``options``: its other arguments) and the node cache its
    pages come from. A local file is read through the OS page cache (``in_memory``) or FFCV's process
    cache; a remote dataset's stand-in always through the process cache, whose pages are fetched from
    the object into the node cache that ``remote`` bounds, shared by ``ranks_on_node`` (None: a local file)."""
    loader = loader_class(str(path), os_cache=in_memory and not is_stand_in(path), **options)
    return loader, read_remote_pages(loader, remote, ranks_on_node)
