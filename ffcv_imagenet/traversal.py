"""Traversal orders for FFCV's Loader: one global order per epoch, whatever the number of ranks.

Each epoch has one **global sample order** that depends only on (seed, epoch)
and the dataset, never on the number of ranks:

- ``RandomOrder`` (``data.order: random``): a permutation of the whole set;
- ``PageShuffleOrder`` (``data.order: quasi_random``) is for datasets larger
  than the RAM the page cache can have: the .beton's pages in random order,
  cut into windows of ``window_pages`` pages; each window's samples are
  visited in a low-discrepancy order (below). The window bounds the pages in
  flight.

``RankShare`` cuts a global order into steps: with W ranks and a per-rank batch
of B, step k covers global positions [k*W*B, (k+1)*W*B). An epoch can start at
any global sample position (a resumed run), so a run stopped after s samples
on W ranks continues on W' ranks with sample s: every sample of the epoch is
trained once, except the last ``(len - s) % (W' * B)`` (less than one global
batch), which are left out.

Within a step, random order gives rank r the r-th B of the step's positions.
The page-shuffled order gives each sample a **place** in its window: lay the
window's pages end to end (in their shuffled order, each page's samples
shuffled), and a sample's place is its position there, from 0 to 1. Rank r
takes the r-th B of the step's samples sorted by place, so over a window it
reads about the r-th 1/W of the window's pages, not all of them: each rank
reads about 1/W of the file per epoch. For the bands to stay put, each step
must hold about the same number of samples from every stretch of places,
whatever W·B: the window is visited along the golden-ratio sequence
``frac(u + j·φ)`` (random offset u per window), whose every run of n
consecutive points is spread evenly over [0, 1) (to within a few points,
where a shuffle would be off by about sqrt(n) and move the bands by many
pages each step).
"""
from __future__ import annotations

from typing import Protocol

import numpy as np


class Order(Protocol):
    def order_and_places(self, epoch: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The epoch's global order and each position's place in its window (None: hand steps out as they are)."""
        ...

    def sample_order(self, epoch: int) -> np.ndarray: ...


def samples_by_page(page_to_samples: dict[int, set[int]], indices: np.ndarray) -> list[np.ndarray]:
    """Each page's samples that are in ``indices``, sorted, pages in file order (empty pages left out).

    ValueError for a record with data in two pages (FFCV allocates each field of a record on its
    own, so two variable-size fields may land in two pages): it would be visited once per page."""
    wanted = set(int(i) for i in indices)
    numbers, pages = [], []
    for page in sorted(page_to_samples):
        members = np.array(sorted(wanted.intersection(int(s) for s in page_to_samples[page])), dtype=np.int64)
        if members.size:
            numbers.append(page)
            pages.append(members)
    _refuse_spanning_records(numbers, pages)
    return pages


def _refuse_spanning_records(numbers: list[int], pages: list[np.ndarray]) -> None:
    samples, counts = np.unique(np.concatenate(pages) if pages else np.empty(0, np.int64), return_counts=True)
    if (counts > 1).any():
        record = int(samples[counts > 1][0])
        spanned = [number for number, members in zip(numbers, pages) if record in members]
        raise ValueError(f"record {record} has data in pages {spanned[0]} and {spanned[1]}")


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator of an epoch's global order: the same stream on every rank, whatever their count."""
    return np.random.default_rng([seed, epoch])


class RandomOrder:
    """A uniform permutation of ``indices`` per (seed, epoch)."""

    def __init__(self, indices: np.ndarray, *, seed: int):
        self.indices = np.asarray(indices)
        self.seed = seed

    def order_and_places(self, epoch: int) -> tuple[np.ndarray, None]:
        # No places: steps are handed out as drawn. A rank's band could only be a stretch of
        # sample ids, that is of the file (written class by class): each rank would train on its
        # own classes at every step, and DDP broadcasts rank 0's BatchNorm statistics to all.
        # Nothing to gain either: every rank reads the same page cache.
        return epoch_rng(self.seed, epoch).permutation(self.indices), None

    def sample_order(self, epoch: int) -> np.ndarray:
        return self.order_and_places(epoch)[0]


GOLDEN_STEP = (np.sqrt(5.0) - 1.0) / 2.0  # the irrational step whose runs of points spread evenest


def evenly_spread_visit(window: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``window`` visited along ``frac(u + j·φ)``: visit j takes the sample at place frac(u + j·φ).

    Returns the visit order and each visit's place in [0, 1)."""
    points = (rng.random() + np.arange(len(window)) * GOLDEN_STEP) % 1.0
    slot = np.empty(len(window), dtype=np.int64)
    slot[np.argsort(points, kind="stable")] = np.arange(len(window))  # the rank of each point
    return window[slot], slot / len(window)


class PageShuffleOrder:
    """Page-grouped, bounded-window order of the whole set, with places (see the module docstring)."""

    def __init__(self, pages: list[np.ndarray], *, seed: int, window_pages: int):
        if window_pages < 1:
            raise ValueError(f"window_pages must be at least 1, got {window_pages}")
        self.pages = pages
        self.seed = seed
        self.window_pages = window_pages

    def order_and_places(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        rng = epoch_rng(self.seed, epoch)
        shuffled_pages = rng.permutation(len(self.pages))
        orders, places = [], []
        for first in range(0, len(shuffled_pages), self.window_pages):
            chosen = shuffled_pages[first:first + self.window_pages]
            window = np.concatenate([rng.permutation(self.pages[p]) for p in chosen])
            order, place = evenly_spread_visit(window, rng)
            orders.append(order)
            places.append(place)
        return np.concatenate(orders), np.concatenate(places)

    def sample_order(self, epoch: int) -> np.ndarray:
        return self.order_and_places(epoch)[0]


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
        order, places = self.inner.order_and_places(epoch)
        start, self.start = self.start, 0
        global_batch = self.world_size * self.batch_size
        steps = steps_from(len(order), start, global_batch)
        by_step = order[start:start + steps * global_batch].reshape(steps, global_batch)
        if places is not None:  # each rank takes its band of the window's pages: see the module docstring
            step_places = places[start:start + steps * global_batch].reshape(steps, global_batch)
            by_step = np.take_along_axis(by_step, np.argsort(step_places, axis=1, kind="stable"), axis=1)
        return by_step.reshape(steps, self.world_size, self.batch_size)[:, self.rank].reshape(-1)
