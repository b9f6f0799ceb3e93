"""Traversal orders for FFCV's Loader: one global order per epoch, whatever the number of ranks.

Each epoch has one **global sample order** that depends only on (seed, epoch)
and the dataset, never on the number of ranks:

- ``RandomOrder`` (``data.order: random``): a permutation of the whole set;
- ``PageShuffleOrder`` (``data.order: quasi_random``) is for datasets larger
  than the RAM the page cache can have: the .beton's pages in random order,
  each page's samples shuffled, then samples shuffled inside consecutive
  windows of ``window_pages`` pages. The window bounds how many pages a rank's
  process cache holds at once (a rank reads only inside the current window).

``RankShare`` cuts a global order into steps: with W ranks and a per-rank batch
of B, step k covers global positions [k*W*B, (k+1)*W*B) and rank r takes the
r-th B of them. An epoch can start at any global sample position (a resumed
run), so a run stopped after s samples on W ranks continues on W' ranks with
sample s: every sample of the epoch is trained once, except the last
``(len - s) % (W' * B)`` (less than one global batch), which are left out.
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


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator of an epoch's global order: the same stream on every rank, whatever their count."""
    return np.random.default_rng([seed, epoch])


class RandomOrder:
    """A uniform permutation of ``indices`` per (seed, epoch)."""

    def __init__(self, indices: np.ndarray, *, seed: int):
        self.indices = np.asarray(indices)
        self.seed = seed

    def sample_order(self, epoch: int) -> np.ndarray:
        return epoch_rng(self.seed, epoch).permutation(self.indices)


class PageShuffleOrder:
    """Page-grouped, bounded-window shuffle of the whole set (see the module docstring)."""

    def __init__(self, pages: list[np.ndarray], *, seed: int, window_pages: int):
        if window_pages < 1:
            raise ValueError(f"window_pages must be at least 1, got {window_pages}")
        self.pages = pages
        self.seed = seed
        self.samples_per_page = max(1, round(sum(map(len, pages)) / max(1, len(pages))))
        self.window_samples = window_pages * self.samples_per_page

    def sample_order(self, epoch: int) -> np.ndarray:
        rng = epoch_rng(self.seed, epoch)
        sequence = np.concatenate([rng.permutation(self.pages[p]) for p in rng.permutation(len(self.pages))])
        for start in range(0, len(sequence), self.window_samples):
            rng.shuffle(sequence[start:start + self.window_samples])
        return sequence


def steps_from(num_samples: int, start: int, global_batch: int) -> int:
    """Full global batches left in an epoch of ``num_samples`` from global position ``start``."""
    return max(0, num_samples - start) // global_batch


class RankShare:
    """One rank's part of each epoch's global order; ``start`` (global samples already trained)
    applies to the next epoch only: how a run resumes inside an epoch, on any number of ranks."""

    def __init__(self, inner: Order, *, rank: int, world_size: int, batch_size: int):
        self.inner = inner
        self.rank = rank
        self.world_size = world_size
        self.batch_size = batch_size
        self.start = 0

    def sample_order(self, epoch: int) -> np.ndarray:
        order = self.inner.sample_order(epoch)
        start, self.start = self.start, 0
        steps = steps_from(len(order), start, self.world_size * self.batch_size)
        by_step = order[start:start + steps * self.world_size * self.batch_size]
        return by_step.reshape(steps, self.world_size, self.batch_size)[:, self.rank].reshape(-1)
