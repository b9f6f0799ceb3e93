"""checkpoints/best.pt and best_weights*.pt: kept for the best val top-1, across a SIGTERM and a resume."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision import models

from ffcv_imagenet.checkpointing import best_checkpoint_path, last_checkpoint_path, load_checkpoint
from ffcv_imagenet.model import torchvision_state_dict, torchvision_weights
from ffcv_imagenet.run_log import read_log
from ffcv_imagenet.cli import EXIT_PREEMPTED
from ffcv_imagenet.checkpointing import BEST_EMA_WEIGHTS, BEST_WEIGHTS
from helpers import DEMO_RECIPE, epoch_records, explain, interrupt_after_epochs, run, tiny_overrides, train_command

CLASSES = 6  # conftest's demo set


def expected_bests(records: list[dict], key: str) -> list[tuple[int, float]]:
    """(epoch, top-1) of every epoch that beat all earlier ones: the running maximum's steps."""
    bests: list[tuple[int, float]] = []
    for record in records:
        if not bests or record[key] > bests[-1][1]:
            bests.append((record["epoch"], record[key]))
    return bests


def logged_bests(folder: Path, weights: str) -> list[tuple[int, float]]:
    return [(r["epoch"], r["val_top1"]) for r in read_log(folder)
            if r["kind"] == "event" and r["event"] == "best" and r["weights"] == weights]


def assert_same_weights(expected: dict, actual: dict) -> None:
    assert expected.keys() == actual.keys()
    for key, value in expected.items():
        assert torch.equal(value, actual[key]), key


def test_best_checkpoint_survives_sigterm_and_resume(demo_betons: dict, tmp_path: Path) -> None:
    args = tiny_overrides(demo_betons, tmp_path, **{"ema.decay": 0.9})
    interrupted_run = interrupt_after_epochs(train_command(args), tmp_path)  # SIGTERM lands inside epoch 1
    stdout, stderr = interrupted_run.stdout, interrupted_run.stderr
    assert interrupted_run.returncode == EXIT_PREEMPTED, f"{stdout}\n{stderr}"
    first = epoch_records(tmp_path)[0]
    assert "best val top-1 so far" in stdout and "best EMA val top-1 so far" in stdout
    saved_best = {"model": {"epoch": 0, "val_top1": first["val_top1"]},
                  "ema": {"epoch": 0, "val_top1": first["ema_val_top1"]}}
    assert load_checkpoint(last_checkpoint_path(tmp_path))["best"] == saved_best  # what a resume starts from
    assert load_checkpoint(best_checkpoint_path(tmp_path))["epoch"] == 1  # a state at the end of epoch 0
    before = best_checkpoint_path(tmp_path).stat().st_mtime_ns

    resumed = run(train_command(args))
    assert resumed.returncode == 0, explain(resumed)
    records = epoch_records(tmp_path)
    assert [r["epoch"] for r in records] == [0, 1, 2]
    # A best event exactly where the running maximum rose: a best lost at the resume would log another
    for weights, key in (("model", "val_top1"), ("ema", "ema_val_top1")):
        assert logged_bests(tmp_path, weights) == expected_bests(records, key), weights
    best_epoch, best_top1 = expected_bests(records, "val_top1")[-1]
    best = load_checkpoint(best_checkpoint_path(tmp_path))
    assert best["epoch"] == best_epoch + 1 and best["best"]["model"] == {"epoch": best_epoch, "val_top1": best_top1}
    if best_epoch == 0:  # not improved after the resume: the file from before it is kept as it was
        assert best_checkpoint_path(tmp_path).stat().st_mtime_ns == before

    # best_weights.pt is best.pt's model as a plain torchvision state_dict
    plain = models.resnet18(num_classes=CLASSES)
    plain.load_state_dict(best["model"])
    assert_same_weights(torchvision_state_dict(plain), torch.load(tmp_path / BEST_WEIGHTS, weights_only=True))
    models.resnet18(num_classes=CLASSES).load_state_dict(torch.load(tmp_path / BEST_EMA_WEIGHTS, weights_only=True))

    evaluated = run(train_command([*args, "--evaluate", str(best_checkpoint_path(tmp_path)), "--eval-res", "64"]))
    assert evaluated.returncode == 0, explain(evaluated)
    row = [line.split("|") for line in evaluated.stdout.splitlines() if line.strip().startswith("64 |")]
    assert len(row) == 1 and float(row[0][1].strip(" %")) == pytest.approx(100 * best_top1, abs=0.006)


def test_one_checkpoint_job_per_epoch_from_one_host_copy(demo_betons: dict, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 26.10: an improving epoch's best.pt, best weights and last.pt are one background job
    made from one host copy of the state (epoch 0 here: best files only, checkpoint_every 5;
    epoch 1, the last: last.pt too)."""
    from ffcv_imagenet import checkpointing
    from ffcv_imagenet.recipes import load_config
    from ffcv_imagenet.distributed import DistContext
    from ffcv_imagenet.trainer import Trainer, preflight

    config = load_config(DEMO_RECIPE, tiny_overrides(demo_betons, tmp_path, **{
        "training.epochs": 2, "resolution.fixres_epochs": 0, "ema.decay": 0.9, "logging.checkpoint_every": 5,
        "validation.resolutions": "[]"}))
    ctx = DistContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    host_copies = []  # whole states copied to the host (to_host also calls itself on their parts)

    def counted(value: object, copy=checkpointing.to_host) -> object:
        if isinstance(value, dict) and "recipe" in value:
            host_copies.append(value["epoch"])
        return copy(value)

    monkeypatch.setattr(checkpointing, "to_host", counted)
    trainer = Trainer(config, ctx, preflight(config, ctx))
    trainer.run()
    records = epoch_records(tmp_path)
    assert [r["epoch"] for r in records] == [0, 1] and trainer.checkpoints.jobs == 2 and host_copies == [1, 2]
    last = load_checkpoint(last_checkpoint_path(tmp_path))
    best = load_checkpoint(best_checkpoint_path(tmp_path))
    best_epoch = expected_bests(records, "val_top1")[-1][0]
    assert last["epoch"] == 2 and best["epoch"] == best_epoch + 1
    if best_epoch == 1:  # the same state, from the same copy, in both files
        assert_same_weights(best["model"], last["model"])
    assert_same_weights(torchvision_weights(best["model"]), torch.load(tmp_path / BEST_WEIGHTS, weights_only=True))
    ema_epoch = expected_bests(records, "ema_val_top1")[-1][0]
    ema_weights = torch.load(tmp_path / BEST_EMA_WEIGHTS, weights_only=True)
    if ema_epoch == 1:
        assert_same_weights(torchvision_weights(last["ema"]["weights"]), ema_weights)
    assert ema_weights.keys() == torchvision_weights(best["model"]).keys()
