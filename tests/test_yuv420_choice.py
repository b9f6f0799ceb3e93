"""``YUV420ImageField.stores_jpeg`` restates FFCV's choice of JPEG or raw per record (FFCV keeps it inside
``RGBImageField.encode``): held here against FFCV's own field, record by record, in every write mode."""
from __future__ import annotations

import numpy as np
import pytest
from ffcv.fields import RGBImageField

from ffcv_imagenet.beton_format import JPEG_MODE
from ffcv_imagenet.yuv420_records import YUV420_MODE, YUV420ImageField

SIDES = [(24, 32), (40, 40), (16, 48), (56, 30)] * 5  # 20 records, below and above the smart threshold
SMART_THRESHOLD = 40 * 40 * 3 - 1
SEED = 3


def record_modes(field: RGBImageField) -> list[int]:
    """The mode FFCV's writer would record for each image, encoded as its writer does (numpy's global
    generator seeded the same for both fields)."""
    images = np.random.default_rng(0)
    modes = []
    np.random.seed(SEED)
    for height, width in SIDES:
        image = images.integers(0, 256, (height, width, 3), dtype=np.uint8)
        destination = np.zeros(1, dtype=field.metadata_type)[0]
        field.encode(destination, image, lambda size: (0, np.empty(size, np.uint8)))
        modes.append(int(destination["mode"]))
    return modes


@pytest.mark.parametrize("write_mode", ["raw", "jpg", "proportion", "smart"])
def test_records_are_jpeg_where_ffcv_would_store_jpeg(write_mode: str) -> None:
    settings = {"smart_threshold": SMART_THRESHOLD, "compress_probability": 0.5}
    ffcv_jpeg = [mode == JPEG_MODE for mode in record_modes(RGBImageField(write_mode, **settings))]
    ours = record_modes(YUV420ImageField(write_mode, **settings))
    assert [mode == JPEG_MODE for mode in ours] == ffcv_jpeg
    assert all(mode == YUV420_MODE for mode, jpeg in zip(ours, ffcv_jpeg) if not jpeg)
    if write_mode in ("proportion", "smart"):
        assert 0 < sum(ffcv_jpeg) < len(SIDES)  # both kinds met
