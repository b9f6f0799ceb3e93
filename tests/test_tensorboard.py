"""logging.tensorboard: a real run's event file, read back with TensorBoard's own reader, mirrors log.jsonl."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ffcv_imagenet.tensorboard_log import EPOCH_TAGS, STEP_LOSS_TAG, STEP_LR_TAG, TENSORBOARD_FOLDER
from helpers import REPO, cpu_env, epoch_records, explain, run, tiny_overrides, train_command

EVERY = 4
TRAIN_IMAGES, BATCH = 144, 8  # conftest: 6 classes x 24; tiny_overrides: batch 8


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                      reason="the tensorboard extra is not installed")
    events = accumulator.EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every point
    events.Reload()
    return {tag: [(point.step, point.value) for point in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_event_file_mirrors_the_epoch_records_and_steps(demo_betons: dict, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    args = tiny_overrides(demo_betons, tmp_path, **{"training.epochs": 2, "resolution.fixres_epochs": 1,
                                                     "logging.tensorboard": True,
                                                     "logging.tensorboard_every": EVERY})
    result = run(train_command(args))
    assert result.returncode == 0, explain(result)
    assert list((tmp_path / TENSORBOARD_FOLDER).glob("events.out.tfevents.*"))
    scalars = read_scalars(tmp_path / TENSORBOARD_FOLDER)

    records = epoch_records(tmp_path)
    steps = TRAIN_IMAGES // BATCH
    assert [record["steps"] for record in records] == [steps, steps]
    epoch_ends = [(record["epoch"] + 1) * steps for record in records]
    for group, keys in EPOCH_TAGS.items():
        for key in keys:
            logged = [(end, record[key]) for end, record in zip(epoch_ends, records) if record.get(key) is not None]
            assert [step for step, _ in scalars.get(f"{group}/{key}", [])] == [step for step, _ in logged], key
            for (_, value), (_, expected) in zip(scalars.get(f"{group}/{key}", []), logged):
                assert value == pytest.approx(expected, rel=1e-6), key  # float32 in the event file
    for present in ("loss/train_loss", "loss/val_loss", "accuracy/val_top1", "accuracy/val_top5", "schedule/lr",
                    "schedule/res", "speed/images_per_second", "memory/host_rss_mib"):
        assert len(scalars[present]) == 2, present
    assert "memory/gpu_peak_mib" not in scalars  # None on a CPU run: left out, not written as 0

    expected_steps = list(range(EVERY, 2 * steps + 1, EVERY))
    assert [step for step, _ in scalars[STEP_LOSS_TAG]] == expected_steps
    assert [step for step, _ in scalars[STEP_LR_TAG]] == expected_steps
    assert all(value > 0 for _, value in scalars[STEP_LOSS_TAG] + scalars[STEP_LR_TAG])
    # the LR at an epoch's last step is the epoch record's LR
    step_lr = dict(scalars[STEP_LR_TAG])
    for end, record in zip(epoch_ends, records):
        if end in step_lr:
            assert step_lr[end] == pytest.approx(record["lr"], rel=1e-6)


def test_missing_tensorboard_is_one_line_before_any_work(demo_betons: dict, tmp_path: Path) -> None:
    """A `tensorboard` on PYTHONPATH that fails to import, as a missing package does."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "tensorboard.py").write_text("raise ImportError(\"No module named 'tensorboard'\")\n")
    env = {**cpu_env(), "PYTHONPATH": os.pathsep.join([str(shadow), os.environ.get("PYTHONPATH", "")])}
    args = tiny_overrides(demo_betons, tmp_path / "run", **{"logging.tensorboard": True})
    result = subprocess.run(train_command(args), capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert result.returncode == 2, explain(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train_imagenet.py: error: logging.tensorboard: "), result.stderr
    assert "pip install tensorboard" in lines[0]
    assert not (tmp_path / "run" / "log.jsonl").exists()


def test_a_resumed_run_replaces_what_a_killed_attempt_logged_after_its_checkpoint(tmp_path: Path) -> None:
    """First attempt logs steps 1-10 and dies; the resumed one starts again at step 7 (its checkpoint)."""
    from ffcv_imagenet.tensorboard_log import TensorBoardLog

    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    killed = TensorBoardLog(tmp_path, every=1)
    for step in range(1, 11):
        killed.train_step(step, loss=100.0 + step, lr=0.1)
    killed.close()
    resumed = TensorBoardLog(tmp_path, every=1)
    for step in range(7, 13):
        resumed.train_step(step, loss=200.0 + step, lr=0.1)
    resumed.close()
    losses = read_scalars(tmp_path / TENSORBOARD_FOLDER)[STEP_LOSS_TAG]
    assert losses == [(step, 100.0 + step) for step in range(1, 7)] + [(step, 200.0 + step) for step in range(7, 13)]
