"""Every kind of dirty file the issue lists, as a real file on disk, converted for real.

Good files must become RGB records with the right label and the right pixels;
bad ones must be skipped, listed with their reason, counted, and never reach the
.beton.
"""
from __future__ import annotations

import io
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from ffcv_imagenet.beton_format import JPEG_MODE
from ffcv_imagenet.convert.conversion import (ConversionSettings, convert_imagefolder, read_index, sidecar_path,
                                      skipped_report_path)
from ffcv_imagenet.convert.image_files import load_rgb, probe
from ffcv_imagenet.convert.inspection import image_metadata, labels, open_beton, read_image

MAX_RESOLUTION = 500
LOSSY_TOLERANCE = 4.0  # mean absolute difference allowed after a JPEG/WEBP round trip
FAST_DECODE_TOLERANCE = 1.5  # mean absolute difference of a DCT-downscaled decode from decode-then-resize
GRAIN = 2.0  # pixel noise of the test photos: real texture, small enough for a JPEG tolerance


def photo(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth colour field with grain: compresses like a photograph, not like noise."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (3, 3, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    return np.clip(np.asarray(coarse) + rng.normal(0, GRAIN, (height, width, 3)), 0, 255).astype(np.uint8)


def save(path: Path, image: Image.Image, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def png_with_garbled_pixels(path: Path, pixels: np.ndarray) -> None:
    """A PNG whose chunk CRCs are all valid but whose compressed pixel data is garbage: it passes
    the cheap probe and fails only when decoded, inside a writer process."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    tag = data.index(b"IDAT")
    end = tag + 4 + int.from_bytes(data[tag - 4:tag], "big")
    data[tag + 6:end] = b"\xff" * (end - tag - 6)  # keep the 2-byte zlib header, garble the stream
    data[end:end + 4] = zlib.crc32(bytes(data[tag:end])).to_bytes(4, "big")
    path.write_bytes(bytes(data))


@dataclass
class Good:
    label: int
    expected: np.ndarray  # RGB the record must hold (before any resize)
    lossless: bool  # source stored losslessly: a raw record must match exactly


def build_dirty_tree(root: Path) -> tuple[dict[str, Good], dict[str, str]]:
    """Returns (good files by name, bad files by name -> a word their skip reason must contain)."""
    a, b = root / "class_a", root / "class_b"
    good: dict[str, Good] = {}

    upper = photo(60, 80, 1)
    save(a / "good_upper.JPEG", Image.fromarray(upper), quality=90)
    good["good_upper.JPEG"] = Good(0, upper, False)
    cmyk = photo(50, 70, 2)
    save(a / "cmyk.jpg", Image.fromarray(cmyk).convert("CMYK"), quality=95)
    good["cmyk.jpg"] = Good(0, cmyk, False)
    grey = np.asarray(Image.fromarray(photo(40, 40, 3)).convert("L"))
    save(a / "gray.jpg", Image.fromarray(grey), quality=90)
    good["gray.jpg"] = Good(0, np.repeat(grey[:, :, None], 3, axis=2), False)
    palette = Image.fromarray(photo(32, 48, 5)).convert("P", palette=Image.ADAPTIVE)
    save(a / "palette.png", palette)
    good["palette.png"] = Good(0, np.asarray(palette.convert("RGB")), True)
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)
    rgba[:10] = (255, 0, 0, 255)  # top half opaque red, bottom half fully transparent
    save(a / "rgba.PNG", Image.fromarray(rgba, "RGBA"))
    good["rgba.PNG"] = Good(0, np.where(np.arange(20)[:, None, None] < 10, [255, 0, 0], 255).astype(np.uint8)
                            * np.ones((20, 20, 3), np.uint8), True)
    grey16 = np.full((16, 16), 65535, dtype=np.uint16)
    grey16[8:] = 32768  # half scale: 128 in 8 bits, not clipped to 255
    save(a / "grey16.png", Image.fromarray(grey16))
    good["grey16.png"] = Good(0, np.where(np.arange(16)[:, None, None] < 8, 255, 128).astype(np.uint8)
                              * np.ones((16, 16, 3), np.uint8), True)

    save(b / "one_pixel.png", Image.fromarray(np.full((1, 1, 3), 200, dtype=np.uint8)))
    good["one_pixel.png"] = Good(1, np.full((1, 1, 3), 200, dtype=np.uint8), True)
    large = photo(3000, 4000, 6)
    save(b / "large.jpg", Image.fromarray(large), quality=90)
    good["large.jpg"] = Good(1, large, False)
    bitmap = photo(30, 40, 7)
    save(b / "bitmap.bmp", Image.fromarray(bitmap))
    good["bitmap.bmp"] = Good(1, bitmap, True)
    web = photo(30, 40, 8)
    save(b / "web.webp", Image.fromarray(web), quality=90)
    good["web.webp"] = Good(1, web, False)
    banner = photo(3, 4000, 11)  # FFCV's own resize would make it 500x0 and crash its encoder
    save(b / "banner.png", Image.fromarray(banner))
    good["banner.png"] = Good(1, banner, True)
    linked = photo(30, 40, 9)
    target = save(root.parent / "elsewhere" / "target.jpg", Image.fromarray(linked), quality=90)
    os.symlink(target, b / "linked.jpg")
    good["linked.jpg"] = Good(1, linked, False)

    data = (a / "good_upper.JPEG").read_bytes()
    (a / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (a / "empty.jpg").write_bytes(b"")
    (a / "garbage.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    (a / "README.txt").write_text("not an image")
    (a / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    save(a / ".hidden.jpg", Image.fromarray(photo(30, 30, 4)), quality=90)
    save(a / ".thumbnails" / "thumb.jpg", Image.fromarray(photo(30, 30, 4)), quality=90)
    png_with_garbled_pixels(b / "garbled.png", photo(20, 20, 10))
    os.symlink(root.parent / "elsewhere" / "missing.jpg", b / "dangling.jpg")
    os.mkfifo(b / "pipe.jpg")
    os.symlink(b, b / "loop")  # a linked folder that contains itself
    os.symlink(b / "nested", b / "dangling_folder")
    bad = {"truncated.jpg": "truncated", "empty.jpg": "empty", "garbage.jpg": "unreadable",
           "README.txt": "extension", ".DS_Store": "hidden", ".hidden.jpg": "hidden", ".thumbnails": "hidden",
           "garbled.png": "decode failed", "dangling.jpg": "symbolic link", "pipe.jpg": "regular file",
           "loop": "already read", "dangling_folder": "symbolic link"}
    return good, bad


@pytest.fixture(scope="module")
def dirty(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("dirty")
    good, bad = build_dirty_tree(base / "tree")
    out = base / "out" / "dirty.beton"
    settings = ConversionSettings(max_resolution=MAX_RESOLUTION, num_workers=2, seed=1)  # proportion mode
    summary = convert_imagefolder(base / "tree", out, settings, progress=False)
    return {"good": good, "bad": bad, "out": out, "summary": summary}


def record_order(dirty: dict) -> list[str]:
    """File name of each record, from the .index (records are in a seeded random order)."""
    return [Path(path).name for path, _, _ in read_index(dirty["out"])]


def test_bad_files_are_skipped_listed_with_reasons_and_counted(dirty: dict) -> None:
    lines = skipped_report_path(dirty["out"]).read_text().splitlines()
    reasons = {Path(path).name: reason for path, reason in (line.split("\t") for line in lines)}
    assert set(reasons) == set(dirty["bad"])
    for name, word in dirty["bad"].items():
        assert word in reasons[name], (name, reasons[name])
    assert dirty["summary"].skipped == len(dirty["bad"])
    assert json.loads(sidecar_path(dirty["out"]).read_text())["num_skipped"] == len(dirty["bad"])


def test_garbled_file_passes_the_probe_and_is_caught_in_the_writer(dirty: dict) -> None:
    """The redo path is real: this file gets past the cheap check and must still stay out."""
    garbled = next(line for line in skipped_report_path(dirty["out"]).read_text().splitlines() if "garbled" in line)
    assert probe(garbled.split("\t")[0]) is None


def test_good_files_become_records_with_their_labels(dirty: dict) -> None:
    reader = open_beton(dirty["out"])
    order = record_order(dirty)
    assert sorted(order) == sorted(dirty["good"])
    assert reader.num_samples == dirty["summary"].images == len(order)
    assert labels(reader).tolist() == [dirty["good"][name].label for name in order]
    assert json.loads(sidecar_path(dirty["out"]).read_text())["classes"] == ["class_a", "class_b"]


def test_every_record_holds_the_right_rgb_pixels(dirty: dict) -> None:
    reader = open_beton(dirty["out"])
    modes = image_metadata(reader)["mode"]
    assert {int(mode) for mode in modes} == {0, 1}, "the seed should store some records as JPEG and some raw"
    for index, name in enumerate(record_order(dirty)):
        source = dirty["good"][name]
        record = read_image(reader, index)
        expected = source.expected
        if max(expected.shape[:2]) > MAX_RESOLUTION:
            ratio = MAX_RESOLUTION / max(expected.shape[:2])
            size = (max(1, int(expected.shape[1] * ratio)), max(1, int(expected.shape[0] * ratio)))
            expected = cv2.resize(expected, size, interpolation=cv2.INTER_AREA)  # RGBImageField's own resize
        assert record.shape == expected.shape, name
        difference = np.abs(record.astype(int) - expected).mean()
        if source.lossless and modes[index] != JPEG_MODE:
            assert difference == 0, name
        else:
            assert difference <= LOSSY_TOLERANCE, (name, difference)


def test_large_photo_is_stored_at_max_resolution(dirty: dict) -> None:
    meta = image_metadata(open_beton(dirty["out"]))
    index = record_order(dirty).index("large.jpg")
    assert (int(meta["width"][index]), int(meta["height"][index])) == (MAX_RESOLUTION, MAX_RESOLUTION * 3 // 4)


@pytest.mark.parametrize("size", [(900, 700), (1001, 751), (520, 390), (640, 480), (2600, 1950), (450, 300), (1000, 640)])
def test_jpeg_decode_lands_on_rgbimagefield_size_and_pixels(tmp_path: Path, size: tuple[int, int]) -> None:
    """Downscaled while decoding (JPEGs 2x the target or more) or not: the stored size is the one
    RGBImageField computes for a full decode, and the pixels are that full decode's, or close to them."""
    from ffcv.fields.rgb_image import resizer

    width, height = size
    path = save(tmp_path / "x.jpg", Image.fromarray(photo(height, width, seed=width)), quality=90)
    reference = resizer(np.asarray(Image.open(path).convert("RGB")), MAX_RESOLUTION)  # ffcv-imagenet's way
    ours = load_rgb(str(path), MAX_RESOLUTION)
    assert ours.shape == reference.shape
    assert resizer(ours, MAX_RESOLUTION) is ours  # nothing left for RGBImageField to resize
    drafted = max(size) >= 2 * MAX_RESOLUTION
    assert np.abs(ours.astype(int) - reference).mean() <= (FAST_DECODE_TOLERANCE if drafted else 0)
