"""The trainer's parts on their own: LR schedule, val sharding, checkpoint checks, weight decay, evaluation."""
from __future__ import annotations

import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchvision import models

from ffcv_imagenet.checkpointing import (CheckpointWriter, check_resumable, load_checkpoint, recipe_differences,
                                         restore_rng_states, rng_states, save_checkpoint)
from ffcv_imagenet.config import Config, ConfigError, LRConfig, to_dict
from ffcv_imagenet.distributed import DistContext
from ffcv_imagenet.evaluation import evaluate
from ffcv_imagenet.loaders import normalize, val_indices
from ffcv_imagenet.lr_schedule import lr_at, lr_factor, peak_lr
from ffcv_imagenet.schedule import FIXRES, RRC, EpochPlan
from ffcv_imagenet.optimizers import backbone_frozen, parameter_groups
from helpers import REPO, cpu_env


def test_peak_lr_scales_with_the_global_batch() -> None:
    cfg = LRConfig(lr_per_256=0.1)
    assert peak_lr(cfg, 256) == pytest.approx(0.1)
    assert peak_lr(cfg, 8 * 512) == pytest.approx(1.6)  # 8 GPUs x 512
    # one GPU x 512 gets 1/8 of that: the recipe stays right when the GPU count changes
    assert peak_lr(cfg, 512) == pytest.approx(peak_lr(cfg, 8 * 512) / 8)


@pytest.mark.parametrize("shape", ["linear", "cosine"])
def test_warmup_then_decay_to_end_factor(shape: str) -> None:
    cfg = LRConfig(schedule=shape, warmup_epochs=2, warmup_start_factor=0.1, end_factor=0.01)
    assert lr_factor(cfg, 10, 0.0) == pytest.approx(0.1)
    assert lr_factor(cfg, 10, 1.0) == pytest.approx(0.55)
    assert lr_factor(cfg, 10, 2.0) == pytest.approx(1.0)
    assert lr_factor(cfg, 10, 10.0) == pytest.approx(0.01)
    middle = 0.01 + 0.99 * (0.5 if shape == "linear" else 0.5 * (1 + math.cos(math.pi / 2)))
    assert lr_factor(cfg, 10, 6.0) == pytest.approx(middle)
    factors = [lr_factor(cfg, 10, e / 10) for e in range(20, 101)]
    assert factors == sorted(factors, reverse=True)


def test_step_schedule_and_per_iteration_resolution() -> None:
    cfg = LRConfig(schedule="step", warmup_epochs=0, step_ratio=0.1, step_length=30, lr_per_256=0.1)
    assert [lr_factor(cfg, 90, e) for e in (0, 29.9, 30, 60)] == pytest.approx([1, 1, 0.1, 0.01])
    linear = LRConfig(schedule="linear", warmup_epochs=1, warmup_start_factor=0.0, lr_per_256=0.1)
    # within an epoch the LR moves every iteration
    assert lr_at(linear, 4, 256, 0, 50, 100) == pytest.approx(0.05)


@pytest.mark.parametrize("size,world", [(42, 2), (42, 4), (10, 3), (7, 8)])
def test_val_shards_cover_every_image_once(size: int, world: int) -> None:
    shards = [val_indices(size, rank, world) for rank in range(world)]
    together = np.sort(np.concatenate(shards))
    assert np.array_equal(together, np.arange(size))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_recipe_differences_name_what_changed() -> None:
    saved = to_dict(Config())
    current = Config()
    current.training.epochs = 88
    current.data.train_dataset = "/elsewhere/train.beton"  # moving the data is allowed
    current.training.compile = True  # so is compiling
    assert recipe_differences(saved, current) == ["training.epochs: 16 -> 88"]


def test_keys_added_since_a_checkpoint_count_as_their_defaults() -> None:
    saved = to_dict(Config())
    del saved["training"]["loss"], saved["training"]["focal_gamma"]  # as written before these keys existed
    assert recipe_differences(saved, Config()) == []
    current = Config()
    current.training.loss = "bce"
    assert recipe_differences(saved, current) == ["training.loss: 'ce' -> 'bce'"]


def test_checkpoint_round_trip_and_refusals(tmp_path: Path) -> None:
    path = tmp_path / "ckpt" / "last.pt"
    state = {"recipe": to_dict(Config()), "epoch": 3, "model": {"w": torch.ones(2)}}
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["w"], torch.ones(2))
    check_resumable(loaded, Config(), path)
    other = Config()
    other.model.arch = "resnet18"
    with pytest.raises(ConfigError, match="model.arch: 'resnet50' -> 'resnet18'"):
        check_resumable(loaded, other, path)
    path.write_bytes(path.read_bytes()[:100])  # truncated, as by a full disk
    with pytest.raises(ConfigError, match="not readable"):
        load_checkpoint(path)
    assert list(path.parent.iterdir()) == [path]  # no temporary left behind


def test_resume_inside_a_quasi_random_epoch_keeps_its_window(tmp_path: Path) -> None:
    saved = Config()
    saved.data.order, saved.data.cache_mib = "quasi_random", 4096
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"recipe": to_dict(saved), "epoch": 2, "samples_in_epoch": 64, "model": {}})
    state = load_checkpoint(path)
    current = Config()
    current.data.order, current.data.cache_mib = "quasi_random", 2048
    with pytest.raises(ConfigError, match=r"^data.cache_mib: 4096 -> 2048: .* inside epoch 2, .*"
                                          r"resume with data.cache_mib=4096$"):
        check_resumable(state, current, path)
    current.data.cache_mib = 4096  # the same window: the rest of the epoch is the same order
    check_resumable(state, current, path)
    current.data.cache_mib, current.data.order = 2048, "random"  # a random order has no window
    check_resumable(state, current, path)
    state["samples_in_epoch"] = 0  # at an epoch boundary the next epoch's order is drawn afresh
    current.data.order = "quasi_random"
    check_resumable(state, current, path)


def test_parameter_groups_decay_and_fixres_freezing() -> None:
    model = models.resnet18(num_classes=5)
    backbone, classifier, no_decay = parameter_groups(model, 5e-5)
    assert backbone["weight_decay"] == classifier["weight_decay"] == 5e-5 and no_decay["weight_decay"] == 0.0
    convs = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    norms = [p for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in (m.weight, m.bias)]
    assert {id(p) for p in backbone["params"]} == {id(p) for p in convs}
    assert classifier["params"] == [model.fc.weight]
    assert {id(p) for p in no_decay["params"]} == {id(p) for p in norms} | {id(model.fc.bias)}
    assert backbone["backbone"] and not classifier["backbone"] and not no_decay["backbone"]

    config = Config()
    config.resolution.fixres_train = "bn_fc"
    assert backbone_frozen(config, EpochPlan(9, 224, FIXRES)) and not backbone_frozen(config, EpochPlan(0, 160, RRC))
    config.resolution.fixres_train = "all"
    assert not backbone_frozen(config, EpochPlan(9, 224, FIXRES))


class FixedLogits(nn.Module):
    """Predicts from the image's mean red value, so the right answer is known in advance."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = x[:, 0].mean(dim=(1, 2))
        return torch.stack([score, -score, torch.zeros_like(score), 0.5 * score, -0.5 * score, 0.1 * score], 1)


def test_evaluate_counts_hits_exactly() -> None:
    ctx = DistContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    bright = torch.full((3, 3, 4, 4), 255, dtype=torch.uint8)
    dark = torch.zeros((2, 3, 4, 4), dtype=torch.uint8)
    batches = [(bright, torch.tensor([0, 0, 3])), (dark, torch.tensor([1, 2]))]
    result = evaluate(FixedLogits(), batches, ctx, precision="fp32", flip_tta=True)
    # bright: class 0 first, then 3; dark: class 1 first, then 4
    assert result.count == 5 and result.top1 == pytest.approx(3 / 5) and result.top5 == pytest.approx(1.0)
    assert normalize(bright).mean().item() > 2 and normalize(dark).mean().item() < -1.5


def test_rng_states_hold_only_the_ranks_own_device(tmp_path: Path) -> None:
    """Issue 17.2: no list of every visible GPU (a node with fewer GPUs could not restore it); a CPU run
    resuming a checkpoint written on a GPU node restores the host generators and leaves CUDA alone."""
    cpu = torch.device("cpu")
    states = rng_states(cpu)
    assert states["cuda"] is None
    expected = torch.rand(3)
    from_gpu_node = {**states, "cuda": torch.zeros(16, dtype=torch.uint8)}  # what a CUDA rank saves
    save_checkpoint(tmp_path / "last.pt", {"rng": from_gpu_node})
    restore_rng_states(load_checkpoint(tmp_path / "last.pt")["rng"], cpu)
    assert torch.equal(torch.rand(3), expected)


def test_background_checkpoint_is_a_copy_written_before_its_callback(tmp_path: Path) -> None:
    """Issue 17.7: training may change the weights during the write; the log line follows the file."""
    path = tmp_path / "ckpt" / "last.pt"
    weights = torch.zeros(1000)
    seen_on_disk = []
    writer = CheckpointWriter()
    writer.submit(path, {"model": {"w": weights}, "epoch": 1},
                  then=lambda: seen_on_disk.append(load_checkpoint(path)["epoch"]))
    weights += 1  # the next step, while the writer may still be writing
    writer.wait()
    assert seen_on_disk == [1] and torch.equal(load_checkpoint(path)["model"]["w"], torch.zeros(1000))
    blocked = tmp_path / "ckpt" / "blocked.pt"
    blocked.mkdir()  # the rename fails, as a full disk would fail the write: the caller hears of it
    writer.submit(blocked, {"epoch": 2})
    with pytest.raises(IsADirectoryError):
        writer.wait()
    writer.wait()  # raised once
    assert load_checkpoint(path)["epoch"] == 1


KILLED_WRITER = """
import sys, time, torch
from ffcv_imagenet.checkpointing import CheckpointWriter, save_checkpoint
save_checkpoint(sys.argv[1], {"epoch": 1, "model": {"w": torch.zeros(4)}})
writer = CheckpointWriter()
writer.submit(sys.argv[1], {"epoch": 2, "model": {"w": torch.ones(2 ** 25)}})  # 128 MiB
print("submitted", flush=True)
time.sleep(300)
"""


def test_kill_during_the_background_write_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    process = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)], cwd=REPO, env=cpu_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "submitted\n", process.stderr.read()[-2000:]  # epoch 1 is on disk
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".last.pt.*.tmp")):  # the write has begun
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()[-2000:]
            time.sleep(0.0005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.communicate(timeout=60)
    assert load_checkpoint(path)["epoch"] == 1
    assert list(tmp_path.glob(".last.pt.*.tmp"))  # killed mid-write: only the temporary is torn
