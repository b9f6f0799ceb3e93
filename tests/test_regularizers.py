"""Each regularizer's mathematics on small tensors, and a run with all of them on."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torchvision import models

from ffcv_imagenet.config import AugmentConfig, Config, EMAConfig, LRConfig
from ffcv_imagenet.lr_schedule import lr_factor
from ffcv_imagenet.model import torchvision_state_dict
from ffcv_imagenet.optimizers import build_optimizer
from ffcv_imagenet.regularizers import (BatchMixer, GroupRandAugment, WeightAverage, add_classifier_dropout,
                                        add_drop_path, residual_blocks, seed_step_draws)
from ffcv_imagenet.checkpointing import FINAL_EMA_WEIGHTS
from helpers import epoch_records, explain, run, tiny_overrides, train_command

CLASSES = 5


def batch(n: int = 8, side: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, side, side, generator=generator), torch.arange(n) % CLASSES


@pytest.mark.parametrize("mixup,cutmix", [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixed_targets_are_distributions_matching_the_pixels(mixup: float, cutmix: float) -> None:
    torch.manual_seed(1)
    mixer = BatchMixer(AugmentConfig(mixup_alpha=mixup, cutmix_alpha=cutmix), CLASSES)
    inputs, labels = batch()
    for _ in range(5):
        mixed, targets = mixer(inputs.clone(), labels)
        assert targets.shape == (8, CLASSES) and torch.allclose(targets.sum(1), torch.ones(8))
        # every image is a blend of itself and its neighbour in the batch (torchvision pairs by roll(1))
        own = targets[torch.arange(8), labels]
        other = targets[torch.arange(8), labels.roll(1)]
        assert torch.allclose(own + other, torch.ones(8))
        from_other = (mixed == inputs.roll(1, 0)).all(1).float().mean((1, 2))
        from_own = (mixed == inputs).all(1).float().mean((1, 2))
        pasted = bool(torch.allclose(from_own + from_other, torch.ones(8)))
        if pasted:  # CutMix: the share of pixels taken from the neighbour is the neighbour's weight
            assert cutmix > 0 and torch.allclose(from_other, other, atol=1e-6)
        else:  # mixup: pixels are the same blend as the targets
            assert mixup > 0 and torch.allclose(mixed, own[:, None, None, None] * inputs
                                                + other[:, None, None, None] * inputs.roll(1, 0), atol=1e-5)


@pytest.mark.parametrize("mixup,cutmix", [(0.4, 0.0), (0.0, 1.0)])
def test_mixed_batches_keep_the_channels_last_layout(mixup: float, cutmix: float) -> None:
    """Issue 17.5: a channels-last model would convert every layer's input. On CUDA torch's roll (which MixUp
    uses) returns NCHW (aten roll_cuda: empty_like(..., LEGACY_CONTIGUOUS_MEMORY_FORMAT)), on the CPU it keeps
    the layout: this is the contract, tests/test_gpu_path.py checks it where the defect showed."""
    torch.manual_seed(0)
    inputs, labels = batch()
    inputs = inputs.contiguous(memory_format=torch.channels_last)
    mixed, _ = BatchMixer(AugmentConfig(mixup_alpha=mixup, cutmix_alpha=cutmix), CLASSES)(inputs, labels)
    assert mixed.is_contiguous(memory_format=torch.channels_last)
    unmixed, _ = BatchMixer(AugmentConfig(mixup_alpha=mixup, cutmix_alpha=cutmix), CLASSES)(inputs.contiguous(),
                                                                                          labels)
    assert unmixed.is_contiguous()


def draw_on_rank(rank: int, world_size: int, store_file: str, out: str) -> None:
    """One gloo rank: the step's mixup weights and drop-path mask, then the same step again (a resume)."""
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)  # the same model on every rank, as the trainer builds it
        model = models.resnet18(num_classes=CLASSES)
        add_drop_path(model, 0.5)
        mixer = BatchMixer(AugmentConfig(mixup_alpha=1.0), CLASSES)
        drop = residual_blocks(model)[-1].bn2.drop_path
        inputs, labels = batch()
        draws = []
        for _ in range(2):
            seed_step_draws(seed=0, rank=rank, epoch=3, step=5, device=torch.device("cpu"))
            _, targets = mixer(inputs, labels)
            mask = drop(torch.ones(64, 1, 1, 1)).flatten() > 0
            draws.append((targets[0, labels[0]].item(), mask))
        gathered = [None] * world_size
        dist.all_gather_object(gathered, draws)  # through the process group, as ranks would exchange them
        if rank == 0:
            torch.save(gathered, out)
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_draw_differently_and_repeat_their_own_draws(tmp_path: Path) -> None:
    """Issue 17.3: ranks seeded alike mixed and dropped the same way, so a global batch had one rank's
    variety. Each rank's step draws now differ from the other's, and repeat exactly when the step is re-run."""
    out = tmp_path / "draws.pt"
    mp.spawn(draw_on_rank, args=(2, str(tmp_path / "store"), str(out)), nprocs=2)
    (lam0, mask0), (lam0_again, mask0_again) = torch.load(out)[0]
    (lam1, mask1), (lam1_again, mask1_again) = torch.load(out)[1]
    assert lam0 == lam0_again and lam1 == lam1_again
    assert torch.equal(mask0, mask0_again) and torch.equal(mask1, mask1_again)
    assert lam0 != lam1 and not torch.equal(mask0, mask1)
    assert 0 < mask0.sum() < len(mask0)  # the mask really is a draw


def test_no_mixing_when_off_or_skipped() -> None:
    inputs, labels = batch()
    assert BatchMixer(AugmentConfig(), CLASSES)(inputs, labels)[1] is labels
    assert BatchMixer(AugmentConfig(mixup_alpha=1.0, mix_prob=0.0), CLASSES)(inputs, labels)[1] is labels


def test_randaugment_keeps_shape_dtype_range_and_layout() -> None:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (20, 3, 24, 24), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    out = GroupRandAugment(AugmentConfig(randaugment_ops=2, randaugment_magnitude=15, randaugment_group=8))(images)
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert not torch.equal(out, images)
    assert GroupRandAugment(AugmentConfig())(images) is images  # off by default


def test_ema_follows_its_update_formula_and_round_trips() -> None:
    model = nn.Linear(3, 2)
    decay = 0.9
    ema = WeightAverage(model, EMAConfig(decay=decay, every=2, warmup=False))
    with torch.no_grad():
        model.weight.fill_(1.0)
    for _ in range(4):  # updates at steps 2 and 4: timm's first two updates copy the weights
        ema.after_step(model)
    assert ema.updates == 2 and torch.allclose(ema.module.weight, model.weight)
    averaged = ema.module.weight.clone()
    with torch.no_grad():
        model.weight.fill_(3.0)
    for _ in range(2):
        ema.after_step(model)
    assert torch.allclose(ema.module.weight, decay * averaged + (1 - decay) * model.weight)
    restored = WeightAverage(nn.Linear(3, 2), EMAConfig(decay=decay, every=2, warmup=False))
    restored.load_state_dict(ema.state_dict())
    assert restored.steps == 6 and torch.equal(restored.module.weight, ema.module.weight)


def test_drop_path_rates_are_linear_and_keep_the_expectation() -> None:
    model = models.resnet18(num_classes=CLASSES)
    keys = list(model.state_dict())
    rates = add_drop_path(model, 0.3)
    assert len(rates) == len(residual_blocks(model)) == 8
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3) and rates == sorted(rates)
    assert list(model.state_dict()) == keys  # exported weights still load into torchvision
    norm = residual_blocks(model)[-1].bn2
    norm.eval()  # fixed statistics; the hook's StochasticDepth follows its own training flag
    norm.drop_path.train()
    torch.manual_seed(0)
    x = torch.randn(4000, 512, 1, 1)
    kept = norm(x)
    dropped_share = (kept.flatten(1) == 0).all(1).float().mean().item()
    assert dropped_share == pytest.approx(0.3, abs=0.03)
    norm.drop_path.eval()
    assert torch.allclose(kept.mean(0), norm(x).mean(0), atol=0.15)  # survivors scaled by 1 / (1 - p)


def test_classifier_dropout_only_in_training() -> None:
    model = models.resnet18(num_classes=CLASSES)
    add_classifier_dropout(model, 0.5)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    assert not torch.equal(model(x), model(x))
    assert "fc.weight" in model.state_dict()


@pytest.mark.parametrize("name", ["sgd", "adamw", "lamb", "lars"])
def test_every_optimizer_steps_and_holds_lr0_groups(name: str) -> None:
    config = Config()
    config.training.optimizer = name
    model = models.resnet18(num_classes=CLASSES)
    optimizer = build_optimizer(config, model)
    assert [group["backbone"] for group in optimizer.param_groups] == [True, False, False]
    for group in optimizer.param_groups:
        group["lr"] = 0.0 if group["backbone"] else 0.1
    conv, fc = model.conv1.weight.clone(), model.fc.weight.clone()
    nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4)).backward()
    optimizer.step()
    assert torch.equal(model.conv1.weight, conv) and not torch.equal(model.fc.weight, fc)


def test_onecycle_rises_and_falls_as_half_cosines() -> None:
    cfg = LRConfig(schedule="onecycle", warmup_epochs=4, warmup_start_factor=0.0, end_factor=0.0)
    assert lr_factor(cfg, 20, 2.0) == pytest.approx(0.5)
    assert lr_factor(cfg, 20, 1.0) == pytest.approx(0.5 * (1 - math.cos(math.pi / 4)))
    assert lr_factor(cfg, 20, 12.0) == pytest.approx(0.5)
    assert lr_factor(cfg, 20, 20.0) == pytest.approx(0.0)


ALL_ON = {"augment.mixup_alpha": 0.2, "augment.cutmix_alpha": 1.0, "augment.randaugment_ops": 2,
          "ema.decay": 0.99, "model.drop_path_rate": 0.1, "model.dropout": 0.2, "training.optimizer": "lamb",
          "training.grad_clip_norm": 1.0, "lr.schedule": "onecycle", "training.epochs": 2,
          "logging.checkpoint_every": 2}


def test_a_run_with_every_option_on(demo_betons: dict, tmp_path: Path) -> None:
    result = run(train_command(tiny_overrides(demo_betons, tmp_path, **ALL_ON)))
    assert result.returncode == 0, explain(result)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    options = next(r for r in log if r["kind"] == "start")["options"]
    assert options["optimizer"] == "lamb" and options["ema decay"] == 0.99 and options["mixup alpha"] == 0.2
    assert "randaugment 2 ops x M9" in result.stdout
    records = epoch_records(tmp_path)
    assert [r["batch_augment"] for r in records] == [True, False]  # off in the FixRes epoch
    assert [r["checkpoint"] for r in records] == [False, True]  # logging.checkpoint_every 2; the last epoch always
    assert all(0.0 <= r["ema_val_top1"] <= 1.0 for r in records)
    ema_weights = torch.load(tmp_path / FINAL_EMA_WEIGHTS, weights_only=True)
    models.resnet18(num_classes=6).load_state_dict(ema_weights)
    assert set(ema_weights) == set(torchvision_state_dict(models.resnet18(num_classes=6)))


def test_out_of_range_option_is_one_line(demo_betons: dict, tmp_path: Path) -> None:
    result = run(train_command(tiny_overrides(demo_betons, tmp_path, **{"ema.decay": 1.5})))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "ema.decay" in result.stderr
