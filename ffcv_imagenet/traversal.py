"""Traversal orders for FFCV's Loader beyond its own: page-grouped shuffling under DDP, and skipping.

``PageShuffleOrder`` is for datasets larger than the RAM the page cache can
have (``data.order: quasi_random``). FFCV's own quasi-random order refuses to
run distributed; this one works on any number of ranks:

1. one global sequence per (seed, epoch), the same on every rank: the .beton's
   pages in random order, each page's samples shuffled;
2. rank r takes the r-th contiguous block of 1/W of it, so ranks are disjoint,
   every sample is seen once per epoch except the ``len % W`` left at the end,
   and each rank reads whole pages in a row (large reads for a disk or a
   network filesystem);
3. within the block, samples are shuffled inside windows of ``window_pages``
   pages: the window bounds how many pages the process cache holds at once.

``SkippableOrder`` wraps any order so that an epoch can start after its first
k samples without decoding them: how a run resumes inside an epoch.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np


class Order(Protocol):
    def sample_order(self, epoch: int) -> np.ndarray: ...


def samples_by_page(page_to_samples: dict[int, set[int]], indices: np.ndarray) -> list[np.ndarray]:
    """Each page's samples that are in ``indices``, sorted, pages in file order (empty pages left out)."""
    wanted = set(int(i) for i in indices)
    pages = []
    for page in sorted(page_to_samples):
        members = np.array(sorted(wanted.intersection(int(s) for s in page_to_samples[page])), dtype=np.int64)
        if members.size:
            pages.append(members)
    return pages


class PageShuffleOrder:
    """Page-grouped, bounded-buffer shuffle with disjoint per-rank shares (see the module docstring)."""

    def __init__(self, pages: list[np.ndarray], *, seed: int, rank: int, world_size: int, window_pages: int):
        if window_pages < 1:
            raise ValueError(f"window_pages must be at least 1, got {window_pages}")
        self.pages = pages
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.samples_per_page = max(1, round(sum(map(len, pages)) / max(1, len(pages))))
        self.window_samples = window_pages * self.samples_per_page

    def sample_order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])  # the same stream on every rank
        sequence = np.concatenate([rng.permutation(self.pages[p]) for p in rng.permutation(len(self.pages))])
        share = len(sequence) // self.world_size
        mine = sequence[self.rank * share:(self.rank + 1) * share].copy()
        for start in range(0, share, self.window_samples):
            rng.shuffle(mine[start:start + self.window_samples])
        return mine


class SkippableOrder:
    """Any order, minus the first ``skip`` samples of the next epoch only."""

    def __init__(self, inner: Order):
        self.inner = inner
        self.skip = 0

    def sample_order(self, epoch: int) -> np.ndarray:
        order = self.inner.sample_order(epoch)
        skip, self.skip = self.skip, 0
        return order[skip:]
