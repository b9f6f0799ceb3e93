"""The compiled shrink keeps the last few axes' tap tables per thread (csrc/area_resize.cpp, taps_for): an
output must not depend on what was shrunk before it, cache hit or miss, nor on the entry a new table fills."""
from __future__ import annotations

import numpy as np

from ffcv_imagenet.convert.area_resize import shrink_area
from ffcv_imagenet.jpeg_region import FAST_RESIZE, crop_resize
from ffcv_imagenet.yuv420_records import rgb_to_yuv420, yuv420_crop_resize

CACHED_AXES = 8  # kCachedAxes


def noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_a_table_filled_beside_a_cached_one_leaves_it_intact() -> None:
    """A shrink whose width's table is cached in the very entry the next new table fills (its height's):
    the height's must go elsewhere, not over the width's while the shrink reads it."""
    rng = np.random.default_rng(0)
    width, out_width, height, out_height = 101, 61, 157, 83
    tall = noise(rng, height, width)
    cold = shrink_area(tall, (out_width, out_height), exact=False)
    new_squares = iter([(103 + 2 * k, 62 + k) for k in range(2 * CACHED_AXES)])  # (source, output): sizes not met

    def fill(entries: int) -> None:  # one new table each (a square's two axes share it)
        for _ in range(entries):
            source, output = next(new_squares)
            shrink_area(noise(rng, source, source), (output, output), exact=False)

    fill(CACHED_AXES)  # every entry refilled; the next to fill is where it was
    shrink_area(noise(rng, width, width), (out_width, out_width), exact=False)  # the width's table, in that entry
    fill(CACHED_AXES - 1)  # round again: the next to fill is the width's entry
    assert np.array_equal(shrink_area(tall, (out_width, out_height), exact=False), cold)


def test_outputs_do_not_depend_on_the_calls_before() -> None:
    rng = np.random.default_rng(1)
    images = [noise(rng, int(rng.integers(40, 140)), int(rng.integers(40, 140))) for _ in range(12)]
    windows = []
    for image in images:
        height, width = image.shape[:2]
        top, left = int(rng.integers(0, height // 3)), int(rng.integers(0, width // 3))
        windows.append((top, int(rng.integers(top + height // 2, height + 1)),
                        left, int(rng.integers(left + width // 2, width + 1))))

    def outputs(order: list[int]) -> dict[int, tuple[np.ndarray, ...]]:
        made = {}
        for k in order:
            image, (top, bottom, left, right) = images[k], windows[k]
            rgb, yuv = np.empty((24, 24, 3), np.uint8), np.empty((24, 24, 3), np.uint8)
            crop_resize(image, top, bottom, left, right, rgb, FAST_RESIZE)
            height, width = image.shape[:2]
            assert yuv420_crop_resize(rgb_to_yuv420(image), height, width, top, bottom, left, right, yuv) == 0
            made[k] = (rgb, yuv, shrink_area(image, (width * 2 // 3, height // 2), exact=False))
        return made

    forward = outputs(list(range(len(images))))
    again = outputs([k for k in reversed(range(len(images))) for _ in range(2)])  # hits, and other neighbours
    for k in forward:
        assert all(np.array_equal(a, b) for a, b in zip(forward[k], again[k])), k
