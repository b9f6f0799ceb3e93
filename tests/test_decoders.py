"""The FixRes decoder against torchvision's Resize + RandomCrop, on real files through FFCV's loader."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ffcv.fields.basics import IntDecoder
from ffcv.loader import Loader, OrderOption
from PIL import Image
from torchvision.transforms import v2

from ffcv_imagenet.convert.conversion import ConversionSettings, convert_imagefolder
from ffcv_imagenet.decoders import (FIXRES_CROP_RATIO, CenterCropDecoder, FixResCropDecoder, RandomResizedCropDecoder,
                                    fixres_crop_window)

RES = 64
SOURCE_HW = (150, 200)
MIN_PSNR_DB = 30.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def test_window_side_and_uniform_position() -> None:
    np.random.seed(0)
    height, width = 300, 400
    windows = np.array([fixres_crop_window(height, width, None, FIXRES_CROP_RATIO) for _ in range(4000)])
    side = int(FIXRES_CROP_RATIO * 300)  # 262
    assert (windows[:, 2] == side).all() and (windows[:, 3] == side).all()
    tops, lefts = windows[:, 0], windows[:, 1]
    assert tops.min() == 0 and tops.max() == height - side  # every position reachable, none outside
    assert lefts.min() == 0 and lefts.max() == width - side
    # uniform: mean in the middle, and each quarter of the range gets about a quarter of the draws
    assert abs(lefts.mean() - (width - side) / 2) < 3
    quarters = np.histogram(lefts, bins=4, range=(0, width - side + 1))[0] / len(lefts)
    assert np.all(np.abs(quarters - 0.25) < 0.04)


def test_invalid_ratio_is_refused() -> None:
    with pytest.raises(ValueError, match="ratio"):
        FixResCropDecoder((RES, RES), ratio=1.5)


@pytest.fixture(scope="module")
def photo_beton(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """One smooth photo stored raw, 48 times: every record differs only by its random window."""
    base = tmp_path_factory.mktemp("fixres")
    rng = np.random.default_rng(3)
    coarse = Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8))
    pixels = np.asarray(coarse.resize(SOURCE_HW[::-1], Image.BICUBIC))
    for k in range(48):
        folder = base / "tree" / "only"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{k}.png")
    out = base / "photo.beton"
    convert_imagefolder(base / "tree", out, ConversionSettings(write_mode="raw", num_workers=1), progress=False)
    return out, pixels


def test_matches_torchvision_resize_and_random_crop(photo_beton: tuple[Path, np.ndarray]) -> None:
    path, pixels = photo_beton
    loader = Loader(str(path), batch_size=48, num_workers=1, order=OrderOption.SEQUENTIAL, seed=0,
                    pipelines={"image": [FixResCropDecoder((RES, RES), flip=False)], "label": [IntDecoder()]})
    images, _ = next(iter(loader))
    assert images.shape == (48, RES, RES, 3) and images.dtype == np.uint8

    # torchvision's FixRes transform: shorter side to int(res / ratio), then a res x res crop
    resized = v2.Resize(int(RES / FIXRES_CROP_RATIO), antialias=True)(torch.from_numpy(pixels.copy()).permute(2, 0, 1))
    resized = resized.permute(1, 2, 0).numpy()
    offsets = [(i, j) for i in range(resized.shape[0] - RES + 1) for j in range(resized.shape[1] - RES + 1)]
    best = []
    for image in images:
        scores = [psnr(image, resized[i:i + RES, j:j + RES]) for i, j in offsets]
        best.append((max(scores), offsets[int(np.argmax(scores))]))
    print("FixRes vs torchvision PSNR dB: min %.1f mean %.1f" % (min(s for s, _ in best), np.mean([s for s, _ in best])))
    assert min(score for score, _ in best) >= MIN_PSNR_DB, [round(s, 1) for s, _ in best]
    lefts = [offset[1] for _, offset in best]
    span = resized.shape[1] - RES
    assert min(lefts) <= 0.25 * span and max(lefts) >= 0.75 * span  # windows spread over the image


def decode_epoch(path: Path, decoder_type: type, epoch: int, workers: int) -> np.ndarray:
    decoder = decoder_type((RES, RES))
    loader = Loader(str(path), batch_size=16, num_workers=workers, order=OrderOption.RANDOM, seed=0,
                    drop_last=True, pipelines={"image": [decoder], "label": [IntDecoder()]})
    decoder.set_epoch(run_seed=0, epoch=epoch)
    loader.next_epoch = epoch
    return np.concatenate([images.copy() for images, _ in loader])


@pytest.mark.parametrize("decoder_type", [RandomResizedCropDecoder, FixResCropDecoder])
def test_crops_and_flips_repeat_per_epoch_whatever_the_threads(decoder_type: type, demo_betons: dict) -> None:
    """What makes a resumed run equal an uninterrupted one: draws seeded by (seed, epoch, sample)."""
    one_thread = decode_epoch(demo_betons["train"], decoder_type, epoch=3, workers=1)
    two_threads = decode_epoch(demo_betons["train"], decoder_type, epoch=3, workers=2)
    next_epoch = decode_epoch(demo_betons["train"], decoder_type, epoch=4, workers=2)
    assert np.array_equal(one_thread, two_threads)
    assert not np.array_equal(one_thread, next_epoch)


def test_flip_mirrors_about_half_the_images(photo_beton: tuple[Path, np.ndarray]) -> None:
    path, _ = photo_beton
    plain = decode_epoch(path, lambda size: FixResCropDecoder(size, ratio=1.0, flip=False), 0, 1)
    flipped = decode_epoch(path, lambda size: FixResCropDecoder(size, ratio=1.0), 0, 1)
    # ratio 1 on a 150x200 photo: the window slides only sideways, so compare rows' left-right symmetry
    mirrored = [not np.array_equal(a, b) and np.array_equal(a, b[:, ::-1]) or np.array_equal(a, b)
                for a, b in zip(plain, flipped)]
    assert all(mirrored)
    share = np.mean([not np.array_equal(a, b) for a, b in zip(plain, flipped)])
    assert 0.25 <= share <= 0.75


def declared_bytes(decoder, stored_side: int) -> list[int]:
    """Bytes per image of each host allocation ``decoder`` asks FFCV for, over a dataset whose largest
    stored image is ``stored_side`` square (FFCV pins every one of them, in 5 slots, on a GPU machine)."""
    from ffcv.pipeline.state import State

    decoder.metadata = np.zeros(3, dtype=[("height", "<u4"), ("width", "<u4")])
    decoder.metadata["height"], decoder.metadata["width"] = [stored_side, 300, 200], [stored_side, 375, 500]
    _, queries = decoder.declare_state_and_memory(State(jit_mode=True, device=torch.device("cpu"), shape=(),
                                                        dtype=np.uint8))
    return [int(np.prod(query.shape)) * np.dtype(query.dtype).itemsize for query in queries]


@pytest.mark.parametrize("decoder_type", [RandomResizedCropDecoder, FixResCropDecoder, CenterCropDecoder])
def test_only_the_output_is_declared_to_ffcv(decoder_type: type) -> None:
    """Issue 26.13: the full-size decode scratch is used on the host only, so it is kept out of FFCV's
    (pinned, 5-slot) allocations; FFCV's own crop decoder declares it beside the output."""
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder

    output = 224 * 224 * 3
    assert declared_bytes(decoder_type((224, 224)), 500) == [output]
    assert declared_bytes(RandomResizedCropRGBImageDecoder((224, 224)), 500) == [output, 500 * 500 * 3]
