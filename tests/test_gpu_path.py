"""GPU-path defects of issue 17 that only show on CUDA; each test skips cleanly without a GPU."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ffcv_imagenet.checkpointing import CheckpointWriter, load_checkpoint, restore_rng_states, rng_states
from ffcv_imagenet.config import AugmentConfig
from ffcv_imagenet.loaders import LoaderSettings, build_val_loader
from ffcv_imagenet.regularizers import BatchMixer
from helpers import REPO, cpu_env

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
VAL_IMAGES = 42  # conftest: 6 classes x 7


def cuda() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device())


@pytest.mark.parametrize("channels_last", [False, True])
def test_batches_stay_on_the_device_in_both_layouts(demo_betons: dict, channels_last: bool) -> None:
    """17.1: with channels_last false FFCV's ToTorchImage copied the batch back into a host buffer."""
    settings = LoaderSettings(batch_size=8, num_workers=2, device=cuda(), channels_last=channels_last)
    loader = build_val_loader(demo_betons["val"], settings, res=64, crop_ratio=224 / 256, num_samples=VAL_IMAGES,
                              rank=0, world_size=1)
    for images, labels in loader:
        assert images.device == cuda() and labels.device == cuda()
        layout = torch.channels_last if channels_last else torch.contiguous_format
        assert images.is_contiguous(memory_format=layout)


def test_cuda_generator_round_trips_on_the_own_device() -> None:
    """17.2: one state, the rank's device's; restoring it repeats that device's draws."""
    states = rng_states(cuda())
    assert isinstance(states["cuda"], torch.Tensor)
    first = torch.rand(8, device=cuda())
    restore_rng_states(states, cuda())
    assert torch.equal(torch.rand(8, device=cuda()), first)


NO_CONTEXT_ON_GPU0 = """
import sys, torch
from ffcv_imagenet.loaders import LoaderSettings, build_val_loader
torch.cuda.set_device(1)  # what init_distributed does for local rank 1
settings = LoaderSettings(batch_size=8, num_workers=2, device=torch.device("cuda", 1))
loader = build_val_loader(sys.argv[1], settings, res=64, crop_ratio=0.875, num_samples=42, rank=0, world_size=1)
for images, labels in loader:
    assert images.device == torch.device("cuda", 1)
torch.cuda.synchronize(1)
print(int(torch._C._cuda_hasPrimaryContext(0)), int(torch._C._cuda_hasPrimaryContext(1)))
"""


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_loader_thread_of_rank_1_creates_no_context_on_gpu_0(demo_betons: dict) -> None:
    """17.4: FFCV's epoch thread left its copy stream on device 0 (about 400 MiB per rank there)."""
    result = subprocess.run([sys.executable, "-c", NO_CONTEXT_ON_GPU0, str(demo_betons["val"])], cwd=REPO,
                            env=cpu_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["0", "1"]


@pytest.mark.parametrize("mixup,cutmix", [(0.4, 0.0), (0.0, 1.0)])
def test_mixed_batches_stay_channels_last_on_the_gpu(mixup: float, cutmix: float) -> None:
    """17.5: torch's roll on CUDA returns NCHW, so MixUp did."""
    torch.manual_seed(0)
    inputs = torch.randn(8, 3, 16, 16, device=cuda()).contiguous(memory_format=torch.channels_last)
    labels = torch.arange(8, device=cuda()) % 5
    mixed, _ = BatchMixer(AugmentConfig(mixup_alpha=mixup, cutmix_alpha=cutmix), 5)(inputs, labels)
    assert mixed.is_contiguous(memory_format=torch.channels_last)


def test_background_checkpoint_copies_device_tensors(tmp_path: Path) -> None:
    """17.7: the host copy is taken at submit; the device weights go on changing."""
    weights = torch.zeros(1 << 20, device=cuda())
    writer = CheckpointWriter()
    writer.submit(tmp_path / "last.pt", {"model": {"w": weights}})
    weights += 1
    writer.wait()
    saved = load_checkpoint(tmp_path / "last.pt")["model"]["w"]
    assert saved.device.type == "cpu" and torch.equal(saved, torch.zeros(1 << 20))


def test_fused_sgd_skips_on_a_device_flag_and_answers_are_read_from_pinned_memory() -> None:
    """26.9: what the training step relies on, on CUDA: the recipe's SGD is fused there; a skip flag on
    the device leaves the weights and the (zeroed) momentum as they were; an update's all-reduced
    answers come back through pinned memory once their event has passed."""
    from torchvision import models

    from ffcv_imagenet.config import Config
    from ffcv_imagenet.optimizers import build_optimizer
    from ffcv_imagenet.step_flags import QueuedUpdate

    model = models.resnet18(num_classes=6).to(cuda())
    optimizer = build_optimizer(Config(), model)
    assert optimizer.defaults["fused"]
    for group in optimizer.param_groups:
        group["lr"] = 0.1
    model(torch.randn(2, 3, 32, 32, device=cuda())).sum().backward()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    optimizer.found_inf = torch.ones(1, device=cuda())
    optimizer.step()
    del optimizer.found_inf
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert all(torch.count_nonzero(state["momentum_buffer"]) == 0 for state in optimizer.state.values())
    optimizer.step()
    assert not torch.equal(model.fc.weight, before["fc.weight"]) and torch.isfinite(model.fc.weight).all()

    update = QueuedUpdate(torch.tensor([6.0, 1.0, 0.0], device=cuda()), world_size=2)
    assert update.values.is_pinned() and update.read() == (3.0, True, False)
