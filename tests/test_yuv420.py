"""YUV 4:2:0 records (issue 27): the field, the conversion to it, its decoders and FFCV's refusal of it.

Real files on disk (PNG, JPEG, greyscale, CMYK, palette, odd sizes, one pixel), real .beton files, FFCV's
real loader. The reference 4:2:0 conversion is written out here from BT.601's formulas, apart from the
project's.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ffcv.fields.basics import IntDecoder
from ffcv.loader import Loader, OrderOption
from PIL import Image

from ffcv_imagenet.beton_format import ConversionError, image_metadata, open_beton, record_bytes
from ffcv_imagenet.convert.conversion import ConversionSettings, convert_imagefolder
from ffcv_imagenet.convert.image_files import load_rgb
from ffcv_imagenet.convert.inspection import read_image, report
from ffcv_imagenet.decode_rate import measure_decode_rates
from ffcv_imagenet.decoders import CenterCropDecoder, FixResCropDecoder, RandomResizedCropDecoder
from ffcv_imagenet.yuv420_records import (YUV420_MODE, YUV420_TYPE_ID, YUV420ImageField, decode_yuv420,
                                          yuv420_bytes, yuv420_planes)

MAX_RESOLUTION = 96
RES = 32
GRADIENT_COPIES = 16


def smooth_photo(height: int, width: int, seed: int) -> np.ndarray:
    coarse = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (4, 5, 3), dtype=np.uint8))
    return np.asarray(coarse.resize((width, height), Image.BICUBIC))


def gradient(height: int, width: int) -> np.ndarray:
    """Red rises left to right, green top to bottom: a window's position and a flip show in its pixels."""
    rows, columns = np.mgrid[0:height, 0:width]
    return np.stack([columns * 255 // (width - 1), rows * 255 // (height - 1),
                     np.full_like(rows, 96)], axis=-1).astype(np.uint8)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("yuv420") / "tree"
    a, b = root / "a", root / "b"
    a.mkdir(parents=True)
    b.mkdir()
    noise = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(a / "noise_even.png")
    Image.fromarray(smooth_photo(37, 51, 1)).save(a / "odd.png")
    Image.fromarray(smooth_photo(21, 33, 2)[:, :, 0]).save(a / "grey.png")
    Image.fromarray(smooth_photo(50, 70, 3)).convert("CMYK").save(b / "cmyk.jpg", quality=95)
    Image.fromarray(smooth_photo(32, 48, 4)).convert("P", palette=Image.ADAPTIVE).save(b / "palette.png")
    Image.fromarray(np.array([[[200, 30, 90]]], dtype=np.uint8)).save(b / "one.png")
    Image.fromarray(smooth_photo(200, 301, 5)).save(b / "large.png")  # area-resized to 96 x 63
    return root


def convert(root: Path, out: Path, **settings: object) -> Path:
    convert_imagefolder(root, out, ConversionSettings(max_resolution=MAX_RESOLUTION, num_workers=1,
                                                      record_order="folder", **settings), progress=False)
    return out


@pytest.fixture(scope="module")
def yuv_beton(tree: Path) -> Path:
    return convert(tree, tree.parent / "yuv.beton", write_mode="yuv420")


def reference_420(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The source's own 4:2:0 conversion: BT.601 full range, chroma the mean of each 2x2 block (of the
    pixels an odd edge has), each plane rounded to bytes."""
    red, green, blue = (rgb[:, :, c].astype(np.float64) for c in range(3))
    luma = 0.299 * red + 0.587 * green + 0.114 * blue
    cb = 128 - 0.168736 * red - 0.331264 * green + 0.5 * blue
    cr = 128 + 0.5 * red - 0.418688 * green - 0.081312 * blue
    height, width = luma.shape

    def half(plane: np.ndarray) -> np.ndarray:
        return np.array([[plane[i:i + 2, j:j + 2].mean() for j in range(0, width, 2)] for i in range(0, height, 2)])

    return tuple(np.clip(np.rint(plane), 0, 255) for plane in (luma, half(cb), half(cr)))


def reference_rgb(planes: tuple[np.ndarray, ...]) -> np.ndarray:
    """4:2:0 planes back to RGB at full size, each chroma sample repeated over its 2x2 block."""
    luma, cb, cr = planes
    height, width = luma.shape
    cb, cr = (np.repeat(np.repeat(plane, 2, 0), 2, 1)[:height, :width] - 128 for plane in (cb, cr))
    rgb = np.stack([luma + 1.402 * cr, luma - 0.344136 * cb - 0.714136 * cr, luma + 1.772 * cb], axis=-1)
    return np.clip(np.rint(rgb), 0, 255)


def stored_sources(tree: Path) -> dict[str, np.ndarray]:
    """Each source as the conversion stores it (decoded, area-resized), by file name."""
    return {path.name: load_rgb(str(path), MAX_RESOLUTION) for path in sorted(tree.rglob("*.*"))}


def records(beton: Path) -> list[tuple[int, int, int, np.ndarray]]:
    reader = open_beton(beton)
    meta = image_metadata(reader)
    return [(int(m["mode"]), int(m["height"]), int(m["width"]), record_bytes(reader, i)) for i, m in enumerate(meta)]


def test_records_hold_the_source_420_conversion_at_1_5_bytes_per_pixel(tree: Path, yuv_beton: Path) -> None:
    sources = stored_sources(tree)
    names = [Path(line.split("\t")[0]).name for line in Path(f"{yuv_beton}.index").read_text().splitlines()]
    assert sorted(names) == sorted(sources)
    for name, (mode, height, width, data) in zip(names, records(yuv_beton)):
        source = sources[name]
        assert mode == YUV420_MODE and (height, width) == source.shape[:2], name
        assert data.size == yuv420_bytes(height, width), name  # Y + 2 x ceil(h/2) x ceil(w/2)
        for plane, expected in zip(yuv420_planes(data, height, width), reference_420(source)):
            assert np.abs(plane.astype(int) - expected).max() <= 1, name
    assert sources["large.png"].shape[:2] == (63, 96)  # the usual area resize to the stored size first


def test_full_size_decode_equals_the_source_420_within_one_level(tree: Path, yuv_beton: Path) -> None:
    sources = stored_sources(tree)
    names = [Path(line.split("\t")[0]).name for line in Path(f"{yuv_beton}.index").read_text().splitlines()]
    for name, (_, height, width, data) in zip(names, records(yuv_beton)):
        decoded = decode_yuv420(data, height, width).astype(int)  # odd sides, one pixel and greyscale included
        assert np.abs(decoded - reference_rgb(reference_420(sources[name]))).max() <= 1, name
    grey = sources["grey.png"]
    assert np.array_equal(grey[:, :, 0], grey[:, :, 2])  # no colour: the chroma planes are neutral
    index = names.index("grey.png")
    assert np.abs(decode_yuv420(*[records(yuv_beton)[index][k] for k in (3, 1, 2)]).astype(int) - grey).max() <= 1
    assert np.array_equal(read_image(open_beton(yuv_beton), index), decode_yuv420(*[records(yuv_beton)[index][k]
                                                                                    for k in (3, 1, 2)]))


def test_stock_ffcv_refuses_the_file_and_ours_opens_it(yuv_beton: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ffcv.reader import Reader
    from ffcv.types import TYPE_ID_HANDLER

    assert isinstance(open_beton(yuv_beton).handlers["image"], YUV420ImageField)
    monkeypatch.delitem(TYPE_ID_HANDLER, YUV420_TYPE_ID)  # FFCV's reader as shipped, without our registration
    with pytest.raises(KeyError, match=f"^(np.uint8\\()?{YUV420_TYPE_ID}\\)?$"):  # no handler for the type id
        Reader(str(yuv_beton))


def test_raw_format_picks_the_raw_records_and_inspect_reports_them(tree: Path) -> None:
    mixed = convert(tree, tree.parent / "mixed.beton", write_mode="proportion", raw_format="yuv420")
    modes = {mode for mode, *_ in records(mixed)}
    assert modes == {0, YUV420_MODE}  # JPEG and yuv420 records, no RGB raw
    assert isinstance(open_beton(mixed).handlers["image"], YUV420ImageField)
    jpeg_only = convert(tree, tree.parent / "jpg.beton", write_mode="jpg", raw_format="yuv420")
    assert type(open_beton(jpeg_only).handlers["image"]).__name__ == "RGBImageField"  # any FFCV reader opens it
    text = report(mixed)
    share = np.mean([mode == YUV420_MODE for mode, *_ in records(mixed)])
    assert f"(yuv420: {share:.0%})" in text
    assert "1.50 bytes per pixel" in text or "1.5" in text.split("yuv420 ")[-1]
    with pytest.raises(ConversionError, match="raw format"):
        ConversionSettings(raw_format="yuv444")
    rates = measure_decode_rates(mixed, sample=7, rounds=1)  # inspect --decode-rate: ours alone, FFCV has no decoder
    assert rates.stock is None and rates.ours > 0 and "cannot read its yuv420 records" in str(rates)


@pytest.fixture(scope="module")
def gradient_betons(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same gradient images, stored as RGB raw and as yuv420, in the same record order."""
    root = tmp_path_factory.mktemp("gradients") / "tree"
    (root / "only").mkdir(parents=True)
    for k in range(GRADIENT_COPIES):
        Image.fromarray(gradient(60 + 2 * k, 90 - k)).save(root / "only" / f"{k:02d}.png")
    return {kind: convert(root, root.parent / f"{kind}.beton", write_mode=kind) for kind in ("raw", "yuv420")}


def decode_all(path: Path, decoder: object, epochs: tuple[int, ...] = (0,)) -> list[np.ndarray]:
    """Every record through ``decoder``, one array per epoch, from one loader (one compile)."""
    loader = Loader(str(path), batch_size=GRADIENT_COPIES, num_workers=1, order=OrderOption.SEQUENTIAL,
                    pipelines={"image": [decoder], "label": [IntDecoder()]})
    decoded = []
    for epoch in epochs:
        decoder.set_epoch(run_seed=7, epoch=epoch)
        decoded.append(np.concatenate([batch.copy() for batch, _ in loader]))
        decoder.check_decoded(str(path))
    return decoded


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


@pytest.mark.parametrize("make_decoder", [lambda: RandomResizedCropDecoder((RES, RES)),
                                          lambda: FixResCropDecoder((RES, RES), ratio=0.5),
                                          lambda: CenterCropDecoder((RES, RES), ratio=0.5)],
                         ids=["rrc", "fixres", "center"])
def test_windows_and_flips_are_the_rgb_paths(make_decoder, gradient_betons: dict[str, Path]) -> None:  # noqa: ANN001
    """Same (seed, epoch, sample): the same window and flip, whatever the record kind. On a gradient any
    other window or flip moves the colours by tens of levels."""
    (rgb,) = decode_all(gradient_betons["raw"], make_decoder())
    yuv, *other_epoch = decode_all(gradient_betons["yuv420"], make_decoder(), (0, 1) if make_decoder().seeded else (0,))
    scores = [psnr(a, b) for a, b in zip(rgb, yuv)]
    assert min(scores) >= 35, [round(score, 1) for score in scores]
    if other_epoch:  # and another epoch's windows and flips are told apart
        assert np.mean([psnr(a, b) for a, b in zip(rgb, other_epoch[0])]) < 30


def test_command_line_flags_reach_the_settings() -> None:
    from ffcv_imagenet.convert.write_cli import _settings, build_parser

    def settings(*flags: str) -> ConversionSettings:
        return _settings(build_parser().parse_args(["convert", "root", "out.beton", *flags]))

    assert settings().raw_format == "rgb" and not settings().stores_yuv420  # the default: files any FFCV reads
    assert settings("--write-mode", "yuv420").stores_yuv420
    mixed = settings("--raw-format", "yuv420")
    assert mixed.write_mode == "proportion" and mixed.stores_yuv420
    assert not settings("--write-mode", "jpg", "--raw-format", "yuv420").stores_yuv420  # no raw record to store


def test_val_loader_refuses_ffcv_stock_decoder_on_yuv420_records(yuv_beton: Path) -> None:
    import torch

    from ffcv_imagenet.config import ConfigError
    from ffcv_imagenet.loaders import LoaderSettings, build_val_loader

    settings = LoaderSettings(batch_size=4, num_workers=1, device=torch.device("cpu"))
    with pytest.raises(ConfigError, match="yuv420 records, which FFCV's stock decoder cannot read"):
        build_val_loader(yuv_beton, settings, res=32, crop_ratio=0.875, num_samples=7, rank=0, world_size=1,
                         decoder="stock")
