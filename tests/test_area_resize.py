"""area_resize: OpenCV's INTER_AREA shrink, byte for byte, on real photos and on the edge cases of its
weight tables (one output pixel, an unchanged side, more than four source pixels per output pixel,
values at 0 and 255, a non-contiguous view); so records stay identical to the ffcv-imagenet way's."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from ffcv_imagenet.convert.area_resize import integer_ratio, shrink_area
from ffcv_imagenet.convert.image_files import draft_size, load_rgb, stored_size

PHOTO_SIZES = [(700, 525), (501, 380), (799, 612), (1283, 961), (2500, 1700), (333, 500), (640, 480)]
STORED_SIDES = [500, 256, 160, 64]


def photo(width: int, height: int, seed: int) -> np.ndarray:
    """Smooth colour fields plus grain: a photo's mix of flat areas and detail."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    return np.clip(np.asarray(coarse) + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    """Real JPEG files on disk, decoded by PIL as the ffcv-imagenet way decodes them."""
    folder = tmp_path_factory.mktemp("photos")
    decoded = []
    for seed, (width, height) in enumerate(PHOTO_SIZES):
        path = folder / f"{seed}.jpg"
        Image.fromarray(photo(width, height, seed)).save(path, quality=92)
        with Image.open(path) as image:
            decoded.append(np.asarray(image.convert("RGB")))
    return decoded


def opencv(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


def test_photos_at_every_stored_size_match_opencv(photos: list[np.ndarray]) -> None:
    non_integer = 0
    for pixels in photos:
        for side in STORED_SIDES:
            size = stored_size(pixels.shape[1], pixels.shape[0], side)
            if size == (pixels.shape[1], pixels.shape[0]):
                continue
            non_integer += not (integer_ratio(pixels.shape[1], size[0]) and integer_ratio(pixels.shape[0], size[1]))
            np.testing.assert_array_equal(shrink_area(pixels, size), opencv(pixels, size),
                                          err_msg=f"{pixels.shape} {size}")
    assert non_integer >= 20  # the compiled path ran, not only OpenCV's integer-ratio one


def test_load_rgb_gives_the_ffcv_imagenet_ways_pixels(tmp_path: Path) -> None:
    """Full decode (600-800 px) and DCT-scaled decode (over twice the size): the shrink is OpenCV's, to the byte."""
    for seed, (width, height) in enumerate([(700, 525), (611, 799), (1283, 961)]):
        path = tmp_path / f"{seed}.jpg"
        Image.fromarray(photo(width, height, seed)).save(path, quality=90)
        size = stored_size(width, height, 500)
        with Image.open(path) as image:
            image.draft("RGB", draft_size(width, height, 500))  # a no-op under twice the stored size
            decoded = np.asarray(image.convert("RGB"))
        np.testing.assert_array_equal(load_rgb(str(path), 500), opencv(decoded, size))


@pytest.mark.parametrize("source, size", [
    ((7, 5), (1, 1)),          # one output pixel: every source pixel in one cell
    ((640, 480), (500, 480)),  # height unchanged (a scale of exactly 1 on one axis)
    ((640, 481), (320, 300)),  # width at an integer ratio, height not
    ((2501, 1703), (3, 2)),    # hundreds of source pixels per output pixel
    ((1003, 13), (200, 2)),    # a thin strip
    ((97, 89), (96, 88)),      # barely smaller: partial cells everywhere
])
def test_edge_cases_of_the_weight_tables_match_opencv(source: tuple[int, int], size: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(source))
    noise = rng.integers(0, 256, (source[1], source[0], 3), dtype=np.uint8)
    np.testing.assert_array_equal(shrink_area(noise, size), opencv(noise, size))
    extremes = np.where(noise > 127, 255, 0).astype(np.uint8)  # sums at the ends of the range: rounding and clamping
    np.testing.assert_array_equal(shrink_area(extremes, size), opencv(extremes, size))


def test_a_non_contiguous_view_matches_opencv(photos: list[np.ndarray]) -> None:
    window = photos[0][11:400, 23:611]
    assert not window.flags.c_contiguous
    np.testing.assert_array_equal(shrink_area(window, (411, 272)), opencv(window, (411, 272)))


def test_enlarging_is_refused(photos: list[np.ndarray]) -> None:
    small = photos[0][:100, :100]
    with pytest.raises(ValueError, match="shrinks only"):
        shrink_area(np.ascontiguousarray(small), (101, 99))
