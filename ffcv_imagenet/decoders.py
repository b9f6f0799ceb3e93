"""FFCV image decoders of our own, compiled by numba inside the loader's pipeline.

Training crops, with the horizontal flip done in the same pass:
- ``RandomResizedCropDecoder``: torchvision's RandomResizedCrop window (scale
  0.08-1, aspect 3/4-4/3 by default; the recipe's augment.rrc_scale and rrc_ratio),
  the main phase's augmentation. Ranges and flip are captured as constants of the
  compiled code (they are fixed for a loader's life; only the epoch seed changes).
- ``FixResCropDecoder``: the FixRes phase's crop, torchvision's
  ``Resize(int(res / ratio)) + RandomCrop(res)`` expressed as one window in
  source pixels, so each image is decoded once and resized once: the window's
  side is ``ratio * min(h, w)`` (resizing the shorter side to res / ratio and
  cropping res is that window, scaled), at a uniformly random position.
- ``CenterCropDecoder``: the val transform (resize + center crop), no randomness.

Decode only what serves (``method``, REGION by default): the window is chosen first (the same
seeded draws as a full decode would use), then the JPEG is decoded at the largest TurboJPEG
IDCT downscale (1/2, 1/4, 1/8) that still leaves the window at least as large as the output in
both dimensions, and only the iMCU-aligned region around the window is decoded (libjpeg's
partial decode, our ``_jpeg_region`` extension); the window, mapped to scaled pixels, is resized
once with an area filter, as FFCV's INTER_AREA: an exact integer box average first when it is twice
the output per side or more, then INTER_AREA's weights summed in cheaper loops (a bilinear step here
aliased fine texture; OpenCV's own INTER_AREA at general ratios costs about as much as the decode).
Raw records are cropped and resized directly, with the same resize; yuv420 records
(yuv420_records) plane by plane, then converted to RGB at the output size, whatever the method. SCALED decodes the
whole image at the IDCT scale through FFCV's ``imdecode``; FULL is FFCV's own path (full-size
decode, INTER_AREA), the recipe's ``data.decoder: stock``.

A record that does not decode (corrupt JPEG) never kills FFCV's worker thread,
which would leave the training loop waiting forever: its output is zeroed, its
sample id recorded, and ``check_decoded`` (called by the loaders for every
batch, before the batch is used) raises ``CorruptRecordError`` naming it.

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
from ffcv.fields.rgb_image import ResizedCropRGBImageDecoder, get_center_crop, get_random_crop
from ffcv.libffcv import imdecode, resize_crop
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.state import State

from .beton_format import JPEG_MODE
from .config import RRC_RATIO, RRC_SCALE, STANDARD_CROP_RATIO  # noqa: F401 - the recipe's defaults, re-exported
from .jpeg_region import FAST_RESIZE, REGION_OK, crop_decode_resize, crop_resize
from .yuv420_records import YUV420_MODE, yuv420_crop_resize

FIXRES_CROP_RATIO = STANDARD_CROP_RATIO  # crop side / resized shorter side, as in the standard val transform
FLIP_PROBABILITY = 0.5
VAL_CROP_RATIO = STANDARD_CROP_RATIO  # the standard val transform: center crop side / resized shorter side
DCT_DENOMINATORS = (8, 4, 2)  # TurboJPEG's power-of-two IDCT downscales, the largest first
FULL_SCALE = 1
# How JPEG records are decoded (the decoders' ``method``):
FULL = "full"  # FFCV's imdecode at full size, then FFCV's resize (INTER_AREA): the stock path
SCALED = "scaled"  # FFCV's imdecode of the whole image at the IDCT scale, then FFCV's resize
REGION = "region"  # our _jpeg_region: only the iMCU region around the window, at the IDCT scale
METHODS = (FULL, SCALED, REGION)

# Epoch seed of each live decoder, read by the compiled code once per batch: it
# changes every epoch without recompiling the pipeline (numba freezes arrays
# captured at compile time, so the value must come from Python).
_EPOCH_SEEDS: dict[int, int] = {}
_decoder_keys = itertools.count()
# The one-per-batch read above holds the GIL for microseconds; numba warns about it at every compile.
warnings.filterwarnings("ignore", message=".*object mode won't allow parallel", category=numba.NumbaWarning)


# Sample ids whose JPEG did not decode, per live decoder, filled by the compiled code.
_DECODE_FAILURES: dict[int, list[int]] = {}
# The full-size decode scratch of each live decoder, one row per image of a batch. Only the host
# touches it, so it stays out of FFCV's allocations, which pin all their memory on a GPU machine,
# in each of 5 batch slots (about 80% of a loader's pinned memory). One batch is enough: the decode
# of a batch ends, its scratch read into the output, before the next batch's begins.
_SCRATCH: dict[int, np.ndarray] = {}


def _scratch_rows(key: int, rows: int, row_bytes: int) -> np.ndarray:
    """``rows`` rows of ``row_bytes`` of decoder ``key``'s scratch (plain host memory, grown on demand)."""
    scratch = _SCRATCH.get(key)
    if scratch is None or scratch.shape[0] < rows or scratch.shape[1] != row_bytes:
        scratch = _SCRATCH[key] = np.empty((rows, row_bytes), dtype=np.uint8)
    return scratch[:rows]


class CorruptRecordError(RuntimeError):
    """A record of the .beton that does not decode: the message names the sample(s)."""


def _record_failure(key: int, sample_id: int) -> None:
    _DECODE_FAILURES.setdefault(key, []).append(int(sample_id))


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
def dct_denominator(crop_h: int, crop_w: int, out_h: int, out_w: int) -> int:
    """The largest IDCT downscale 1/d leaving the window at least the output's size in both dimensions."""
    for denom in DCT_DENOMINATORS:
        if crop_h >= out_h * denom and crop_w >= out_w * denom:
            return denom
    return FULL_SCALE


@numba.njit(nogil=True)
def scaled_down(size: int, denom: int) -> int:
    """A side after a 1/denom IDCT scale, as TurboJPEG rounds it (TJSCALED: up)."""
    return (size + denom - 1) // denom


@numba.njit(nogil=True)
def scaled_span(start: int, length: int, denom: int, limit: int) -> tuple[int, int]:
    """[start, start + length) in full-size pixels -> nearest [begin, end) in 1/denom-scaled pixels."""
    begin = (2 * start + denom) // (2 * denom)
    end = min(limit, (2 * (start + length) + denom) // (2 * denom))
    return begin, max(end, begin + 1)


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
    """Choose a window (``get_crop_generator``), decode at the DCT scale that serves, resize once, maybe flip.

    Subclasses choose the window. ``set_epoch`` must be called before each
    epoch's iteration starts; ``output_size`` may change between epochs.
    ``method`` (FULL, SCALED, REGION) says how JPEG records are decoded; see the module docstring.
    """

    seeded = True  # draws come from the per-sample generator; a deterministic window needs none

    def __init__(self, output_size: tuple[int, int], flip: bool = True, method: str = REGION):
        if method not in METHODS:
            raise ValueError(f"decode method must be one of {', '.join(METHODS)}: {method!r}")
        super().__init__(output_size)
        self.flip = flip
        self.method = method
        self.key = next(_decoder_keys)
        _EPOCH_SEEDS[self.key] = 0

    def set_epoch(self, run_seed: int, epoch: int) -> None:
        _EPOCH_SEEDS[self.key] = epoch_seed(run_seed, epoch)

    def check_decoded(self, source: str) -> None:
        """Raise ``CorruptRecordError`` if a record decoded so far did not decode (cleared once raised)."""
        failed = _DECODE_FAILURES.pop(self.key, None)
        if failed:
            ids = ", ".join(str(i) for i in sorted(set(failed)))
            raise CorruptRecordError(f"{source}: sample(s) {ids}: corrupt JPEG record, not decodable; "
                                     "rewrite the dataset or exclude the sample(s)")

    def __del__(self) -> None:
        _EPOCH_SEEDS.pop(getattr(self, "key", -1), None)
        _DECODE_FAILURES.pop(getattr(self, "key", -1), None)
        _SCRATCH.pop(getattr(self, "key", -1), None)

    def scratch_row_bytes(self) -> int:
        """One image's decode scratch: the largest stored image, full size (FFCV's own sizing)."""
        return int(self.metadata["height"].max()) * int(self.metadata["width"].max()) * 3

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, tuple[AllocationQuery]]:
        """FFCV's declaration less its scratch (``_SCRATCH``): the output alone goes through FFCV,
        whose slots are pinned on a GPU machine for the copy to the device."""
        state, (output, _) = super().declare_state_and_memory(previous_state)
        return state, (output,)

    def generate_code(self) -> Callable:
        jpg = JPEG_MODE
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        imdecode_c = Compiler.compile(imdecode)
        resize_crop_c = Compiler.compile(resize_crop)
        region_c = Compiler.compile(crop_decode_resize)
        crop_resize_c = Compiler.compile(crop_resize)
        yuv420_c = Compiler.compile(yuv420_crop_resize)
        yuv420 = YUV420_MODE
        get_crop_c = Compiler.compile(self.get_crop_generator)
        scale = np.array(self.scale) if isinstance(self.scale, tuple) else self.scale
        ratio = np.array(self.ratio) if isinstance(self.ratio, tuple) else self.ratio
        flip, seeded, key = self.flip, self.seeded, self.key
        region, idct_scaled = self.method == REGION, self.method != FULL
        row_bytes = self.scratch_row_bytes()

        def decode(batch_indices, my_storage, metadata, storage_state):  # noqa: ANN001, ANN202 - numba
            destination = my_storage[0]
            out_h, out_w = destination.shape[1], destination.shape[2]
            with numba.objmode(seed="int64", temp_storage="uint8[:, ::1]"):
                seed = _EPOCH_SEEDS[key]
                temp_storage = _scratch_rows(key, len(batch_indices), row_bytes)
            for dst_ix in my_range(len(batch_indices)):
                source_ix = batch_indices[dst_ix]
                if seeded:
                    np.random.seed(sample_seed(seed, source_ix))
                field = metadata[source_ix]
                image_data = mem_read(field["data_ptr"], storage_state)
                height = np.uint32(field["height"])
                width = np.uint32(field["width"])
                top, left, crop_h, crop_w = get_crop_c(height, width, scale, ratio)
                bottom, right = top + crop_h, left + crop_w
                if field["mode"] == jpg:
                    denom = dct_denominator(crop_h, crop_w, out_h, out_w) if idct_scaled else FULL_SCALE
                    decoded_h, decoded_w = scaled_down(height, denom), scaled_down(width, denom)
                    if denom != FULL_SCALE:
                        top, bottom = scaled_span(top, crop_h, denom, decoded_h)
                        left, right = scaled_span(left, crop_w, denom, decoded_w)
                    if region:
                        status = region_c(image_data, denom, top, bottom, left, right, temp_storage[dst_ix],
                                          destination[dst_ix], FAST_RESIZE)
                    else:
                        status = imdecode_c(image_data, temp_storage[dst_ix], height, width, height, width,
                                            0, 0, 1, denom, False, False)
                    if status != REGION_OK:  # FFCV's imdecode (tjDecompress2) also gives 0; -1 on damaged data
                        destination[dst_ix][:] = 0
                        with numba.objmode():
                            _record_failure(key, source_ix)
                        continue
                    if not region:
                        pixels = temp_storage[dst_ix].reshape(-1)[:3 * decoded_h * decoded_w].reshape(
                            decoded_h, decoded_w, 3)
                        resize_crop_c(pixels, top, bottom, left, right, destination[dst_ix])
                elif field["mode"] == yuv420:  # whatever the method: FFCV has no decoder for it
                    yuv420_c(image_data, height, width, top, bottom, left, right, destination[dst_ix])
                elif region:
                    crop_resize_c(image_data.reshape(height, width, 3), top, bottom, left, right,
                                  destination[dst_ix], FAST_RESIZE)
                else:
                    resize_crop_c(image_data.reshape(height, width, 3), top, bottom, left, right,
                                  destination[dst_ix])
                if flip and np.random.rand() < FLIP_PROBABILITY:
                    flip_in_place(destination[dst_ix])
            return destination[:len(batch_indices)]

        decode.is_parallel = True
        return decode


class RandomResizedCropDecoder(SeededCropDecoder):
    """torchvision's RandomResizedCrop window (FFCV's sampler), resized to ``output_size``, plus flip."""

    def __init__(self, output_size: tuple[int, int], flip: bool = True, method: str = REGION,
                 scale: tuple[float, float] = RRC_SCALE, ratio: tuple[float, float] = RRC_RATIO):
        super().__init__(output_size, flip, method)
        self.scale = scale
        self.ratio = ratio

    @property
    def get_crop_generator(self):  # noqa: ANN201 - FFCV's protocol: a function to compile
        return get_random_crop


class FixResCropDecoder(SeededCropDecoder):
    """Decode, take the FixRes window, resize it to ``output_size`` (one resize), plus flip."""

    def __init__(self, output_size: tuple[int, int], ratio: float = FIXRES_CROP_RATIO, flip: bool = True,
                 method: str = REGION):
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"FixRes crop ratio must be in (0, 1]: {ratio}")
        super().__init__(output_size, flip, method)
        self.scale = None
        self.ratio = ratio

    @property
    def get_crop_generator(self):  # noqa: ANN201 - FFCV's protocol: a function to compile
        return fixres_crop_window


class CenterCropDecoder(SeededCropDecoder):
    """The val transform: resize + center crop of side ``ratio * min(h, w)``, no flip, no randomness."""

    seeded = False

    def __init__(self, output_size: tuple[int, int], ratio: float = VAL_CROP_RATIO, method: str = REGION):
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"center crop ratio must be in (0, 1]: {ratio}")
        super().__init__(output_size, flip=False, method=method)
        self.scale = None
        self.ratio = ratio

    @property
    def get_crop_generator(self):  # noqa: ANN201 - FFCV's protocol: a function to compile
        return get_center_crop
