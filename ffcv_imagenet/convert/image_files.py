"""Source images on disk: finding them, rejecting bad ones cheaply, decoding good ones to RGB.

Finding: every file under a class folder is a candidate or is reported with a
reason (hidden, broken link, not an image extension, not a regular file); hidden
folders and linked folders already walked are reported and not entered.
Rejecting: ``probe`` reads headers and the last few KiB, never a full JPEG/PNG
decode, so checking a million files costs little next to converting them.
Decoding: ``load_rgb`` decodes once, at a reduced DCT scale when the JPEG is at
least twice its stored size, into an HxWx3 uint8 RGB array whatever the mode.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .area_resize import shrink_area
from ..jpeg_region import decode_rgb

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff", ".gif")
JPEG_EOI = b"\xff\xd9"
JPEG_TAIL_BYTES = 4096  # some cameras append bytes after the end-of-image marker
WHITE = (255, 255, 255)  # transparent pixels are composited over white
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
UINT16_TO_UINT8 = 257  # 65535 / 255
DCT_SCALES = (1, 2, 4, 8)  # the reductions PIL's draft mode asks libjpeg for

Sample = tuple[str, int]  # (path, label)
Skipped = tuple[str, str]  # (path, reason)


def is_hidden(name: str) -> bool:
    return name.startswith(".")


def scan_class(folder: Path, label: int) -> tuple[list[Sample], list[Skipped]]:
    """Candidate images under one class folder, recursively and in name order, links followed."""
    samples: list[Sample] = []
    skipped: list[Skipped] = []
    seen: set[tuple[int, int]] = set()  # (device, inode) of folders walked: linked folders may loop
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        info = os.stat(dirpath)
        identity = (info.st_dev, info.st_ino)
        if identity in seen:
            skipped.append((dirpath, "folder already read (symbolic link loop or duplicate)"))
            dirnames[:] = []
            continue
        seen.add(identity)
        skipped += [(os.path.join(dirpath, d), "hidden folder (not read)") for d in sorted(dirnames) if is_hidden(d)]
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            reason = _not_a_candidate(path, name)
            if reason:
                skipped.append((path, reason))
            else:
                samples.append((path, label))
    return samples, skipped


def _not_a_candidate(path: str, name: str) -> str | None:
    if is_hidden(name):
        return "hidden file"
    if not os.path.exists(path):
        return "broken symbolic link"
    if not name.lower().endswith(IMAGE_EXTENSIONS):
        return "not an image file extension"
    if not os.path.isfile(path):
        return "not a regular file"  # a FIFO named x.jpg would block the reader
    return None


def _jpeg_is_complete(path: str) -> bool:
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - JPEG_TAIL_BYTES))
        return JPEG_EOI in handle.read()


def _describe(err: Exception) -> str:
    lines = str(err).splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def probe(path: str) -> str | None:
    """Why ``path`` cannot be converted, or None. Cheap: headers, PNG CRCs, a JPEG's tail."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        with Image.open(path) as image:
            width, height = image.size
            kind = image.format
            if kind == "PNG":
                image.verify()  # every chunk's CRC: catches truncation and bit rot
            elif kind != "JPEG":
                image.load()  # rare formats: a full decode is the only reliable check
        if kind == "JPEG" and not _jpeg_is_complete(path):
            return "truncated JPEG (no end-of-image marker)"
        if width < 1 or height < 1:
            return f"degenerate size {width}x{height}"
    except UnidentifiedImageError:
        return "unreadable image: not a format PIL recognises"
    except Exception as err:  # PIL raises many types for garbage input
        return f"unreadable image: {_describe(err)}"
    return None


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> HxWx3 uint8 RGB (16-bit scaled down, alpha over white)."""
    if image.mode in SIXTEEN_BIT_MODES or image.mode == "I":
        # PIL's convert would clip at 255 instead of scaling
        wide = np.asarray(image, dtype=np.uint32)
        if image.mode in SIXTEEN_BIT_MODES or wide.max() > 255:
            wide = (wide + UINT16_TO_UINT8 // 2) // UINT16_TO_UINT8
        grey = np.minimum(wide, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGB", image.size, WHITE)
        background.paste(image, mask=image.getchannel("A"))
        image = background
    if image.mode != "RGB":
        image = image.convert("RGB")  # (convert copies even when nothing changes)
    return np.asarray(image)


def stored_size(width: int, height: int, max_resolution: int) -> tuple[int, int]:
    """(width, height) RGBImageField stores for a source of this size: FFCV's own arithmetic
    (``ffcv.fields.rgb_image.resizer``), except that no side drops to 0 (which crashes its encoder)."""
    ratio = max_resolution / max(width, height)
    if ratio >= 1:
        return width, height
    new_width, new_height = (ratio * np.array([width, height])).astype(int)
    return max(1, int(new_width)), max(1, int(new_height))


def draft_size(width: int, height: int, max_resolution: int) -> tuple[int, int]:
    """The smallest size a DCT-domain downscale may reach: the longest side stays >= max_resolution."""
    scale = min(1.0, max_resolution / max(width, height))
    return max(1, int(np.ceil(width * scale))), max(1, int(np.ceil(height * scale)))


def load_rgb(source: str | bytes, max_resolution: int, exact: bool = True) -> np.ndarray:
    """Decode ``source`` (a file name, or a file's bytes) once to RGB at the size RGBImageField stores,
    so its own resize is a no-op. ``exact=False`` (a record stored as JPEG): the last shrink is the
    same area filter in fixed point (``shrink_area``), not OpenCV's bytes.

    A JPEG at least twice that size is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT
    scaling, PIL's draft mode) for a fraction of the work; the last step is the area
    resize RGBImageField itself would do, to the same size (the same bytes: area_resize). A colour
    JPEG given as bytes skips PIL's decoder (see ``_decoded_without_pil``).
    """
    data = source if isinstance(source, bytes) else None
    with Image.open(source if data is None else io.BytesIO(data)) as image:
        size = image.size
        target = stored_size(*size, max_resolution)
        if image.format == "JPEG" and target != size:
            image.draft("RGB", draft_size(*size, max_resolution))
        pixels = _decoded_without_pil(data, image, size)
        if pixels is None:
            pixels = to_rgb_array(image)
    if (pixels.shape[1], pixels.shape[0]) == target:
        return pixels
    return shrink_area(pixels, target, exact)


def _decoded_without_pil(data: bytes | None, image: Image.Image, size: tuple[int, int]) -> np.ndarray | None:
    """A JPEG that PIL would decode to RGB at ``size`` or drafted to a DCT scale, decoded by the same libjpeg
    with PIL's settings straight into an array: the same pixels without PIL's two copies (about a fifth of
    a decode's time). None for anything else, or a file libjpeg warns about (PIL then decodes it)."""
    if data is None or image.format != "JPEG" or image.mode != "RGB":
        return None
    scale = next((scale for scale in DCT_SCALES if draft_of(size, scale) == image.size), None)
    if scale is None:
        return None
    return decode_rgb(data, height=image.size[1], width=image.size[0], scale_denom=scale)


def draft_of(size: tuple[int, int], scale: int) -> tuple[int, int]:
    """The size libjpeg (and PIL's draft) decodes an image of ``size`` to at 1/``scale``."""
    return (size[0] + scale - 1) // scale, (size[1] + scale - 1) // scale
