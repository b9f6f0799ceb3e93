"""JPEG pass-through on real files of every kind: which are kept as they are, that kept records are
the source's own bytes and decode through FFCV's reader and through our region decoder, and that
everything else (progressive, CMYK, greyscale, oversized, damaged, PNG) takes the usual path; and that
the pass-through check refuses exactly what FFCV's reader warns about."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from ffcv.fields.basics import IntDecoder
from ffcv.fields.rgb_image import CenterCropRGBImageDecoder
from ffcv.libffcv import imdecode
from ffcv.loader import Loader, OrderOption
from PIL import Image

from ffcv_imagenet.beton_format import JPEG_MODE, sidecar_path
from ffcv_imagenet.convert.conversion import ConversionError, ConversionSettings, convert_imagefolder, read_index
from ffcv_imagenet.decoders import CenterCropDecoder
from ffcv_imagenet.convert.image_files import load_rgb, to_rgb_array
from ffcv_imagenet.decode_rate import measure_decode_rates
from ffcv_imagenet.convert.inspection import QUALITY_RANGES, image_metadata, open_beton, read_image, record_bytes, report
from ffcv_imagenet.convert.jpeg_passthrough import (BASELINE_SOF, passthrough_candidate, read_jpeg_header,
                                            why_not_passed_through, why_slower_than_reencoded)
from ffcv_imagenet.jpeg_region import entropy_check
from ffcv_imagenet.convert.write_cli import build_parser
from ffcv_imagenet.convert.write_cli import main as write_main

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


# ---------------------------------------------------------------- auto | always | never
REENCODE_QUALITY = 90  # ConversionSettings' default --jpeg-quality; PIL and OpenCV both scale libjpeg's tables
SUBSAMPLINGS = {"444": 0, "422": 1, "420": 2}  # PIL's subsampling codes
QUALITIES = {"coarser": 80, "same": REENCODE_QUALITY, "finer": 96}


def tables_at(quality: int) -> list[list[int]]:
    """libjpeg's luma and chroma tables at ``quality`` as PIL writes them (natural order)."""
    with Image.open(io.BytesIO(_jpeg_bytes(quality=quality))) as image:
        return [list(image.quantization[0]), list(image.quantization[1])]


def _jpeg_bytes(**options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(photo(64, 64, seed=0)).save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def mode_sources() -> dict[str, dict]:
    """name -> PIL save options: every chroma sampling at tables coarser than, equal to and finer than the
    re-encode's; and 4:2:0 files whose luma or chroma alone is finer."""
    sources = {f"{sampling}_{table}.jpg": dict(quality=quality, subsampling=code)
               for sampling, code in SUBSAMPLINGS.items() for table, quality in QUALITIES.items()}
    coarse, fine = tables_at(QUALITIES["coarser"]), tables_at(QUALITIES["finer"])
    sources["420_finer_luma.jpg"] = dict(qtables=[fine[0], coarse[1]], subsampling=2)
    sources["420_finer_chroma.jpg"] = dict(qtables=[coarse[0], fine[1]], subsampling=2)
    return sources


KEPT_BY_AUTO = {"420_coarser.jpg", "420_same.jpg"}  # equal tables are no finer


@pytest.fixture(scope="module")
def by_mode(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("modes")
    for label in range(2):
        for k, (name, options) in enumerate(mode_sources().items()):
            path = base / "tree" / f"class_{label}" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(photo(120 + 2 * k, 150 - 3 * k, seed=100 * label + k)).save(path, **options)
    betons = {}
    for mode in ("auto", "always", "never"):
        betons[mode] = base / f"{mode}.beton"
        settings = ConversionSettings(write_mode="jpg", max_resolution=MAX_RESOLUTION, num_workers=2,
                                      jpeg_passthrough=mode, jpeg_quality=REENCODE_QUALITY)
        convert_imagefolder(base / "tree", betons[mode], settings, progress=False)
    return betons


def test_sources_have_the_sampling_and_tables_they_were_made_with(by_mode: dict[str, Path]) -> None:
    for path, _, _ in read_index(by_mode["never"]):
        header, name = read_jpeg_header(Path(path).read_bytes()), Path(path).name
        luma_sampling = {"444": (1, 1), "422": (2, 1), "420": (2, 2)}[name[:3]]
        assert header.sampling == (luma_sampling, (1, 1), (1, 1)), name
        reason = why_slower_than_reencoded(header, REENCODE_QUALITY)
        assert (reason is None) == (name in KEPT_BY_AUTO), (name, reason)
        if name.startswith(("444", "422")):
            assert "4:2:0" in reason
        elif name not in KEPT_BY_AUTO:
            assert f"finer than quality {REENCODE_QUALITY}" in reason
            assert reason.startswith("chroma" if "chroma" in name else "luma")


@pytest.mark.parametrize("mode", ["auto", "always", "never"])
def test_each_mode_keeps_exactly_its_share(by_mode: dict[str, Path], mode: str) -> None:
    """auto: only 4:2:0 files with tables no finer than the re-encode's; always: every clean baseline
    file; never: none. Kept records are the source bytes, the rest the usual re-encode (what never stores)."""
    reader, never = open_beton(by_mode[mode]), open_beton(by_mode["never"])
    rows = read_index(by_mode[mode])
    assert [row[:2] for row in rows] == [row[:2] for row in read_index(by_mode["never"])]
    expected = {"auto": lambda name: name in KEPT_BY_AUTO, "always": lambda name: True,
                "never": lambda name: False}[mode]
    for index, (path, _, kept) in enumerate(rows):
        assert kept == expected(Path(path).name), (mode, path)
        stored = record_bytes(reader, index).tobytes()
        assert stored == (Path(path).read_bytes() if kept else record_bytes(never, index).tobytes()), path
    sidecar = json.loads(sidecar_path(by_mode[mode]).read_text())
    assert sidecar["settings"]["jpeg_passthrough"] == mode
    assert sidecar["num_passed_through"] == sum(kept for _, _, kept in rows)


def test_auto_keeps_coarser_420_files_and_re_encodes_finer_ones(tmp_path: Path) -> None:
    """A source made at the re-encode's own quality but finer than a lower --jpeg-quality is re-encoded."""
    path = tmp_path / "x.jpg"
    Image.fromarray(photo(64, 64, seed=1)).save(path, quality=REENCODE_QUALITY, subsampling=2)
    data = path.read_bytes()
    assert passthrough_candidate(data, MAX_RESOLUTION, "auto", REENCODE_QUALITY) is not None
    assert passthrough_candidate(data, MAX_RESOLUTION, "auto", REENCODE_QUALITY - 5) is None
    assert passthrough_candidate(data, MAX_RESOLUTION, "always", REENCODE_QUALITY - 5) is not None
    assert passthrough_candidate(data, MAX_RESOLUTION, "never", REENCODE_QUALITY) is None


def test_the_cli_reads_every_spelling_of_the_mode() -> None:
    spellings = {(): "auto", ("--jpeg-passthrough",): "always", ("--no-jpeg-passthrough",): "never",
                 **{("--jpeg-passthrough", mode): mode for mode in ("auto", "always", "never")}}
    for flags, mode in spellings.items():
        assert build_parser().parse_args(["convert", "root", "out.beton", *flags]).jpeg_passthrough == mode
    assert ConversionSettings(jpeg_passthrough=True).jpeg_passthrough == "always"  # the former switch
    assert ConversionSettings(jpeg_passthrough=False).jpeg_passthrough == "never"
    with pytest.raises(ConversionError, match="one of auto, always, never"):
        ConversionSettings(jpeg_passthrough="sometimes")


# ---------------------------------------------------------------- inspect: what decides decode speed
def share(count: int, total: int) -> str:
    return f"{count / total:.0%}"


def test_inspect_reports_record_sizes_chroma_and_quality_of_jpeg_records(by_mode: dict[str, Path]) -> None:
    """Every JPEG record of the ``always`` file is its source: the shares follow from how PIL made them."""
    text = report(by_mode["always"])
    rows = read_index(by_mode["always"])
    names = [Path(path).name for path, _, _ in rows]
    reader = open_beton(by_mode["always"])
    mean_kib = np.mean([record_bytes(reader, index).size for index in range(len(rows))]) / 1024
    assert f"KiB per record: JPEG {mean_kib:.1f} ({len(rows)} records); raw: none" in text
    samplings = {"4:2:0": sum(name.startswith("420") for name in names),
                 "4:4:4": sum(name.startswith("444") for name in names),
                 "4:2:2": sum(name.startswith("422") for name in names)}
    for sampling, count in samplings.items():
        assert f"{sampling} {share(count, len(names))}" in text
    made_at = [QUALITIES["finer"] if "finer_luma" in name else QUALITIES["coarser"] if "finer_chroma" in name
               else mode_sources()[name]["quality"] for name in names]
    for label, low, high in QUALITY_RANGES:
        assert f"{label} {share(sum(low <= q <= high for q in made_at), len(names))}" in text
    assert f"median {np.median(made_at):.0f}" in text
    assert f"pass-through always): {len(rows)} of {len(rows)} records" in text


def test_inspect_measures_the_decode_rate_on_request(by_mode: dict[str, Path]) -> None:
    rates = measure_decode_rates(by_mode["never"], sample=12, rounds=1)
    assert rates.records == 12 and rates.res == 160 and rates.decoder == "fast"
    assert rates.ours > 0 and rates.stock > 0
    assert f"{rates.ours:.0f} img/s, FFCV's stock decoder {rates.stock:.0f} img/s" in str(rates)
    assert write_main(["inspect", str(by_mode["never"]), "--decode-rate", "--decode-sample", "0"]) == 2
