"""The compiled exact shrink's two copies (SSE2, and AVX2 where the CPU has it) each give OpenCV's INTER_AREA
bytes, on photo-like pixels at the conversion's ratios and on the weight tables' edge cases."""
from __future__ import annotations

from typing import Iterator

import cv2
import numpy as np
import pytest

from ffcv_imagenet.convert.area_resize import shrink_area, use_avx2

CASES = [((700, 525), (500, 375)), ((799, 612), (500, 382)), ((1283, 961), (500, 374)), ((97, 89), (96, 88)),
         ((2501, 1703), (3, 2)), ((1003, 13), (200, 2)), ((640, 481), (320, 300))]


@pytest.fixture(params=[False, True], ids=["sse2", "avx2"])
def copy_in_use(request: pytest.FixtureRequest) -> Iterator[bool]:
    running = use_avx2(request.param)
    if request.param and not running:
        pytest.skip("this CPU has no AVX2")
    yield running
    use_avx2(True)  # the default: the best copy the CPU runs


def test_each_copy_gives_opencvs_bytes(copy_in_use: bool) -> None:
    rng = np.random.default_rng(7)
    for (width, height), size in CASES:
        smooth = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (width, height),
                            interpolation=cv2.INTER_CUBIC)
        pixels = np.clip(smooth + rng.normal(0, 14, (height, width, 3)), 0, 255).astype(np.uint8)
        pixels[: height // 8] = 255  # saturated rows: rounding at the top of the range
        np.testing.assert_array_equal(shrink_area(pixels, size), cv2.resize(pixels, size, interpolation=cv2.INTER_AREA),
                                      err_msg=f"{(width, height)} -> {size}, avx2={copy_in_use}")
