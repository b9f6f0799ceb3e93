"""ctypes entry points of the compiled ``_jpeg_region`` library, callable from numba without the GIL.

``crop_decode_resize`` decodes only the iMCU-aligned region of a JPEG around a window, at a 1/d
IDCT scale, and resizes the window once; ``crop_resize`` resizes a window of a raw record. Both
take an OpenCV interpolation code, or FAST_RESIZE: an area filter throughout, an exact integer box
average first once the window is twice the output per side, then the rest of the shrink with
OpenCV's INTER_AREA weights in cheaper loops (see csrc/jpeg_region.cpp and csrc/area_resize.cpp).
The wrappers have FFCV's libffcv shape (arrays in, their
``.ctypes.data`` out) so ``Compiler.compile`` can compile them into the loader's pipeline.
``entropy_check`` and ``decode_rgb`` are called from Python, by the conversion: whether a JPEG decodes
without a warning, and a whole JPEG decoded the way PIL decodes it, without PIL's copies.
"""
from __future__ import annotations

from ctypes import CDLL, c_int32, c_uint32, c_uint64, c_void_p

import numpy as np

try:
    from . import _jpeg_region
except ImportError as err:  # not built, or the system libjpeg lacks the partial-decode API
    raise ImportError(
        f"ffcv_imagenet's region JPEG decoder is unavailable ({err}). It is built by `pip install -e .` and "
        "needs a C++ compiler, libjpeg-turbo >= 1.5 (jpeg_crop_scanline, jpeg_skip_scanlines) and OpenCV 4 "
        "headers: run scripts/setup.sh, then reinstall.") from None

REGION_OK = 0  # crop_decode_resize's return value on success; negative on damaged data or a bad window
FAST_RESIZE = -1  # in place of an OpenCV interpolation code: the cheaper area resize of csrc/jpeg_region.cpp

compiled_library = CDLL(_jpeg_region.__file__)  # also holds area_resize (area_resize.py)
_crop_decode_resize = compiled_library.crop_decode_resize
_crop_decode_resize.argtypes = [c_void_p, c_uint64, c_uint32, c_int32, c_int32, c_int32, c_int32,
                                c_void_p, c_uint64, c_void_p, c_int32, c_int32, c_int32]
_crop_decode_resize.restype = c_int32
_crop_resize = compiled_library.crop_resize
_crop_resize.argtypes = [c_void_p, c_int32, c_int32, c_int32, c_int32, c_int32, c_int32,
                         c_void_p, c_int32, c_int32, c_int32]
_crop_resize.restype = None
_entropy_check = compiled_library.entropy_check
_entropy_check.argtypes = [c_void_p, c_uint64]
_entropy_check.restype = c_int32
_decode_rgb = compiled_library.decode_rgb
_decode_rgb.argtypes = [c_void_p, c_uint64, c_void_p, c_int32, c_int32, c_int32]
_decode_rgb.restype = c_int32


def crop_decode_resize(source: np.ndarray, scale_denom: int, top: int, bottom: int, left: int, right: int,
                       scratch: np.ndarray, destination: np.ndarray, interpolation: int) -> int:
    """JPEG bytes -> ``destination`` (h, w, 3): the window [top, bottom) x [left, right), in 1/d-scaled pixels."""
    return _crop_decode_resize(source.ctypes.data, source.size, scale_denom, top, bottom, left, right,
                               scratch.ctypes.data, scratch.size,
                               destination.ctypes.data, destination.shape[0], destination.shape[1], interpolation)


def crop_resize(source: np.ndarray, top: int, bottom: int, left: int, right: int,
                destination: np.ndarray, interpolation: int) -> None:
    """(h, w, 3) uint8 image -> ``destination``: the window resized with ``interpolation``."""
    _crop_resize(source.ctypes.data, source.shape[0], source.shape[1], top, bottom, left, right,
                 destination.ctypes.data, destination.shape[0], destination.shape[1], interpolation)


def entropy_check(source: bytes) -> bool:
    """Whether JPEG bytes decode to their end marker without a libjpeg error or warning (Huffman decoding only)."""
    return _entropy_check(source, len(source)) == REGION_OK


def decode_rgb(source: bytes, height: int, width: int, scale_denom: int = 1) -> np.ndarray | None:
    """A whole JPEG at full size, or at 1/``scale_denom`` (1, 2, 4 or 8: PIL's draft mode), as (height, width, 3)
    RGB, the pixels PIL decodes (accurate IDCT, fancy upsampling); None on any libjpeg warning or a size
    mismatch (decode it with PIL instead)."""
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    status = _decode_rgb(source, len(source), pixels.ctypes.data, height, width, scale_denom)
    return pixels if status == REGION_OK else None
