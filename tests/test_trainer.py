"""The trainer as users run it: train_imagenet.py in a subprocess, alone and under torchrun (gloo, CPU);
most tests around one shared uninterrupted run (interrupted and resumed runs equal it, its weights
evaluate to its logged numbers). The README demo and other one-off runs: test_trainer_runs.py."""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from torchvision import models

from ffcv_imagenet.checkpointing import last_checkpoint_path, load_checkpoint
from ffcv_imagenet.recipes import load_config
from ffcv_imagenet.run_log import SAMPLE_LOG_ENV
from ffcv_imagenet.schedule import full_schedule
from ffcv_imagenet.tensorboard_log import TENSORBOARD_FOLDER
from ffcv_imagenet.cli import EXIT_ERROR, EXIT_PREEMPTED
from ffcv_imagenet.checkpointing import FINAL_WEIGHTS
from helpers import (REPO, cpu_env, epoch_records, explain, free_port, interrupt_after_epochs, run, tiny_overrides,
                     torchrun_command, train_command)

VAL_IMAGES = 42  # conftest: 6 classes x 7; 21 per rank in batches of 8: uneven on purpose


@pytest.fixture(scope="module")
def straight_run(demo_betons: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three uninterrupted epochs: 32 px rrc, 64 px rrc, 64 px fixres."""
    folder = tmp_path_factory.mktemp("straight")
    result = run(train_command(tiny_overrides(demo_betons, folder, **{"validation.resolutions": "[48,64]"})))
    assert result.returncode == 0, explain(result)
    return folder


def test_log_follows_the_schedule_with_first_batch_shapes(straight_run: Path, demo_betons: dict) -> None:
    records = epoch_records(straight_run)
    config = load_config(REPO / "rcfg" / "demo.yaml",
                         tiny_overrides(demo_betons, straight_run, **{"validation.resolutions": "[48,64]"}))
    plans = full_schedule(config.resolution, config.training.epochs)
    assert [(r["epoch"], r["res"], r["crop_mode"]) for r in records] == [(p.epoch, p.res, p.crop_mode) for p in plans]
    assert [r["first_batch_shape"] for r in records] == [[8, 3, p.res, p.res] for p in plans]
    for record in records:
        assert record["val_count"] == VAL_IMAGES and 0.0 <= record["val_top1"] <= record["val_top5"] <= 1.0
        assert record["images_per_second"] > 0 and record["train_loss"] > 0 and record["host_rss_mib"] > 0
    lrs = [r["lr"] for r in records]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < lrs[0]  # linear decay after the one warm-up epoch
    assert (straight_run / "recipe.yaml").is_file()
    resolved = load_config(straight_run / "recipe.yaml")
    assert resolved == config  # the saved recipe reproduces the run's settings exactly


def test_final_weights_load_into_torchvision(straight_run: Path) -> None:
    weights = torch.load(straight_run / FINAL_WEIGHTS, weights_only=True)
    model = models.resnet18(num_classes=6)
    model.load_state_dict(weights)  # strict: every key present, none extra
    model.eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 6)


def test_no_tensorboard_folder_without_the_key(straight_run: Path) -> None:
    assert (straight_run / "log.jsonl").is_file() and not (straight_run / TENSORBOARD_FOLDER).exists()


def test_finished_run_is_not_trained_again(straight_run: Path, demo_betons: dict) -> None:
    before = (straight_run / FINAL_WEIGHTS).stat().st_mtime_ns
    result = run(train_command(tiny_overrides(demo_betons, straight_run)))
    assert result.returncode == 0, explain(result)
    assert "already finished" in result.stdout
    assert (straight_run / FINAL_WEIGHTS).stat().st_mtime_ns == before


def test_sigterm_checkpoints_and_resume_equals_uninterrupted(straight_run: Path, demo_betons: dict,
                                                             tmp_path: Path) -> None:
    args = tiny_overrides(demo_betons, tmp_path)
    interrupted_run = interrupt_after_epochs(train_command(args), tmp_path)  # SIGTERM lands inside epoch 1
    stdout, stderr = interrupted_run.stdout, interrupted_run.stderr
    assert interrupted_run.returncode == EXIT_PREEMPTED, f"{stdout}\n{stderr}"
    assert len(stderr.strip().splitlines()) == 1 and "checkpoint saved" in stderr
    interrupted = load_checkpoint(last_checkpoint_path(tmp_path))
    assert interrupted["epoch"] == 1 and interrupted["samples_in_epoch"] >= 8  # inside epoch 1, after a batch

    resumed = run(train_command(args))
    assert resumed.returncode == 0, explain(resumed)
    assert "resumed from" in resumed.stdout
    straight = torch.load(straight_run / FINAL_WEIGHTS, weights_only=True)
    again = torch.load(tmp_path / FINAL_WEIGHTS, weights_only=True)
    for key, value in straight.items():
        assert torch.allclose(value.float(), again[key].float(), rtol=1e-4, atol=1e-5), key
    final_straight, final_again = epoch_records(straight_run)[-1], epoch_records(tmp_path)[-1]
    assert final_again["val_top1"] == pytest.approx(final_straight["val_top1"])


def test_sigterm_during_validation_stops_before_the_next_epoch(straight_run: Path, demo_betons: dict,
                                                                tmp_path: Path) -> None:
    """Issue 26.14: a stop that arrives after an epoch's last training step (the first val pass
    compiles its pipeline: seconds) is acted on when validation ends, with a checkpoint at the
    epoch's end, not at the next epoch's first step; the resumed run equals the uninterrupted one."""
    args = tiny_overrides(demo_betons, tmp_path)
    samples = tmp_path / "samples"
    samples.mkdir()
    process = subprocess.Popen(train_command(args), cwd=REPO, env={**cpu_env(), SAMPLE_LOG_ENV: str(samples)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    trained = samples / "rank0.txt"
    steps = 144 // 8  # epoch 0's steps (conftest's 144 train images, batch 8)
    deadline = time.monotonic() + 300
    while not (trained.is_file() and len(trained.read_text().splitlines()) >= steps):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it was signalled"
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)  # epoch 0's training is done: its validation runs now
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == EXIT_PREEMPTED, f"{stdout}\n{stderr}"
    assert len(stderr.strip().splitlines()) == 1 and "checkpoint saved at the end of epoch 0" in stderr
    stopped = load_checkpoint(last_checkpoint_path(tmp_path))
    assert (stopped["epoch"], stopped["samples_in_epoch"]) == (1, 0)
    assert [line.split()[0] for line in trained.read_text().splitlines()] == ["0"] * steps  # no epoch-1 step
    records = epoch_records(tmp_path)
    assert [r["epoch"] for r in records] == [0] and records[0]["checkpoint"] and "val_top1" in records[0]

    resumed = run(train_command(args))
    assert resumed.returncode == 0, explain(resumed)
    straight = torch.load(straight_run / FINAL_WEIGHTS, weights_only=True)
    again = torch.load(tmp_path / FINAL_WEIGHTS, weights_only=True)
    for key, value in straight.items():
        assert torch.allclose(value.float(), again[key].float(), rtol=1e-4, atol=1e-5), key


def test_checkpoint_of_another_recipe_is_refused(straight_run: Path, demo_betons: dict) -> None:
    result = run(train_command(tiny_overrides(demo_betons, straight_run, **{"lr.lr_per_256": 0.2})))
    assert result.returncode == EXIT_ERROR
    assert result.stderr.count("\n") == 1 and "lr.lr_per_256: 0.4 -> 0.2" in result.stderr, explain(result)


@pytest.mark.parametrize("weights", [FINAL_WEIGHTS, "checkpoints/last.pt"])
def test_evaluate_command_reproduces_the_runs_own_numbers(straight_run: Path, demo_betons: dict,
                                                          weights: str) -> None:
    """Saved weights evaluated on their own give the numbers the run logged, at every test resolution."""
    result = run(train_command([*tiny_overrides(demo_betons, straight_run), "--evaluate",
                                str(straight_run / weights), "--eval-res", "48", "64"]))
    assert result.returncode == 0, explain(result)
    logged = [r for r in map(json.loads, (straight_run / "log.jsonl").read_text().splitlines())
              if r["kind"] == "resolution_table"][-1]
    assert [row["res"] for row in logged["rows"]] == [48, 64] and logged["trained_at"] == 64
    assert logged["rows"][1]["top1"] == pytest.approx(epoch_records(straight_run)[-1]["val_top1"])
    printed = [line.split("|") for line in result.stdout.splitlines() if line.strip()[:2] in ("48", "64")]
    assert len(printed) == 2
    for row, cells in zip(logged["rows"], printed):
        assert float(cells[1].strip(" %")) == pytest.approx(100 * row["top1"], abs=0.006)
        assert float(cells[2].strip(" %")) == pytest.approx(100 * row["top5"], abs=0.006)


def test_torchrun_two_ranks_count_every_val_image_once(demo_betons: dict, tmp_path: Path) -> None:
    args = tiny_overrides(demo_betons, tmp_path, **{"training.epochs": 2, "resolution.fixres_epochs": 1})
    result = run(torchrun_command(args, nproc=2))
    assert result.returncode == 0, explain(result)
    records = epoch_records(tmp_path)
    assert [r["val_count"] for r in records] == [VAL_IMAGES, VAL_IMAGES]
    assert records[0]["steps"] == 144 // 2 // 8  # each rank read its own half of the train set
    assert "2 rank(s)" in result.stdout and result.stdout.count("epoch 0 (of 0-1)") == 1  # rank 0 alone logs


def test_two_node_rendezvous_on_localhost(demo_betons: dict, tmp_path: Path) -> None:
    """Two torchrun launches, one per 'node', meeting through torchrun's rendezvous on 127.0.0.1."""
    args = tiny_overrides(demo_betons, tmp_path, **{"training.epochs": 1, "resolution.fixres_epochs": 0})
    port = free_port()
    nodes = [subprocess.Popen(torchrun_command(args, nproc=1, nnodes=2, node_rank=rank, port=port), cwd=REPO,
                              env=cpu_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=600) for node in nodes]
    for node, (stdout, stderr) in zip(nodes, outputs):
        assert node.returncode == 0, f"{stdout[-2000:]}\n{stderr[-2000:]}"
    records = epoch_records(tmp_path)
    assert len(records) == 1 and records[0]["val_count"] == VAL_IMAGES
    assert "2 rank(s)" in outputs[0][0]


def test_two_ranks_page_shuffled_order_resume_equals_uninterrupted(demo_betons: dict, tmp_path: Path) -> None:
    """Data larger than RAM under DDP: quasi_random order, process cache; SIGTERM to torchrun, then resume.
    Mixup and stochastic depth on: each rank's step draws (issue 17.3) repeat exactly after the resume."""
    larger_than_ram = {"data.order": "quasi_random", "data.in_memory": False, "data.cache_mib": 16,
                       "training.epochs": 2, "resolution.fixres_epochs": 1, "augment.mixup_alpha": 0.4,
                       "model.drop_path_rate": 0.2}
    straight = tmp_path / "straight"
    result = run(torchrun_command(tiny_overrides(demo_betons, straight, **larger_than_ram,
                                                 **{"logging.checkpoint_minutes": 0.0005}), nproc=2))
    assert result.returncode == 0, explain(result)
    log = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "event" and r["event"] == "checkpoint" for r in log)  # timed, inside epochs
    assert all(0 < r["process_cache_mib"] <= 16 + 4 * 8 for r in log if r["kind"] == "epoch")

    interrupted = tmp_path / "interrupted"
    args = tiny_overrides(demo_betons, interrupted, **larger_than_ram)
    launch = interrupt_after_epochs(torchrun_command(args, nproc=2), interrupted)  # torchrun tells both ranks
    stdout, stderr = launch.stdout, launch.stderr
    assert launch.returncode != 0
    stopped = load_checkpoint(last_checkpoint_path(interrupted))
    assert stopped["epoch"] == 1 and stopped["samples_in_epoch"] >= 2 * 8, f"{stdout[-2000:]}\n{stderr[-2000:]}"
    resumed = run(torchrun_command(args, nproc=2))
    assert resumed.returncode == 0, explain(resumed)
    expected = torch.load(straight / FINAL_WEIGHTS, weights_only=True)
    again = torch.load(interrupted / FINAL_WEIGHTS, weights_only=True)
    for key, value in expected.items():
        assert torch.allclose(value.float(), again[key].float(), rtol=1e-4, atol=1e-5), key
