"""Gradient accumulation (training.accumulate): micro-batches add up to one optimizer update.

BatchNorm is held in eval mode in these comparisons: in train mode a micro-batch of 8 normalises
with its own statistics and a batch of 32 with the batch's, which is a real (intended) difference
between the two recipes, not a defect of accumulation. With that fixed, the update's gradient is
the mean over its samples however they are split into micro-batches and ranks.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ffcv_imagenet.recipes import load_config
from ffcv_imagenet.distributed import DistContext
from ffcv_imagenet.preflight import preflight
from ffcv_imagenet.schedule import RRC, EpochPlan
from ffcv_imagenet.trainer import Trainer

from helpers import DEMO_RECIPE, tiny_overrides

GLOBAL = 32  # samples per update in every setting below
UPDATES = 3
LR = 0.05


def build(betons: dict, folder: Path, *, batch: int, accumulate: int, rank: int = 0, world_size: int = 1) -> Trainer:
    overrides = tiny_overrides(betons, folder, **{
        "model.arch": "resnet18", "training.precision": "fp32", "training.batch_size": batch,
        "training.accumulate": accumulate, "training.label_smoothing": 0.1, "lr.warmup_epochs": 0})
    config = load_config(DEMO_RECIPE, overrides)
    ctx = DistContext(rank=rank, local_rank=rank, world_size=world_size, device=torch.device("cpu"))
    trainer = Trainer(config, ctx, preflight(config, ctx))
    trainer.train_model.eval()  # BatchNorm on running statistics: see the module docstring
    for group in trainer.optimizer.param_groups:
        group["lr"] = LR  # the same LR in every setting (they share the global batch anyway)
    return trainer


def run_updates(trainer: Trainer, batches: list, micro_slices: list[slice]) -> list[float]:
    """Each global batch as the given micro-batches, in order, one optimizer update per global batch."""
    losses = []
    for images, labels in batches:
        for index, part in enumerate(micro_slices):
            update = trainer.train_step(images[part], labels[part], first=index == 0,
                                        last=index == len(micro_slices) - 1)
            assert (update is None) == (index < len(micro_slices) - 1)
        losses.append(update[0])
    return losses


def micro_slices(count: int, size: int, offset: int = 0) -> list[slice]:
    return [slice(offset + i * size, offset + (i + 1) * size) for i in range(count)]


@pytest.fixture(scope="module")
def global_batches(demo_betons: dict, tmp_path_factory: pytest.TempPathFactory) -> list:
    """Three real global batches of 32 from the real loader, copied (FFCV reuses its buffers)."""
    trainer = build(demo_betons, tmp_path_factory.mktemp("source"), batch=GLOBAL, accumulate=1)
    batches = []
    for images, labels in trainer.train_loader.epoch(EpochPlan(0, 32, RRC)):
        batches.append((images.clone(), labels.clone()))
        if len(batches) == UPDATES:
            break
    return batches


@pytest.fixture(scope="module")
def one_rank_accumulating(demo_betons: dict, global_batches: list,
                          tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[float]]:
    trainer = build(demo_betons, tmp_path_factory.mktemp("acc4"), batch=8, accumulate=4)
    losses = run_updates(trainer, global_batches, micro_slices(4, 8))
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}, losses


def assert_same_weights(a: dict, b: dict) -> None:
    for name, value in a.items():
        assert torch.allclose(value.float(), b[name].float(), rtol=1e-4, atol=1e-5), name


def test_four_micro_batches_of_8_update_as_one_batch_of_32(demo_betons: dict, global_batches: list,
                                                           one_rank_accumulating: tuple, tmp_path: Path) -> None:
    whole = build(demo_betons, tmp_path, batch=GLOBAL, accumulate=1)
    start = {k: v.clone() for k, v in whole.model.state_dict().items()}
    losses = run_updates(whole, global_batches, micro_slices(1, GLOBAL))
    accumulated, accumulated_losses = one_rank_accumulating
    assert_same_weights(accumulated, whole.model.state_dict())
    assert accumulated_losses == pytest.approx(losses, rel=1e-5)
    moved = max((whole.model.state_dict()[k].float() - v.float()).abs().max().item() for k, v in start.items())
    assert moved > 1e-3  # the updates really changed the weights


def accumulate_on_rank(rank: int, world_size: int, store: str, betons: dict, folder: str, batches: list,
                       out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        trainer = build(betons, Path(folder), batch=8, accumulate=2, rank=rank, world_size=world_size)
        # rank r trains samples [16r, 16r + 16) of each global batch, as two micro-batches of 8
        losses = run_updates(trainer, batches, micro_slices(2, 8, offset=16 * rank))
        if rank == 0:
            torch.save(({k: v.clone() for k, v in trainer.model.state_dict().items()}, losses), out)
    finally:
        dist.destroy_process_group()


def test_two_ranks_accumulating_2_equal_one_rank_accumulating_4(demo_betons: dict, global_batches: list,
                                                                one_rank_accumulating: tuple, tmp_path: Path) -> None:
    out = tmp_path / "rank0.pt"
    mp.spawn(accumulate_on_rank, nprocs=2, args=(2, str(tmp_path / "store"), demo_betons, str(tmp_path / "run"),
                                                 global_batches, str(out)))
    weights, losses = torch.load(out)
    accumulated, accumulated_losses = one_rank_accumulating
    assert_same_weights(accumulated, weights)
    assert losses == pytest.approx(accumulated_losses, rel=1e-5)


def test_epoch_counts_updates_and_a_stop_lands_on_an_update_boundary(demo_betons: dict, tmp_path: Path) -> None:
    from ffcv_imagenet.checkpointing import last_checkpoint_path, load_checkpoint
    from ffcv_imagenet.trainer import TrainingStopped

    trainer = build(demo_betons, tmp_path, batch=8, accumulate=3)
    plan = EpochPlan(0, 32, RRC)
    record = trainer.train_epoch(plan)
    micro_steps = len(trainer.train_loader)  # 144 images / 8 = 18 micro-steps, so 6 updates of 24
    assert record["steps"] == micro_steps // 3 == 6
    assert record["images_per_second"] > 0 and record["train_loss"] > 0
    trainer.samples_in_epoch = 0
    trainer.stop.requested = True  # a SIGTERM before the epoch: read with the first update, once the second is queued
    with pytest.raises(TrainingStopped):
        trainer.train_epoch(plan)
    trainer.checkpoints.wait()
    saved = load_checkpoint(last_checkpoint_path(tmp_path))
    assert saved["samples_in_epoch"] == 2 * 3 * 8  # two updates of 3 micro-batches, never part of one


@pytest.mark.parametrize("scaled", [False, True], ids=["skip flag", "fp16 scaler"])
def test_a_fused_optimizer_skips_a_non_finite_step_without_a_host_read(
        scaled: bool, demo_betons: dict, global_batches: list, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 26.9: with fused SGD (a GPU's; torch has it on the CPU too) a non-finite loss skips the step
    with nothing read on the host before it: through the fused kernel's skip flag, or under the fp16
    grad scaler through the scaler's own check. The loss here is infinite but its gradients finite,
    so only the trainer's flag can stop the step. A finite step then trains as the unfused one does."""
    from ffcv_imagenet.optimizers import build_optimizer
    from ffcv_imagenet.step_flags import QueuedUpdate

    def fused(trainer: Trainer) -> Trainer:
        trainer.optimizer = build_optimizer(trainer.config, trainer.model, fused=True)
        for group in trainer.optimizer.param_groups:
            group["lr"] = LR
        trainer.skips_on_device = True
        if scaled:
            trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
        return trainer

    trainer = fused(build(demo_betons, tmp_path / "fused", batch=GLOBAL, accumulate=1))
    plain = build(demo_betons, tmp_path / "plain", batch=GLOBAL, accumulate=1)
    assert not plain.skips_on_device  # the CPU's default: unfused, so CPU results are unchanged
    before = {name: value.clone() for name, value in trainer.model.state_dict().items()}
    criterion = trainer.criterion
    trainer.criterion = lambda logits, targets: criterion(logits, targets) + torch.tensor(float("inf"))
    reads = []
    monkeypatch.setattr(QueuedUpdate, "read", lambda update, read=QueuedUpdate.read: reads.append(1) or read(update))
    images, labels = global_batches[0]
    update = trainer.queue_step(images, labels)
    assert reads == []  # the step was queued, skipped or not, before anything was read
    loss, _, _ = trainer.settle(update)
    assert loss == float("inf") and trainer.bad_steps == 1
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, before[name]), name
    # Momentum untouched too: zeros, not the uninitialised buffers torch's fused SGD makes at a skipped first step
    assert all(torch.count_nonzero(state["momentum_buffer"]) == 0 for state in trainer.optimizer.state.values())
    if scaled:
        assert trainer.scaler.get_scale() == 2.0 ** 9  # the scaler saw a skipped step

    trainer.criterion = criterion
    for model in (trainer, plain):
        model.train_step(images, labels)
    assert trainer.bad_steps == 0
    for name, value in plain.model.state_dict().items():
        assert torch.allclose(value, trainer.model.state_dict()[name], rtol=1e-5, atol=1e-6), name
    assert not torch.equal(before["fc.weight"], trainer.model.state_dict()["fc.weight"])
