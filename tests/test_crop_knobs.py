"""augment.flip, augment.rrc_scale and augment.rrc_ratio through the real loader (TrainLoader, FFCV).

Every record is one image whose pixels name their own coordinates (red = column,
green = row), stored raw so that the values survive exactly: a resize of such a
ramp is still a ramp, so each output's first and last columns and rows tell the
window it was cut from, and a mirrored output has its red values falling.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ffcv_imagenet.recipes import load_config
from ffcv_imagenet.convert.conversion import ConversionSettings, convert_imagefolder
from ffcv_imagenet.loaders import CropSettings, LoaderSettings, TrainLoader
from ffcv_imagenet.schedule import FIXRES, RRC, EpochPlan

SIDE = 256  # the largest side whose coordinates fit a uint8 channel
RECORDS = 64
RES = 64
SCALE = (0.25, 0.5)  # both far from the defaults (0.08, 1) and (3/4, 4/3)
RATIO = (0.5, 0.8)
PIXEL_SLACK = 2.0  # a window side read from rounded ramp values is within this of the true side


@pytest.fixture(scope="module")
def ramp_beton(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("ramp")
    rows, cols = np.mgrid[0:SIDE, 0:SIDE]
    pixels = np.stack([cols, rows, np.full_like(cols, 128)], axis=-1).astype(np.uint8)
    folder = base / "tree" / "only"
    folder.mkdir(parents=True)
    for k in range(RECORDS):
        Image.fromarray(pixels).save(folder / f"{k}.png")
    out = base / "ramp.beton"
    convert_imagefolder(base / "tree", out, ConversionSettings(write_mode="raw", max_resolution=SIDE,
                                                               num_workers=1), progress=False)
    return out


def one_epoch(loader: TrainLoader, plan: EpochPlan) -> np.ndarray:
    return torch.cat([images.clone() for images, _ in loader.epoch(plan)]).numpy().astype(np.float64)


def windows(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(width, height) in source pixels of the window each (N, 3, RES, RES) output was resized from."""
    red, green = images[:, 0], images[:, 1]
    # pixel centres: the first and last outputs sit half an output pixel inside the window's edges
    width = np.abs(red[:, :, -1] - red[:, :, 0]).mean(1) * RES / (RES - 1)
    height = np.abs(green[:, -1, :] - green[:, 0, :]).mean(1) * RES / (RES - 1)
    return width, height


def mirrored(images: np.ndarray) -> np.ndarray:
    red = images[:, 0]
    return red[:, :, -1].mean(1) < red[:, :, 0].mean(1)


def assert_windows_in_range(images: np.ndarray) -> None:
    width, height = windows(images)
    area = SIDE * SIDE
    low_scale, high_scale = (width - PIXEL_SLACK) * (height - PIXEL_SLACK) / area, \
        (width + PIXEL_SLACK) * (height + PIXEL_SLACK) / area
    low_ratio, high_ratio = (width - PIXEL_SLACK) / (height + PIXEL_SLACK), \
        (width + PIXEL_SLACK) / (height - PIXEL_SLACK)
    assert (low_scale <= SCALE[1]).all() and (high_scale >= SCALE[0]).all(), sorted(width * height / area)
    assert (low_ratio <= RATIO[1]).all() and (high_ratio >= RATIO[0]).all(), sorted(width / height)
    # the draws fill the range rather than sitting at one value
    scales, ratios = width * height / area, width / height
    assert scales.min() < 0.32 and scales.max() > 0.43, sorted(scales)
    assert ratios.min() < 0.58 and ratios.max() > 0.72, sorted(ratios)


def train_loader(path: Path, decoder: str, flip: bool) -> TrainLoader:
    settings = LoaderSettings(batch_size=16, num_workers=1, device=torch.device("cpu"), channels_last=False)
    return TrainLoader(path, settings, order="random", in_memory=True, distributed=False, seed=0,
                       fixres_crop_ratio=224 / 256, decoder=decoder, crop=CropSettings(flip, SCALE, RATIO))


def test_fast_decode_without_flip_keeps_windows_in_range_and_never_mirrors(ramp_beton: Path) -> None:
    loader = train_loader(ramp_beton, "fast", flip=False)
    for epoch in range(2):
        images = one_epoch(loader, EpochPlan(epoch, RES, RRC))
        assert len(images) == RECORDS
        assert_windows_in_range(images)
        assert not mirrored(images).any()
    fixres = one_epoch(loader, EpochPlan(2, RES, FIXRES))  # the FixRes phase's crop obeys flip too
    assert not mirrored(fixres).any()


def test_stock_decode_uses_the_same_ranges_and_flips_about_half(ramp_beton: Path) -> None:
    images = one_epoch(train_loader(ramp_beton, "stock", flip=True), EpochPlan(0, RES, RRC))
    assert_windows_in_range(images)
    assert 0.25 <= mirrored(images).mean() <= 0.75  # the mirror test above can see a mirror


def test_recipe_keys_reach_the_loader_settings() -> None:
    config = load_config(None, ["--augment.flip=false", "--augment.rrc_scale=[0.25, 0.5]",
                                "--augment.rrc_ratio=[0.5, 0.8]"])
    assert CropSettings.from_recipe(config.augment) == CropSettings(False, SCALE, RATIO)
    assert CropSettings.from_recipe(load_config(None).augment) == CropSettings()
