"""JPEG pass-through on real files of every kind: which are kept as they are, that kept records are
the source's own bytes and decode through FFCV's reader and through our region decoder, and that
everything else (progressive, CMYK, greyscale, oversized, damaged, PNG) takes the usual path; and that
the pass-through check refuses exactly what FFCV's reader warns about."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from ffcv.fields.basics import IntDecoder
from ffcv.fields.rgb_image import CenterCropRGBImageDecoder
from ffcv.libffcv import imdecode
from ffcv.loader import Loader, OrderOption
from PIL import Image

from ffcv_imagenet.beton_format import JPEG_MODE
from ffcv_imagenet.convert.conversion import ConversionSettings, convert_imagefolder, read_index
from ffcv_imagenet.decoders import CenterCropDecoder
from ffcv_imagenet.convert.image_files import load_rgb, to_rgb_array
from ffcv_imagenet.convert.inspection import image_metadata, open_beton, read_image, record_bytes
from ffcv_imagenet.convert.jpeg_passthrough import BASELINE_SOF, read_jpeg_header, why_not_passed_through
from ffcv_imagenet.jpeg_region import entropy_check

MAX_RESOLUTION = 200
DECODE_TOLERANCE = 2.0  # mean absolute difference: FFCV's fast-DCT decode against PIL's decode of the same bytes
REENCODE_TOLERANCE = 4.0  # one more JPEG generation at quality 90
CROP = 64
MIN_PSNR_DB = 30.0  # region decode against FFCV's stock center crop, as in test_fast_decode
GRAIN = 3.0


def photo(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    return np.clip(np.asarray(coarse) + rng.normal(0, GRAIN, (height, width, 3)), 0, 255).astype(np.uint8)


EOI = b"\xff\xd9"
FIRST_RESTART = b"\xff\xd0"
RESTART_EVERY = 2  # MCUs between restart markers, for the files that have them
JUNK = b"\x00" * 16


def junk_before_eoi(data: bytes) -> bytes:
    """Bytes between the scan and the end marker: libjpeg warns ("extraneous bytes before marker"),
    FFCV's reader reports it, PIL decodes it. A real defect of some ImageNet files."""
    return data[:-len(EOI)] + JUNK + data[-len(EOI):]


def junk_before_restart(data: bytes) -> bytes:
    """The same inside the scan, before its first restart marker: also read by the region decoder."""
    at = data.index(FIRST_RESTART)
    return data[:at] + JUNK + data[at:]


def truncated_with_eoi(data: bytes) -> bytes:
    """Half the scan, then an end marker: passes the probe's tail test; libjpeg warns of premature end."""
    return data[:len(data) // 2] + EOI


def garbage_in_scan(data: bytes) -> bytes:
    """Random bytes in place of the scan's second half: bad Huffman codes."""
    middle = len(data) // 2
    noise = np.random.default_rng(0).integers(0, 256, len(data) - middle - len(EOI), dtype=np.uint8).tobytes()
    return data[:middle] + noise + EOI


def trailing_after_eoi(data: bytes) -> bytes:
    """Bytes after the end marker (some cameras append them): never read, harmless."""
    return data + JUNK


DAMAGE = {"junk": junk_before_eoi, "junk_restart": junk_before_restart, "truncated": truncated_with_eoi}


# name -> (how it is saved, kept as it is?)
KINDS = {
    "baseline_420.jpg": (dict(quality=90), True),
    "baseline_444.jpg": (dict(quality=90, subsampling=0), True),
    "baseline_422.jpg": (dict(quality=90, subsampling=1), True),
    "progressive.jpg": (dict(quality=90, progressive=True), False),
    "cmyk.jpg": (dict(quality=90, mode="CMYK"), False),
    "grey.jpg": (dict(quality=90, mode="L"), False),
    "oversized.jpg": (dict(quality=90, size=(300, 240)), False),
    "restart.jpg": (dict(quality=90, restart_marker_blocks=RESTART_EVERY), True),
    "damaged.jpg": (dict(quality=90, damage="junk"), False),
    "junk_restart.jpg": (dict(quality=90, restart_marker_blocks=RESTART_EVERY, damage="junk_restart"), False),
    "truncated.jpg": (dict(quality=90, damage="truncated"), False),
    "photo.png": (dict(), False),
}


def make_kinds(root: Path) -> dict[str, np.ndarray]:
    """One file of each kind per class folder; returns each file's RGB pixels as PIL decodes it."""
    decoded = {}
    for label in range(2):
        for k, (name, (options, _)) in enumerate(KINDS.items()):
            options = dict(options)
            width, height = options.pop("size", (160 - 10 * k, 120 + 4 * k))
            image = Image.fromarray(photo(height, width, seed=10 * label + k))
            if "mode" in options:
                image = image.convert(options.pop("mode"))
            damage = options.pop("damage", None)
            path = root / f"class_{label}" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path, **options)
            if damage:
                path.write_bytes(DAMAGE[damage](path.read_bytes()))
            with Image.open(path) as reopened:
                decoded[str(path)] = to_rgb_array(reopened)
    return decoded


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("passthrough")
    decoded = make_kinds(base / "tree")
    betons = {}
    for name, passthrough in (("on", True), ("off", False)):
        betons[name] = base / f"{name}.beton"
        settings = ConversionSettings(write_mode="jpg", max_resolution=MAX_RESOLUTION, num_workers=2,
                                      jpeg_passthrough=passthrough)
        convert_imagefolder(base / "tree", betons[name], settings, progress=False)
    return {"decoded": decoded, **betons}


def test_header_reasons_for_each_kind(converted: dict) -> None:
    reasons = {Path(path).name: why_not_passed_through(read_jpeg_header(Path(path).read_bytes()), MAX_RESOLUTION)
               for path in converted["decoded"]}
    assert reasons["baseline_420.jpg"] is None and reasons["baseline_444.jpg"] is None
    for name in ("restart.jpg", "damaged.jpg", "junk_restart.jpg", "truncated.jpg"):
        assert reasons[name] is None, name  # their headers are fine: the decode check decides
    assert "not baseline" in reasons["progressive.jpg"]
    assert "4 components" in reasons["cmyk.jpg"] and "1 components" in reasons["grey.jpg"]
    assert "larger than" in reasons["oversized.jpg"] and reasons["photo.png"] == "not a JPEG"


def test_exactly_the_baseline_ycbcr_jpegs_are_kept_byte_for_byte(converted: dict) -> None:
    reader = open_beton(converted["on"])
    for index, (path, label, kept) in enumerate(read_index(converted["on"])):
        name = Path(path).name
        assert kept == KINDS[name][1], name
        stored = record_bytes(reader, index).tobytes()
        assert image_metadata(reader)["mode"][index] == JPEG_MODE
        if kept:
            assert stored == Path(path).read_bytes(), name
        else:  # re-encoded by the usual path: baseline, 3 components (progressive becomes baseline)
            header = read_jpeg_header(stored)
            assert header.sof_marker == BASELINE_SOF and header.components == 3, name


def test_every_record_matches_its_source_through_ffcvs_reader(converted: dict) -> None:
    """Label, path and pixels stay matched, record by record, with and without pass-through."""
    for key in ("on", "off"):
        reader = open_beton(converted[key])
        rows = read_index(converted[key])
        assert int(reader.num_samples) == len(rows) == len(converted["decoded"])
        for index, (path, label, kept) in enumerate(rows):
            assert Path(path).parent.name == f"class_{label}"
            assert int(reader.metadata["f1"][index]) == label
            record, source = read_image(reader, index).astype(int), converted["decoded"][path]
            if max(source.shape[:2]) > MAX_RESOLUTION:
                assert max(record.shape[:2]) == MAX_RESOLUTION
                continue
            assert record.shape == source.shape, path
            tolerance = DECODE_TOLERANCE if kept else REENCODE_TOLERANCE
            assert np.abs(record - source).mean() <= tolerance, (key, path)


def test_off_stores_every_other_record_the_same_way(converted: dict) -> None:
    """Pass-through changes the kept records only: off is the usual path for every record."""
    on, off = open_beton(converted["on"]), open_beton(converted["off"])
    rows_on, rows_off = read_index(converted["on"]), read_index(converted["off"])
    assert [row[:2] for row in rows_on] == [row[:2] for row in rows_off]  # same seeded order
    assert not any(kept for _, _, kept in rows_off)
    for index, (_, _, kept) in enumerate(rows_on):
        if not kept:
            assert np.array_equal(record_bytes(on, index), record_bytes(off, index))


def test_a_files_bytes_decode_to_the_pixels_pil_gives(converted: dict) -> None:
    """The conversion decodes from the bytes it read (colour JPEGs without PIL's decoder): the same
    pixels as PIL from the file, for every kind, damaged ones (PIL's fallback) included."""
    for path, pixels in converted["decoded"].items():
        assert np.array_equal(load_rgb(Path(path).read_bytes(), max(pixels.shape)), pixels), path
        assert np.array_equal(load_rgb(Path(path).read_bytes(), MAX_RESOLUTION), load_rgb(path, MAX_RESOLUTION)), path


def center_crops(path: Path, decoder: object) -> np.ndarray:
    loader = Loader(str(path), batch_size=4, num_workers=1, order=OrderOption.SEQUENTIAL,
                    pipelines={"image": [decoder], "label": [IntDecoder()]})
    outputs = []
    for images, _ in loader:
        if hasattr(decoder, "check_decoded"):
            decoder.check_decoded(str(path))  # raises if any record failed to decode
        outputs.append(np.array(images))
    return np.concatenate(outputs)


def test_kept_records_decode_through_our_region_decoder(converted: dict) -> None:
    ours = center_crops(converted["on"], CenterCropDecoder((CROP, CROP), ratio=1.0))
    stock = center_crops(converted["on"], CenterCropRGBImageDecoder((CROP, CROP), ratio=1.0))
    kept = [kept for _, _, kept in read_index(converted["on"])]
    assert any(kept)
    for index in np.flatnonzero(kept):
        error = np.mean((ours[index].astype(float) - stock[index]) ** 2)
        assert 10 * np.log10(255 ** 2 / max(error, 1e-9)) >= MIN_PSNR_DB, index


def ffcv_decodes_cleanly(data: bytes) -> bool:
    """FFCV's reader (TurboJPEG, full size): status 0 means no error and no warning."""
    header = read_jpeg_header(data)
    image = np.empty((header.height, header.width, 3), dtype=np.uint8)
    return imdecode(np.frombuffer(data, dtype=np.uint8), image, header.height, header.width, header.height,
                    header.width, 0, 0, 1, 1, False, False) == 0


# damage -> whether the file still decodes cleanly
CHECKED = {None: True, trailing_after_eoi: True, junk_before_eoi: False, junk_before_restart: False,
           truncated_with_eoi: False, garbage_in_scan: False}


CHECK_CASES = [(damage, restarts) for damage in CHECKED for restarts in (0, RESTART_EVERY)
               if restarts or damage is not junk_before_restart]  # that one needs restart markers


@pytest.mark.parametrize(("damage", "restarts"), CHECK_CASES,
                         ids=[f"{getattr(damage, '__name__', 'intact')}-rst{restarts}" for damage, restarts in CHECK_CASES])
def test_entropy_check_agrees_with_ffcvs_reader(tmp_path: Path, damage: Callable | None, restarts: int) -> None:
    """The pass-through check (Huffman decoding only) passes exactly the files FFCV's full decode
    reads without a warning: every kind of damage found in photo collections, with and without
    restart markers."""
    path = tmp_path / "x.jpg"
    Image.fromarray(photo(120, 168, seed=restarts)).save(path, quality=90, restart_marker_blocks=restarts)
    data = path.read_bytes() if damage is None else damage(path.read_bytes())
    assert entropy_check(data) == CHECKED[damage]
    assert ffcv_decodes_cleanly(data) == CHECKED[damage]
