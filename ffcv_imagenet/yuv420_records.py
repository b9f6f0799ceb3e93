"""YUV 4:2:0 raw records: an image field of our own, 1.5 bytes per pixel where FFCV's raw takes 3.

A ``yuv420`` record holds the stored image's full-resolution luma plane (Y, height x width bytes),
then its two chroma planes (U = Cb, then V = Cr), each at half resolution in both directions,
ceil(height / 2) x ceil(width / 2) bytes (an odd last row or column averages the pixels it has):
BT.601 full range, the colour space JPEG uses. The metadata is RGBImageField's (mode, width, height,
data pointer), the mode saying what each record holds, so one file can mix JPEG, RGB raw and yuv420
records: ``YUV420_MODE`` beside FFCV's JPEG (0) and raw (1) (beton_format.IMAGE_MODES).

``YUV420ImageField`` is registered with FFCV's reader under its own type id (``YUV420_TYPE_ID``)
when this module is imported (every reader of ours imports it), so FFCV's writer records that id
and FFCV's stock reader, which has no handler for it, refuses the file (``KeyError: np.uint8(89)`` from
its type table) rather than reading 1.5 bytes per pixel as RGB. It subclasses RGBImageField: the rest of
the project opens it as an image field, and its JPEG and RGB raw records are FFCV's own.
"""
from __future__ import annotations

from ctypes import c_int32, c_void_p

import numpy as np
from ffcv.fields import RGBImageField
from ffcv.fields.base import ARG_TYPE, Field
from ffcv.types import TYPE_ID_HANDLER

from .beton_header import YUV420_TYPE_ID
from .jpeg_region import compiled_library

YUV420_MODE = 2  # the metadata's mode of a yuv420 record
RGB, YUV420 = "rgb", "yuv420"
RAW_FORMATS = (RGB, YUV420)  # how a raw record stores its pixels
RGB_CHANNELS = 3
CHROMA_ZERO = 128.0
# BT.601 full range (JFIF): rows give Y, Cb, Cr from R, G, B (Cb and Cr around CHROMA_ZERO)
RGB_TO_YCBCR = np.array([[0.299, 0.587, 0.114],
                         [-0.168736, -0.331264, 0.5],
                         [0.5, -0.418688, -0.081312]])  # float64: planes exact to the rounding


def chroma_size(height: int, width: int) -> tuple[int, int]:
    """(height, width) of each chroma plane: half the image's, rounded up."""
    return (height + 1) // 2, (width + 1) // 2


def yuv420_bytes(height: int, width: int) -> int:
    """A record's size: the luma plane and two chroma planes."""
    chroma_h, chroma_w = chroma_size(height, width)
    return height * width + 2 * chroma_h * chroma_w


def _even(plane: np.ndarray) -> np.ndarray:
    """``plane`` with its last row and column repeated to even sides: a 2x2 mean over the padding is then
    the mean of the pixels an odd edge has."""
    height, width = plane.shape
    return np.pad(plane, ((0, height % 2), (0, width % 2)), mode="edge")


def _half(plane: np.ndarray) -> np.ndarray:
    """2x2 means (an odd edge: means of the pixels it has)."""
    even = _even(plane)
    return (even[0::2, 0::2] + even[0::2, 1::2] + even[1::2, 0::2] + even[1::2, 1::2]) / 4


def _to_bytes(plane: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(plane), 0, 255).astype(np.uint8)


def rgb_to_yuv420(image: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 RGB -> a yuv420 record's bytes: Y, then Cb and Cr at half resolution (means of 2x2)."""
    red, green, blue = (image[:, :, channel].astype(np.float64) for channel in range(RGB_CHANNELS))
    luma, cb, cr = (weights[0] * red + weights[1] * green + weights[2] * blue for weights in RGB_TO_YCBCR)
    return np.concatenate([_to_bytes(luma).reshape(-1), _to_bytes(_half(cb) + CHROMA_ZERO).reshape(-1),
                           _to_bytes(_half(cr) + CHROMA_ZERO).reshape(-1)])


def yuv420_planes(record: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A record's bytes -> its (Y, Cb, Cr) planes, views of ``record``."""
    chroma_h, chroma_w = chroma_size(height, width)
    luma_bytes, chroma_bytes = height * width, chroma_h * chroma_w
    return (record[:luma_bytes].reshape(height, width),
            record[luma_bytes:luma_bytes + chroma_bytes].reshape(chroma_h, chroma_w),
            record[luma_bytes + chroma_bytes:luma_bytes + 2 * chroma_bytes].reshape(chroma_h, chroma_w))


class YUV420ImageField(RGBImageField):
    """RGBImageField whose raw records are stored as YUV 4:2:0 (``raw_format`` yuv420) or RGB (rgb).

    ``write_mode`` is FFCV's (raw, jpg, proportion, smart), with FFCV's rules for which records are
    JPEG; the records it would store raw are stored in ``raw_format``.
    """

    def __init__(self, write_mode: str = "raw", max_resolution: int | None = None, smart_threshold: int | None = None,
                 jpeg_quality: int = 90, compress_probability: float = 0.5, raw_format: str = YUV420):
        if raw_format not in RAW_FORMATS:
            raise ValueError(f"raw format must be one of {', '.join(RAW_FORMATS)}: {raw_format!r}")
        super().__init__(write_mode, max_resolution, smart_threshold, jpeg_quality, compress_probability)
        self.raw_format = raw_format

    @staticmethod
    def from_binary(binary: ARG_TYPE) -> Field:
        return YUV420ImageField()

    def stores_jpeg(self, image: np.ndarray) -> bool:
        """FFCV's choice for a record (proportion mode draws from numpy's global generator, as FFCV's does)."""
        if self.write_mode == "jpg":
            return True
        if self.write_mode == "smart":
            return self.smart_threshold is not None and image.nbytes > self.smart_threshold
        if self.write_mode == "proportion":
            return bool(np.random.rand() < self.proportion)
        return False

    def encode(self, destination: np.ndarray, image: np.ndarray, malloc) -> None:  # noqa: ANN001 - FFCV's malloc
        from ffcv.fields.rgb_image import resizer

        image = resizer(np.asarray(image), self.max_resolution)
        as_jpeg = self.stores_jpeg(image)
        if as_jpeg or self.raw_format == RGB:  # FFCV's own record, without a second draw
            stock = RGBImageField("jpg" if as_jpeg else "raw", jpeg_quality=self.jpeg_quality)
            stock.encode(destination, image, malloc)
            return
        record = rgb_to_yuv420(image)
        destination["mode"] = YUV420_MODE
        destination["height"], destination["width"] = image.shape[:2]
        destination["data_ptr"], storage = malloc(record.nbytes)
        storage[:] = record


TYPE_ID_HANDLER[YUV420_TYPE_ID] = YUV420ImageField


# ---------------------------------------------------------------- decoding (csrc/yuv420.cpp)
YUV420_OK = 0
_yuv420_crop_resize = compiled_library.yuv420_crop_resize
_yuv420_crop_resize.argtypes = [c_void_p, c_int32, c_int32, c_int32, c_int32, c_int32, c_int32,
                                c_void_p, c_int32, c_int32]
_yuv420_crop_resize.restype = c_int32


def yuv420_crop_resize(record: np.ndarray, height: int, width: int, top: int, bottom: int, left: int, right: int,
                       destination: np.ndarray) -> int:
    """A yuv420 record (its bytes; the image height x width) -> ``destination`` (h, w, 3) RGB: the window
    [top, bottom) x [left, right), resized plane by plane with the decoders' area resize, then converted.
    YUV420_OK, or negative for a window outside the image. FFCV's libffcv shape: numba compiles it."""
    return _yuv420_crop_resize(record.ctypes.data, height, width, top, bottom, left, right,
                               destination.ctypes.data, destination.shape[0], destination.shape[1])


def decode_yuv420(record: np.ndarray, height: int, width: int) -> np.ndarray:
    """A whole yuv420 record at its stored size, as (height, width, 3) RGB."""
    image = np.empty((height, width, RGB_CHANNELS), dtype=np.uint8)
    if yuv420_crop_resize(record, height, width, 0, height, 0, width, image) != YUV420_OK:
        raise ValueError(f"not a {width}x{height} yuv420 record")
    return image
