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

Those tests say a file *can* be kept (mode ``always``). The default, ``auto``, keeps it only
when it also costs no decode time against the re-encode: chroma subsampled 2x2 (4:2:0, as
OpenCV's re-encode writes; 4:4:4 has twice the chroma to entropy-decode and IDCT) and every
quantisation step at least the re-encode's at ``--jpeg-quality`` (finer tables keep more
coefficients, so more bytes to entropy-decode, every epoch). The tables are compared element by
element, in the file's own (zigzag) order, against those OpenCV writes at that quality.
``never`` re-encodes every JPEG record, as ffcv-imagenet does.

FFCV records a field by its class, so the field stays an ``RGBImageField``; only
its ``encode`` is replaced on the instance, to store a ``SourceJpeg`` as it is.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..beton_format import JPEG_MODE
from ..jpeg_region import entropy_check

if TYPE_CHECKING:  # conversion imports the modes before FFCV is needed
    from ffcv.fields import RGBImageField

SOI = b"\xff\xd8"
MARKER_PREFIX = 0xFF
BASELINE_SOF = 0xC0  # SOF0: baseline sequential DCT, Huffman coded
# SOF markers are C0-CF except DHT (C4), JPG (C8) and DAC (CC)
SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xD8)])  # TEM, RST0-7: no length field
START_OF_SCAN = 0xDA
DEFINE_QUANTISATION = 0xDB  # DQT: one or more tables, each Pq/Tq then 64 steps of 1 (Pq 0) or 2 bytes
QUANTISATION_STEPS = 64
ADOBE_APP14 = 0xEE
ADOBE_TRANSFORM_OFFSET = 11  # "Adobe" + version (2) + flags0 (2) + flags1 (2), then the transform byte
ADOBE_NO_TRANSFORM = 0  # three components stored as RGB, not YCbCr
EIGHT_BIT = 8
YCBCR_COMPONENTS = 3
RGB_CHANNELS = 3
CHROMA_420 = ((2, 2), (1, 1), (1, 1))  # (horizontal, vertical) sampling factors of Y, Cb, Cr

AUTO, ALWAYS, NEVER = "auto", "always", "never"
PASSTHROUGH_MODES = (AUTO, ALWAYS, NEVER)


def passthrough_mode(value: str | bool) -> str:
    """A pass-through mode from a mode name, or from the on/off switch it was before (on: ``always``)."""
    if isinstance(value, bool):
        return ALWAYS if value else NEVER
    if value not in PASSTHROUGH_MODES:
        raise ValueError(f"JPEG pass-through must be one of {', '.join(PASSTHROUGH_MODES)}: {value!r}")
    return value


@dataclass(frozen=True)
class JpegHeader:
    """What the frame header (SOFn) and an Adobe APP14 segment say about a JPEG."""

    sof_marker: int
    precision: int
    width: int
    height: int
    components: int
    adobe_transform: int | None  # None: no Adobe segment (JFIF: YCbCr)
    sampling: tuple[tuple[int, int], ...] = ()  # (horizontal, vertical) factors per component
    table_ids: tuple[int, ...] = ()  # quantisation table of each component
    tables: tuple[tuple[int, tuple[int, ...]], ...] = ()  # (id, 64 steps in zigzag order), as defined (DQT)

    def component_tables(self) -> list[tuple[int, ...]] | None:
        """Each component's quantisation steps, or None if a component's table is not defined."""
        defined = dict(self.tables)
        if any(table_id not in defined for table_id in self.table_ids):
            return None
        return [defined[table_id] for table_id in self.table_ids]


@dataclass(frozen=True)
class SourceJpeg:
    """A source file's bytes to store as they are, with the size its frame header gives."""

    data: bytes
    width: int
    height: int


def read_jpeg_header(data: bytes) -> JpegHeader | None:
    """The frame header of JPEG bytes (with the quantisation tables defined before the first scan),
    or None if they are not a JPEG or it is unreadable."""
    if not data.startswith(SOI):
        return None
    position, adobe_transform, frame, tables = len(SOI), None, None, {}
    while position + 4 <= len(data):
        if data[position] != MARKER_PREFIX:
            break  # unreadable from here: a frame header already read still stands
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
        if marker == DEFINE_QUANTISATION:
            tables.update(_quantisation_tables(segment))
        if marker in SOF_MARKERS and len(segment) >= 6 and frame is None:
            frame = (marker, segment)
        if marker == START_OF_SCAN:
            break  # every table a scan uses is defined before it
        position += 2 + length
    return None if frame is None else _header(*frame, adobe_transform, tables)


def _quantisation_tables(segment: bytes) -> dict[int, tuple[int, ...]]:
    tables, at = {}, 0
    while at < len(segment):
        step_bytes, table_id = 1 + (segment[at] >> 4), segment[at] & 0x0F
        steps = segment[at + 1:at + 1 + step_bytes * QUANTISATION_STEPS]
        if len(steps) < step_bytes * QUANTISATION_STEPS:
            break  # a cut segment: the table stays undefined
        tables[table_id] = (tuple(steps) if step_bytes == 1  # 8-bit steps, nearly every file: bytes are ints
                            else tuple(int.from_bytes(steps[i:i + step_bytes], "big")
                                       for i in range(0, len(steps), step_bytes)))
        at += 1 + step_bytes * QUANTISATION_STEPS
    return tables


def _header(marker: int, segment: bytes, adobe_transform: int | None,
            tables: dict[int, tuple[int, ...]]) -> JpegHeader:
    components = segment[5]
    specs = [segment[6 + 3 * i:9 + 3 * i] for i in range(components) if len(segment) >= 9 + 3 * i]
    return JpegHeader(sof_marker=marker, precision=segment[0], height=int.from_bytes(segment[1:3], "big"),
                      width=int.from_bytes(segment[3:5], "big"), components=components,
                      adobe_transform=adobe_transform,
                      sampling=tuple((spec[1] >> 4, spec[1] & 0x0F) for spec in specs),
                      table_ids=tuple(spec[2] for spec in specs), tables=tuple(sorted(tables.items())))


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


@functools.lru_cache(maxsize=8)
def reencode_tables(jpeg_quality: int) -> tuple[tuple[int, ...], ...]:
    """The quantisation steps (Y, Cb, Cr; zigzag order) of the re-encode at ``jpeg_quality``: those of
    the encoder FFCV's field uses (OpenCV's), read from a tiny image it encodes."""
    import cv2

    encoded = cv2.imencode(".jpg", np.zeros((8, 8, RGB_CHANNELS), dtype=np.uint8),
                           [int(cv2.IMWRITE_JPEG_QUALITY), jpeg_quality])[1].tobytes()
    return tuple(read_jpeg_header(encoded).component_tables())


def why_slower_than_reencoded(header: JpegHeader, jpeg_quality: int) -> str | None:
    """Why keeping this JPEG's bytes would cost decode time against re-encoding it at ``jpeg_quality``
    (``auto``'s extra tests), or None if it would not. ``header`` already passed ``why_not_passed_through``."""
    if header.sampling != CHROMA_420:
        return "chroma not subsampled 2x2 (4:2:0)"
    source = header.component_tables()
    if source is None:
        return "a quantisation table is missing"
    for name, steps, reference in zip(("luma", "chroma", "chroma"), source, reencode_tables(jpeg_quality)):
        if min(np.subtract(steps, reference)) < 0:
            return f"{name} quantisation finer than quality {jpeg_quality}'s"
    return None


CHROMA_NAMES = {CHROMA_420: "4:2:0", ((1, 1), (1, 1), (1, 1)): "4:4:4", ((2, 1), (1, 1), (1, 1)): "4:2:2"}
GREYSCALE, OTHER_SAMPLING = "greyscale", "other"
QUALITIES = range(1, 101)


def chroma_sampling(header: JpegHeader) -> str:
    """'4:2:0', '4:4:4', '4:2:2', 'greyscale' or 'other', from the frame header's sampling factors."""
    if header.components == 1:
        return GREYSCALE
    return CHROMA_NAMES.get(header.sampling, OTHER_SAMPLING)


def estimated_quality(header: JpegHeader) -> int | None:
    """The libjpeg quality whose luma table is nearest this JPEG's (sum of absolute step differences),
    or None without a luma table. Files from libjpeg-based encoders (PIL, OpenCV, most cameras' and
    Flickr's) give back the quality they were saved at."""
    tables = header.component_tables()
    if not tables:
        return None
    distances = np.abs(luma_tables_by_quality() - np.array(tables[0])).sum(axis=1)
    return QUALITIES[int(distances.argmin())]  # the first nearest, the lowest quality on a tie


@functools.lru_cache(maxsize=1)
def luma_tables_by_quality() -> np.ndarray:
    """Row q - 1: the luma steps of the re-encode at quality q (100 encodes, once per process: a
    quality estimate is made for each of inspect's sampled headers)."""
    return np.array([reencode_tables(quality)[0] for quality in QUALITIES])


def decodes_cleanly(source: SourceJpeg) -> bool:
    """Every coefficient of the file decodes, up to its end marker, without a libjpeg warning: what FFCV's
    reader and our decoders need (they refuse such a record). Entropy decoding only, no pixels."""
    return entropy_check(source.data)


def passthrough_candidate(data: bytes, max_resolution: int, mode: str = ALWAYS,
                          jpeg_quality: int = 90) -> SourceJpeg | None:
    """A file's bytes as a SourceJpeg if its header qualifies under ``mode`` (``decodes_cleanly`` is
    the costly last test); ``jpeg_quality``: the re-encode's, which ``auto`` compares tables with."""
    header = read_jpeg_header(data)
    if mode == NEVER or why_not_passed_through(header, max_resolution) is not None:
        return None
    if mode == AUTO and why_slower_than_reencoded(header, jpeg_quality) is not None:
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
