"""The training loader across resolution and crop-mode switches: real .beton, real FFCV Loader."""
from __future__ import annotations

import gc

import psutil
import pytest
import torch

from ffcv_imagenet.loaders import LoaderSettings, TrainLoader, normalize
from ffcv_imagenet.schedule import FIXRES, RRC, EpochPlan

EPOCHS = 20
WARM_EPOCHS = 4  # both pipelines compiled and each resolution seen twice
MAX_GROWTH_MIB = 16  # one 64 px batch is 0.2 MiB: growth per epoch would show as several MiB


@pytest.fixture(scope="module")
def train_loader(demo_betons: dict) -> TrainLoader:
    settings = LoaderSettings(batch_size=16, num_workers=2, device=torch.device("cpu"), channels_last=True)
    return TrainLoader(demo_betons["train"], settings, order="random", in_memory=True, distributed=False, seed=0,
                       fixres_crop_ratio=224 / 256)


def alternating_plan(epoch: int) -> EpochPlan:
    """32 px rrc, 64 px rrc, 64 px fixres, 48 px fixres, ...: every kind of switch, over and over."""
    return [EpochPlan(epoch, 32, RRC), EpochPlan(epoch, 64, RRC), EpochPlan(epoch, 64, FIXRES),
            EpochPlan(epoch, 48, FIXRES)][epoch % 4]


def test_each_epoch_delivers_its_plan(train_loader: TrainLoader) -> None:
    for epoch in range(4):
        plan = alternating_plan(epoch)
        batches = list(train_loader.epoch(plan))
        assert len(batches) == len(train_loader) == 144 // 16
        for images, labels in batches:
            assert images.shape == (16, 3, plan.res, plan.res) and images.dtype == torch.uint8
            assert images.is_contiguous(memory_format=torch.channels_last)
            assert labels.shape == (16,) and labels.dtype == torch.int64
        inputs = normalize(batches[0][0])
        assert inputs.is_contiguous(memory_format=torch.channels_last) and inputs.dtype == torch.float32


def test_host_memory_stays_flat_over_alternating_epochs(train_loader: TrainLoader) -> None:
    process = psutil.Process()
    resident = []
    for epoch in range(EPOCHS):
        for images, _ in train_loader.epoch(alternating_plan(epoch)):
            normalize(images).sum()
        gc.collect()
        resident.append(process.memory_info().rss / 2 ** 20)
    growth = resident[-1] - resident[WARM_EPOCHS - 1]
    print("RSS MiB per epoch:", [round(r, 1) for r in resident])
    assert growth < MAX_GROWTH_MIB, resident


def test_skipping_resumes_mid_epoch_on_the_same_batches(train_loader: TrainLoader) -> None:
    plan = EpochPlan(7, 48, RRC)
    full = [images.clone() for images, _ in train_loader.epoch(plan)]
    rest = [images.clone() for images, _ in train_loader.epoch(plan, start_sample=3 * 16)]  # 3 batches of 16
    assert len(rest) == len(full) - 3
    assert all(torch.equal(a, b) for a, b in zip(full[3:], rest))
    assert list(train_loader.epoch(plan, start_sample=144 - 15)) == []  # less than one batch left: nothing
