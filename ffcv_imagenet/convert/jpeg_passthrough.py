"""JPEG pass-through: a source JPEG that needs no work is stored with its own bytes.

A record is passed through when the write mode stores it as JPEG anyway and the
file is already what a JPEG record should be: baseline (progressive files cost far
more to decode, every epoch), 8-bit, three YCbCr components (CMYK, greyscale and
Adobe-RGB files go through the usual conversion), no side above the stored size
(else it is resized), and decodable to its end marker without a single libjpeg
warning (extra bytes before a marker, a damaged or cut scan: FFCV's reader reports those,
our decoders refuse them at training time; the usual path re-encodes what PIL makes of
them). That last test entropy-decodes the whole file with libjpeg's own warning policy,
the library our region decoder and FFCV's TurboJPEG use (``jpeg_region.entropy_check``):
Huffman decoding is most of a decode's cost and cannot be skipped, but the IDCT and colour
conversion can. Everything else takes the usual path: decode, resize, re-encode.

FFCV records a field by its class, so the field stays an ``RGBImageField``; only
its ``encode`` is replaced on the instance, to store a ``SourceJpeg`` as it is.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np
from ffcv.fields import RGBImageField

from ..beton_format import JPEG_MODE
from ..jpeg_region import entropy_check

SOI = b"\xff\xd8"
MARKER_PREFIX = 0xFF
BASELINE_SOF = 0xC0  # SOF0: baseline sequential DCT, Huffman coded
# SOF markers are C0-CF except DHT (C4), JPG (C8) and DAC (CC)
SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xD8)])  # TEM, RST0-7: no length field
START_OF_SCAN = 0xDA
ADOBE_APP14 = 0xEE
ADOBE_TRANSFORM_OFFSET = 11  # "Adobe" + version (2) + flags0 (2) + flags1 (2), then the transform byte
ADOBE_NO_TRANSFORM = 0  # three components stored as RGB, not YCbCr
EIGHT_BIT = 8
YCBCR_COMPONENTS = 3
RGB_CHANNELS = 3


@dataclass(frozen=True)
class JpegHeader:
    """What the frame header (SOFn) and an Adobe APP14 segment say about a JPEG."""

    sof_marker: int
    precision: int
    width: int
    height: int
    components: int
    adobe_transform: int | None  # None: no Adobe segment (JFIF: YCbCr)


@dataclass(frozen=True)
class SourceJpeg:
    """A source file's bytes to store as they are, with the size its frame header gives."""

    data: bytes
    width: int
    height: int


def read_jpeg_header(data: bytes) -> JpegHeader | None:
    """The frame header of JPEG bytes, or None if they are not a JPEG or it is unreadable."""
    if not data.startswith(SOI):
        return None
    position, adobe_transform = len(SOI), None
    while position + 4 <= len(data):
        if data[position] != MARKER_PREFIX:
            return None
        marker = data[position + 1]
        if marker == MARKER_PREFIX:  # fill byte before a marker
            position += 1
            continue
        if marker in STANDALONE_MARKERS:
            position += 2
            continue
        length = int.from_bytes(data[position + 2:position + 4], "big")
        segment = data[position + 4:position + 2 + length]
        if marker == ADOBE_APP14 and segment.startswith(b"Adobe") and len(segment) > ADOBE_TRANSFORM_OFFSET:
            adobe_transform = segment[ADOBE_TRANSFORM_OFFSET]
        if marker in SOF_MARKERS and len(segment) >= 6:
            return JpegHeader(sof_marker=marker, precision=segment[0], height=int.from_bytes(segment[1:3], "big"),
                              width=int.from_bytes(segment[3:5], "big"), components=segment[5],
                              adobe_transform=adobe_transform)
        if marker == START_OF_SCAN:
            return None  # scan data before any frame header
        position += 2 + length
    return None


def why_not_passed_through(header: JpegHeader | None, max_resolution: int) -> str | None:
    """Why a JPEG with this header needs the usual conversion, or None if its bytes can be kept."""
    if header is None:
        return "not a JPEG"
    if header.sof_marker != BASELINE_SOF:
        return "not baseline (progressive, lossless or arithmetic coded)"
    if header.precision != EIGHT_BIT:
        return f"{header.precision}-bit samples"
    if header.components != YCBCR_COMPONENTS or header.adobe_transform == ADOBE_NO_TRANSFORM:
        return f"{header.components} components" + (" stored as RGB" if header.components == 3 else "")
    if header.width < 1 or header.height < 1:
        return f"degenerate size {header.width}x{header.height}"
    if max(header.width, header.height) > max_resolution:
        return f"larger than {max_resolution} px: resized"
    return None


def decodes_cleanly(source: SourceJpeg) -> bool:
    """Every coefficient of the file decodes, up to its end marker, without a libjpeg warning: what FFCV's
    reader and our decoders need (they refuse such a record). Entropy decoding only, no pixels."""
    return entropy_check(source.data)


def passthrough_candidate(data: bytes, max_resolution: int) -> SourceJpeg | None:
    """A file's bytes as a SourceJpeg if its header qualifies (``decodes_cleanly`` is the costly last test)."""
    header = read_jpeg_header(data)
    if why_not_passed_through(header, max_resolution) is not None:
        return None
    return SourceJpeg(data, header.width, header.height)


def may_store_as_jpeg(field: RGBImageField) -> bool:
    return field.write_mode != "raw"


def chooses_jpeg(field: RGBImageField, width: int, height: int, draw_seed: list[int]) -> bool:
    """Whether ``field.encode`` will store an image of this (unresized) size as JPEG: FFCV's own rule.
    Proportion mode's draw is taken from numpy's global generator, just seeded with ``draw_seed``, and
    put back by seeding it again (a tenth of the cost of saving and restoring its state), so that
    ``encode`` makes the same draw."""
    if field.write_mode == "jpg":
        return True
    if field.write_mode == "smart":
        return field.smart_threshold is not None and width * height * RGB_CHANNELS > field.smart_threshold
    if field.write_mode == "proportion":
        draw = np.random.rand()
        np.random.seed(draw_seed)
        return draw < field.proportion
    return False


def _encode(stock_encode: Callable, destination: np.ndarray, sample: object,
            malloc: Callable) -> None:
    if not isinstance(sample, SourceJpeg):
        stock_encode(destination, sample, malloc)
        return
    destination["mode"] = JPEG_MODE
    destination["height"], destination["width"] = sample.height, sample.width
    data = np.frombuffer(sample.data, dtype=np.uint8)
    destination["data_ptr"], storage = malloc(data.nbytes)
    storage[:] = data


def with_passthrough(field: RGBImageField) -> RGBImageField:
    """``field``, able to store a SourceJpeg's bytes as a JPEG record (FFCV's metadata: mode, height, width)."""
    field.encode = functools.partial(_encode, field.encode)
    return field
