"""The conversion's decode and shrink choices: a drafted JPEG given as bytes decodes (libjpeg at a DCT scale,
no PIL) to PIL's pixels; a record stored as JPEG is shrunk by the fixed-point area filter, close to OpenCV's
bytes on fine texture; a record stored raw keeps OpenCV's bytes; and the choice follows the field's own draw."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from ffcv.fields import RGBImageField
from PIL import Image

from ffcv_imagenet.beton_format import IMAGE_MODES, JPEG_MODE
from ffcv_imagenet.convert.beton_writer import stored_as_jpeg
from ffcv_imagenet.convert.image_files import load_rgb, stored_size

MAX_RESOLUTION = 64


def striped_photo(width: int, height: int) -> np.ndarray:
    """Fine oriented stripes near the pixel pitch over a colour ramp: what a shrink can alias."""
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    stripes = 60 * np.sin(2 * np.pi * (0.8 * cols + 0.6 * rows) / 2.7)
    ramp = np.stack([cols / width * 200, rows / height * 200, np.full_like(rows, 90)], axis=-1)
    return np.clip(ramp + stripes[..., None] + 20, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("shrinks")
    files = {}
    for name, (width, height), subsampling in [("drafted 4:4:4", (203, 150), 0), ("drafted 4:2:0", (290, 131), 2),
                                               ("shrunk 4:4:4", (97, 75), 0)]:
        files[name] = folder / f"{name.replace(' ', '_').replace(':', '')}.jpg"
        Image.fromarray(striped_photo(width, height)).save(files[name], quality=95, subsampling=subsampling)
    return files


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255 ** 2 / max(np.mean((a.astype(np.float64) - b) ** 2), 1e-12)))


def test_drafted_bytes_decode_to_pils_pixels(jpegs: dict[str, Path]) -> None:
    for name in ("drafted 4:4:4", "drafted 4:2:0"):  # 1/2 and 1/4 DCT scale
        np.testing.assert_array_equal(load_rgb(jpegs[name].read_bytes(), MAX_RESOLUTION),
                                      load_rgb(str(jpegs[name]), MAX_RESOLUTION), err_msg=name)


def test_jpeg_bound_shrink_is_the_area_filter_within_a_unit_or_two(jpegs: dict[str, Path]) -> None:
    for path in jpegs.values():
        with Image.open(path) as image:
            full = np.asarray(image.convert("RGB"))
        exact = load_rgb(path.read_bytes(), MAX_RESOLUTION)
        fast = load_rgb(path.read_bytes(), MAX_RESOLUTION, exact=False)
        assert fast.shape == exact.shape == (*stored_size(full.shape[1], full.shape[0], MAX_RESOLUTION)[::-1], 3)
        assert np.abs(fast.astype(int) - exact).max() <= 2 and psnr(fast, exact) >= 45, path
    with Image.open(jpegs["shrunk 4:4:4"]) as image:  # not drafted: the raw record's shrink is OpenCV's
        full = np.asarray(image.convert("RGB"))
    np.testing.assert_array_equal(load_rgb(jpegs["shrunk 4:4:4"].read_bytes(), MAX_RESOLUTION),
                                  cv2.resize(full, stored_size(97, 75, MAX_RESOLUTION), interpolation=cv2.INTER_AREA))


def test_stored_as_jpeg_is_the_fields_own_choice() -> None:
    """Asked before ``encode``, the answer matches what ``encode`` then stores, record by record."""
    from ffcv.fields import rgb_image

    rgb_image.IMAGE_MODES = IMAGE_MODES  # as the writer processes look it up (beton_writer._supervised)
    record = np.zeros(1, dtype=[("mode", "<u1"), ("width", "<u2"), ("height", "<u2"), ("data_ptr", "<u8")])[0]
    page = np.zeros(1 << 16, dtype=np.uint8)
    pixels = striped_photo(40, 30)
    for write_mode in ("proportion", "jpg", "raw"):
        field = RGBImageField(write_mode=write_mode, max_resolution=MAX_RESOLUTION)
        answers = []
        for index in range(24):
            np.random.seed([0, index])  # as SourceImages seeds the draw
            asked = stored_as_jpeg(field, [0, index])
            field.encode(record, pixels, lambda size: (0, page[:size]))
            assert asked == (record["mode"] == JPEG_MODE), (write_mode, index)
            answers.append(asked)
        assert (write_mode != "proportion") or 0 < sum(answers) < len(answers)
