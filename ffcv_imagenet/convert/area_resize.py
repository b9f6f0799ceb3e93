"""OpenCV's ``INTER_AREA`` shrink, byte for byte, at a fraction of its cost (csrc/area_resize.cpp).

The conversion stores every photo above ``max_resolution`` area-resized, as RGBImageField does
with ``cv2.resize(..., INTER_AREA)``. At a non-integer ratio (700 px to 500, or a large photo
after a 1/2 DCT-scaled decode) OpenCV's loop costs more than decoding the file; ours computes
the same sums in the same order, so the records stay identical to the ffcv-imagenet way's.
At an integer ratio OpenCV takes a different, already vectorised path, which is kept. On x86-64 the
compiled shrink exists for SSE2 and AVX2, the same arithmetic; the AVX2 copy runs where the CPU has it.
"""
from __future__ import annotations

import sys
from ctypes import c_int32, c_void_p

import cv2
import numpy as np

from ..jpeg_region import compiled_library

EXACT = 0  # area_resize's return value when it wrote the output

_area_resize = compiled_library.area_resize
_area_resize.argtypes = [c_void_p, c_int32, c_int32, c_void_p, c_int32, c_int32]
_area_resize.restype = c_int32
_area_shrink = compiled_library.area_shrink  # the decoders' fixed-point area shrink
_area_shrink.argtypes = [c_void_p, c_int32, c_int32, c_void_p, c_int32, c_int32]
_area_shrink.restype = c_int32
_area_resize_use_avx2 = compiled_library.area_resize_use_avx2
_area_resize_use_avx2.argtypes = [c_int32]
_area_resize_use_avx2.restype = c_int32


def integer_ratio(source_side: int, output_side: int) -> bool:
    """OpenCV's test for its integer-ratio path: its scale, 1 / (output / source), within DBL_EPSILON of a
    whole number."""
    scale = 1.0 / (output_side / source_side)
    return abs(scale - round(scale)) < sys.float_info.epsilon


def shrink_area(pixels: np.ndarray, size: tuple[int, int], exact: bool = True) -> np.ndarray:
    """``cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)`` for (h, w, 3) uint8 ``pixels`` and an
    output ``size`` (width, height) no larger on either side. ``exact=False``: the same area weights in
    8-bit fixed point (the training decoders' shrink, a unit off here and there, a fifth of the cost),
    for pixels that a lossy JPEG encode follows, whose error is several times larger."""
    width, height = size
    source_height, source_width = pixels.shape[:2]
    if (pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8
            or (integer_ratio(source_width, width) and integer_ratio(source_height, height))):
        return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    source = np.ascontiguousarray(pixels)
    out = np.empty((height, width, 3), dtype=np.uint8)
    shrink = _area_resize if exact else _area_shrink
    if shrink(source.ctypes.data, source_height, source_width, out.ctypes.data, height, width) != EXACT:
        raise ValueError(f"area_resize shrinks only: {source_width}x{source_height} to {width}x{height}")
    return out


def use_avx2(wanted: bool) -> bool:
    """Run the AVX2 copy of the compiled shrink (where the CPU has AVX2) or the SSE2 one, for this process
    (tests run both); whether the AVX2 copy now runs."""
    return bool(_area_resize_use_avx2(int(wanted)))
