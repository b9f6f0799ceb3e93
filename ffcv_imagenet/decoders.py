"""FFCV image decoders of our own, compiled by numba inside the loader's pipeline.

FixResCropDecoder is the FixRes phase's crop: the torchvision recipe
``Resize(int(res / ratio)) + RandomCrop(res)`` expressed as one window in
source pixels, so each image is decoded once and resized once:
the window's side is ``ratio * min(h, w)`` (resizing the shorter side to
res / ratio and cropping res is that window, scaled), at a uniformly random
position.
"""
from __future__ import annotations

import numpy as np
from ffcv.fields.rgb_image import ResizedCropRGBImageDecoder

FIXRES_CROP_RATIO = 224 / 256  # crop side / resized shorter side, as in the standard val transform


def fixres_crop_window(height: int, width: int, scale: object, ratio: float) -> tuple[int, int, int, int]:
    """(top, left, side, side) of a random square window of side ratio * min(h, w).

    ``scale`` is unused: the signature is FFCV's crop-generator protocol, which
    the pipeline compiler calls with (height, width, scale, ratio).
    """
    side = max(1, int(ratio * min(height, width)))
    top = int(np.random.uniform(0, height - side + 1))
    left = int(np.random.uniform(0, width - side + 1))
    return top, left, side, side


class FixResCropDecoder(ResizedCropRGBImageDecoder):
    """Decode, take the FixRes window, resize it to ``output_size`` (one resize)."""

    def __init__(self, output_size: tuple[int, int], ratio: float = FIXRES_CROP_RATIO):
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"FixRes crop ratio must be in (0, 1]: {ratio}")
        super().__init__(output_size)
        self.scale = None
        self.ratio = ratio

    @property
    def get_crop_generator(self):  # noqa: ANN201 - FFCV's protocol: a function to compile
        return fixres_crop_window
