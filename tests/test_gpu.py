"""The CUDA path: mixed-precision steps, memory across resolution changes, batches normalised on the device,
two-rank NCCL and the profile command.

Tests marked ``gpu`` need CUDA and skip, saying so, without it; benchmarks/gpu_check.py runs them on a
GPU host (``pytest -m gpu tests/test_gpu.py``). Where the same check can run on the CPU it also runs
there (ResNet-18, bf16, small sizes), so the check itself is known to work before it meets a GPU.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import torch

from ffcv_imagenet.checkpointing import last_checkpoint_path
from ffcv_imagenet.recipes import load_config
from ffcv_imagenet.distributed import DistContext
from ffcv_imagenet.loaders import normalize
from ffcv_imagenet.schedule import FIXRES, RRC, EpochPlan
from ffcv_imagenet.preflight import preflight
from ffcv_imagenet.trainer import Trainer, memory_stats
from helpers import DEMO_RECIPE, epoch_records, explain, run, tiny_overrides, torchrun_command

NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs CUDA: no GPU visible here (benchmarks/gpu_check.py runs these on one)")
GPU_COUNT = torch.cuda.device_count() if torch.cuda.is_available() else 0
STEPS = 3  # steps per pass: enough for the scaler, the optimizer state and the loader's buffers to settle
MIB = 2 ** 20
# After the first pass at a size, later passes at that size allocate the same tensors: the device peak
# may only move by cuDNN's workspace choice (1%) plus allocator rounding (8 MiB); host memory may grow
# by allocator slack (64 MiB), far below what keeping one epoch's pinned batch buffers would add
# (FFCV: 5 x batch x 256 x 256 x 3 bytes for the demo data: 31 MiB at batch 32, per pass).
PEAK_SHARE, PEAK_SLACK_MIB, RSS_SLACK_MIB = 0.01, 8, 64
CYCLES = 3  # passes at each size: the first settles, the others must stay flat


@dataclass(frozen=True)
class Case:
    device: str
    arch: str
    sizes: tuple[int, int, int]  # main phase start, main phase end, FixRes
    batch: int


CPU = Case("cpu", "resnet18", (32, 48, 64), 8)
CUDA = Case("cuda", "resnet50", (160, 192, 224), 32)
ON_CPU_AND_GPU = [pytest.param(CPU, id="cpu"), pytest.param(CUDA, id="cuda", marks=[pytest.mark.gpu, NEEDS_CUDA])]
PRECISIONS = [pytest.param(CPU, "bf16", id="cpu-bf16"),
              pytest.param(CUDA, "fp16", id="cuda-fp16", marks=[pytest.mark.gpu, NEEDS_CUDA]),
              pytest.param(CUDA, "bf16", id="cuda-bf16", marks=[pytest.mark.gpu, NEEDS_CUDA])]


def case_overrides(betons: dict, folder: Path, case: Case, precision: str, **extra: object) -> list[str]:
    low, high, fixres = case.sizes
    return tiny_overrides(betons, folder, **{
        "model.arch": case.arch, "training.precision": precision, "training.batch_size": case.batch,
        "resolution.min_res": low, "resolution.max_res": high, "resolution.fixres_res": fixres,
        "validation.resolution": fixres, "lr.warmup_epochs": 0, "dist.device": case.device, **extra})


def build_trainer(betons: dict, folder: Path, case: Case, precision: str, resume_from: Path | None = None) -> Trainer:
    config = load_config(DEMO_RECIPE, case_overrides(betons, folder, case, precision))
    device = torch.device("cuda", 0) if case.device == "cuda" else torch.device("cpu")  # as init_distributed
    ctx = DistContext(rank=0, local_rank=0, world_size=1, device=device)
    return Trainer(config, ctx, preflight(config, ctx), resume_from)


@pytest.fixture(scope="module")
def trainers(demo_betons: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """One trainer per (case, precision), shared: numba compiles each loader's pipelines once."""
    built: dict[tuple[Case, str], Trainer] = {}

    def get(case: Case, precision: str) -> Trainer:
        if (case, precision) not in built:
            folder = tmp_path_factory.mktemp(f"{case.device}_{precision}")
            built[(case, precision)] = build_trainer(demo_betons, folder, case, precision)
        return built[(case, precision)]

    yield get
    built.clear()


def train_pass(trainer: Trainer, plan: EpochPlan, steps: int = STEPS) -> list[float]:
    """``steps`` training steps of ``plan``'s epoch, as train_epoch runs them; returns the losses."""
    trainer.augment_on = plan.crop_mode == RRC
    losses = []
    with contextlib.closing(trainer.train_loader.epoch(plan)) as batches:
        for step, (images, labels) in enumerate(itertools.islice(batches, steps)):
            trainer._set_lr(plan, step, len(trainer.train_loader))
            loss, _, _ = trainer.train_step(images, labels)
            losses.append(loss)
    return losses


# ---------------------------------------------------------------- steps, scaler, weights
@pytest.mark.parametrize("case, precision", PRECISIONS)
def test_mixed_precision_steps_learn_and_the_scaler_state_resumes(case: Case, precision: str, trainers,
                                                                  demo_betons: dict) -> None:
    trainer = trainers(case, precision)
    assert trainer.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    before = {name: value.detach().clone() for name, value in trainer.model.named_parameters()}
    losses = train_pass(trainer, trainer.plans[0])
    assert len(losses) == STEPS and all(map(math.isfinite, losses)), losses
    assert trainer.bad_steps == 0
    changed = [name for name, value in trainer.model.named_parameters() if not torch.equal(value, before[name])]
    assert "conv1.weight" in changed and "fc.weight" in changed, changed

    if trainer.scaler.is_enabled():
        trainer.scaler.update(new_scale=1234.0)  # a scale no fresh scaler has: the restore is visible
    trainer.save()
    saved = trainer.scaler.state_dict()
    path = last_checkpoint_path(trainer.folder)
    resumed = build_trainer(demo_betons, trainer.folder, case, precision, resume_from=path)
    assert resumed.scaler.state_dict() == saved
    assert resumed.scaler.is_enabled() == (precision == "fp16")
    if precision == "fp16":
        assert resumed.scaler.get_scale() == 1234.0
    for name, value in resumed.model.state_dict().items():
        assert torch.equal(value, trainer.model.state_dict()[name]), name


# ---------------------------------------------------------------- memory across resolution changes
@pytest.mark.parametrize("case", ON_CPU_AND_GPU)
def test_memory_is_flat_after_the_first_pass_at_each_size(case: Case, trainers) -> None:
    trainer = trainers(case, "fp16" if case.device == "cuda" else "bf16")
    assert [(plan.res, plan.crop_mode) for plan in trainer.plans] == [
        (case.sizes[0], RRC), (case.sizes[1], RRC), (case.sizes[2], FIXRES)]
    device = trainer.ctx.device
    peaks: dict[int, list[float]] = {plan.res: [] for plan in trainer.plans}
    rss: list[float] = []  # host memory after each pass, in order
    for _ in range(CYCLES):
        for plan in trainer.plans:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            train_pass(trainer, plan)
            stats = memory_stats(device)
            peaks[plan.res].append(stats["gpu_peak_mib"] or 0.0)
            rss.append(stats["host_rss_mib"])
    for res in peaks:
        first, *later = peaks[res]
        assert all(peak <= first * (1 + PEAK_SHARE) + PEAK_SLACK_MIB for peak in later), (res, peaks)
    # Host memory is the process's, not a size's: its baseline is taken after the first full cycle, once
    # every size has run. Torch's pinned host cache rounds blocks up to powers of two and never frees
    # them, so the first pass at a larger size may grow it after an earlier size's first reading.
    cycle = len(trainer.plans)
    settled, after = rss[cycle - 1], rss[cycle:]
    assert after and all(value <= settled + RSS_SLACK_MIB for value in after), rss
    if device.type == "cuda":
        assert peaks[case.sizes[0]][0] < peaks[case.sizes[2]][0]  # the bigger batch really was measured


# ---------------------------------------------------------------- batches on the device
@pytest.mark.parametrize("case", ON_CPU_AND_GPU)
def test_uint8_batches_arrive_channels_last_on_the_device_and_are_normalised_there(case: Case, trainers) -> None:
    trainer = trainers(case, "fp16" if case.device == "cuda" else "bf16")
    res = case.sizes[0]
    with contextlib.closing(trainer.train_loader.epoch(EpochPlan(0, res, RRC))) as batches:
        images, labels = next(batches)
        assert images.device.type == case.device and labels.device.type == case.device
        assert images.dtype == torch.uint8 and images.shape == (case.batch, 3, res, res)
        assert images.is_contiguous(memory_format=torch.channels_last)
        assert labels.shape == (case.batch,) and labels.dtype == torch.int64
        for dtype, tolerance in ((torch.float32, 1e-5), (torch.float16, 1e-2), (torch.bfloat16, 5e-2)):
            inputs = normalize(images, dtype)
            assert inputs.device == images.device and inputs.dtype == dtype
            assert inputs.is_contiguous(memory_format=torch.channels_last)
            expected = normalize(images.cpu()).to(dtype).float()  # the same formula on the host
            assert torch.allclose(inputs.float().cpu(), expected, atol=tolerance, rtol=tolerance)
        assert images.dtype == torch.uint8 and int(images.max()) > 1  # normalising left FFCV's buffer alone


# ---------------------------------------------------------------- two ranks, NCCL
@pytest.mark.gpu
@pytest.mark.skipif(GPU_COUNT < 2, reason=f"two-rank NCCL needs two GPUs; {GPU_COUNT} visible here")
def test_two_ranks_on_nccl_train_and_count_every_val_image_once(demo_betons: dict, tmp_path: Path) -> None:
    args = case_overrides(demo_betons, tmp_path, CUDA, "fp16", **{"dist.backend": "nccl", "training.epochs": 2,
                                                                "resolution.fixres_epochs": 1})
    result = run(torchrun_command(args, nproc=2))
    assert result.returncode == 0, explain(result)
    records = epoch_records(tmp_path)
    assert [record["val_count"] for record in records] == [42, 42]  # conftest: 6 classes x 7, once each
    assert records[0]["steps"] == 144 // 2 // CUDA.batch
    assert all(record["gpu_peak_mib"] > 0 and record["train_loss"] > 0 for record in records)
    assert "2 rank(s) (cuda)" in result.stdout


# ---------------------------------------------------------------- the profile command
@pytest.mark.gpu
@NEEDS_CUDA
def test_profile_command_on_the_gpu_measures_the_transfer(demo_betons: dict, tmp_path: Path) -> None:
    out = tmp_path / "profile.json"
    result = run([sys.executable, "-m", "ffcv_imagenet.profile", "--config", str(DEMO_RECIPE),
                  *case_overrides(demo_betons, tmp_path / "run", CUDA, "fp16"), "--res", str(CUDA.sizes[0]),
                  "--warmup-steps", "2", "--steps", "3", "--repeats", "2", "--out", str(out)])
    assert result.returncode == 0, explain(result)
    report = json.loads(out.read_text())
    assert report["setup"]["device"].startswith("cuda") and report["setup"]["transfer_measured"]
    assert report["setup"]["precision"] == "fp16" and report["setup"]["arch"] == CUDA.arch
    (row,) = report["rows"]
    assert (row["res"], row["crop_mode"]) == (CUDA.sizes[0], RRC)
    for key in ("loader_host", "loader_device", "model", "end_to_end"):
        assert len(row[key]["runs"]) == 2 and min(row[key]["runs"]) > 0, key
    assert row["ratio"] == pytest.approx(row["end_to_end"]["median"] /
                                         min(row["loader_device"]["median"], row["model"]["median"]))
    assert statistics.median(row["model"]["runs"]) == pytest.approx(row["model"]["median"])
    assert "both loader columns are one measurement" not in result.stdout
