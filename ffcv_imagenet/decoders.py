"""FFCV image decoders of our own, compiled by numba inside the loader's pipeline.

Training crops, with the horizontal flip done in the same pass:
- ``RandomResizedCropDecoder``: torchvision's RandomResizedCrop window (scale
  0.08-1, aspect 3/4-4/3), the main phase's augmentation.
- ``FixResCropDecoder``: the FixRes phase's crop, torchvision's
  ``Resize(int(res / ratio)) + RandomCrop(res)`` expressed as one window in
  source pixels, so each image is decoded once and resized once: the window's
  side is ``ratio * min(h, w)`` (resizing the shorter side to res / ratio and
  cropping res is that window, scaled), at a uniformly random position.

Why our own decode loop rather than FFCV's: numba's random generator is
per thread and never seeded by FFCV, so stock crops differ from run to run and a
resumed run could not repeat an uninterrupted one. Here every sample's draws
come from a generator seeded by (run seed, epoch, sample id): the same crops
and flips whatever the thread, the rank count, or where the run was resumed.
"""
from __future__ import annotations

import itertools
import warnings
from typing import Callable

import numba
import numpy as np
from ffcv.fields.rgb_image import IMAGE_MODES, ResizedCropRGBImageDecoder, get_random_crop
from ffcv.libffcv import imdecode, resize_crop
from ffcv.pipeline.compiler import Compiler

FIXRES_CROP_RATIO = 224 / 256  # crop side / resized shorter side, as in the standard val transform
RRC_SCALE = (0.08, 1.0)  # torchvision's RandomResizedCrop defaults
RRC_RATIO = (3 / 4, 4 / 3)
FLIP_PROBABILITY = 0.5

# Epoch seed of each live decoder, read by the compiled code once per batch: it
# changes every epoch without recompiling the pipeline (numba freezes arrays
# captured at compile time, so the value must come from Python).
_EPOCH_SEEDS: dict[int, int] = {}
_decoder_keys = itertools.count()
# The one-per-batch read above holds the GIL for microseconds; numba warns about it at every compile.
warnings.filterwarnings("ignore", message=".*object mode won't allow parallel", category=numba.NumbaWarning)


def epoch_seed(run_seed: int, epoch: int) -> int:
    """One seed per (run, epoch); sample seeds are mixed from it."""
    return (run_seed << 20) + epoch


@numba.njit(nogil=True, cache=False)
def sample_seed(seed: int, sample_id: int) -> np.uint32:
    """splitmix64 of (seed, sample id): well-spread seeds for neighbouring ids and epochs."""
    z = np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(sample_id)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return np.uint32(z & np.uint64(0xFFFFFFFF))


def fixres_crop_window(height: int, width: int, scale: object, ratio: float) -> tuple[int, int, int, int]:
    """(top, left, side, side) of a random square window of side ratio * min(h, w).

    ``scale`` is unused: the signature is FFCV's crop-generator protocol, which
    the pipeline compiler calls with (height, width, scale, ratio).
    """
    side = max(1, int(ratio * min(height, width)))
    top = int(np.random.uniform(0, height - side + 1))
    left = int(np.random.uniform(0, width - side + 1))
    return top, left, side, side


@numba.njit(nogil=True)
def flip_in_place(image: np.ndarray) -> None:
    """Mirror an (h, w, c) image left-right without a second buffer."""
    width = image.shape[1]
    for row in range(image.shape[0]):
        for col in range(width // 2):
            for channel in range(image.shape[2]):
                other = width - 1 - col
                image[row, col, channel], image[row, other, channel] = (
                    image[row, other, channel], image[row, col, channel])


class SeededCropDecoder(ResizedCropRGBImageDecoder):
    """Decode, crop a window from ``get_crop_generator``, resize once, flip with probability 1/2.

    Subclasses choose the window. ``set_epoch`` must be called before each
    epoch's iteration starts; ``output_size`` may change between epochs.
    """

    def __init__(self, output_size: tuple[int, int], flip: bool = True):
        super().__init__(output_size)
        self.flip = flip
        self.key = next(_decoder_keys)
        _EPOCH_SEEDS[self.key] = 0

    def set_epoch(self, run_seed: int, epoch: int) -> None:
        _EPOCH_SEEDS[self.key] = epoch_seed(run_seed, epoch)

    def __del__(self) -> None:
        _EPOCH_SEEDS.pop(getattr(self, "key", -1), None)

    def generate_code(self) -> Callable:
        jpg = IMAGE_MODES["jpg"]
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        imdecode_c = Compiler.compile(imdecode)
        resize_crop_c = Compiler.compile(resize_crop)
        get_crop_c = Compiler.compile(self.get_crop_generator)
        scale = np.array(self.scale) if isinstance(self.scale, tuple) else self.scale
        ratio = np.array(self.ratio) if isinstance(self.ratio, tuple) else self.ratio
        flip = self.flip
        key = self.key

        def decode(batch_indices, my_storage, metadata, storage_state):  # noqa: ANN001, ANN202 - numba
            destination, temp_storage = my_storage
            with numba.objmode(seed="int64"):
                seed = _EPOCH_SEEDS[key]
            for dst_ix in my_range(len(batch_indices)):
                source_ix = batch_indices[dst_ix]
                np.random.seed(sample_seed(seed, source_ix))
                field = metadata[source_ix]
                image_data = mem_read(field["data_ptr"], storage_state)
                height = np.uint32(field["height"])
                width = np.uint32(field["width"])
                if field["mode"] == jpg:
                    temp_buffer = temp_storage[dst_ix]
                    imdecode_c(image_data, temp_buffer, height, width, height, width, 0, 0, 1, 1, False, False)
                    pixels = temp_buffer.reshape(-1)[:3 * height * width].reshape(height, width, 3)
                else:
                    pixels = image_data.reshape(height, width, 3)
                top, left, crop_h, crop_w = get_crop_c(height, width, scale, ratio)
                resize_crop_c(pixels, top, top + crop_h, left, left + crop_w, destination[dst_ix])
                if flip and np.random.rand() < FLIP_PROBABILITY:
                    flip_in_place(destination[dst_ix])
            return destination[:len(batch_indices)]

        decode.is_parallel = True
        return decode


class RandomResizedCropDecoder(SeededCropDecoder):
    """torchvision's RandomResizedCrop window (FFCV's sampler), resized to ``output_size``, plus flip."""

    def __init__(self, output_size: tuple[int, int], flip: bool = True,
                 scale: tuple[float, float] = RRC_SCALE, ratio: tuple[float, float] = RRC_RATIO):
        super().__init__(output_size, flip)
        self.scale = scale
        self.ratio = ratio

    @property
    def get_crop_generator(self):  # noqa: ANN201 - FFCV's protocol: a function to compile
        return get_random_crop


class FixResCropDecoder(SeededCropDecoder):
    """Decode, take the FixRes window, resize it to ``output_size`` (one resize), plus flip."""

    def __init__(self, output_size: tuple[int, int], ratio: float = FIXRES_CROP_RATIO, flip: bool = True):
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"FixRes crop ratio must be in (0, 1]: {ratio}")
        super().__init__(output_size, flip)
        self.scale = None
        self.ratio = ratio

    @property
    def get_crop_generator(self):  # noqa: ANN201 - FFCV's protocol: a function to compile
        return fixres_crop_window
