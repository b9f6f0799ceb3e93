"""The LR range test: its pure parts by hand, and train_imagenet.py --lr-range-test on the demo data."""
from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from ffcv_imagenet.checkpointing import last_checkpoint_path
from ffcv_imagenet.config import LRRangeConfig
from ffcv_imagenet.lr_range import JSON_NAME, PNG_NAME, Sweep, suggestions, sweep_lr
from helpers import explain, run, train_command

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_sweep_lr_is_exponential_from_start_to_end() -> None:
    cfg = LRRangeConfig(start=1e-3, end=10.0, steps=5)
    assert [sweep_lr(cfg, step) for step in range(5)] == pytest.approx([1e-3, 1e-2, 1e-1, 1.0, 10.0])


def test_smoothed_loss_is_bias_corrected_and_divergence_is_against_the_minimum() -> None:
    sweep = Sweep(smoothing=0.5)
    for lr, loss in [(0.1, 4.0), (0.2, 2.0), (0.4, 1.0), (0.8, 8.0), (1.6, 40.0)]:
        sweep.add(lr, loss)
    # average_t = 0.5 average_{t-1} + 0.5 loss_t, divided by 1 - 0.5^t
    assert sweep.smoothed[:3] == pytest.approx([4.0, (0.25 * 4 + 0.5 * 2) / 0.75,
                                                (0.125 * 4 + 0.25 * 2 + 0.5 * 1) / 0.875])
    assert sweep.stop_reason(divergence=4.0) == "diverged"  # 23.1 > 4 x 1.71
    assert sweep.stop_reason(divergence=20.0) is None
    found = suggestions(sweep)
    assert found["minimum"] == 0.4 and found["minimum_over_10"] == pytest.approx(0.04)
    assert found["steepest"] == 0.1  # the smoothed loss falls fastest per log-LR at the start


def test_a_loss_that_never_falls_has_no_steepest_point() -> None:
    sweep = Sweep(smoothing=0.0)
    for lr, loss in [(0.1, 1.0), (0.2, 2.0), (0.4, math.nan)]:
        sweep.add(lr, loss)
    assert sweep.stop_reason(4.0) == "loss not finite"
    assert suggestions(sweep) == {"steepest": None, "minimum": 0.1, "minimum_over_10": pytest.approx(0.01)}


def range_test(tiny_run: tuple[Path, list[str]], *extra: str) -> subprocess.CompletedProcess:
    result = run(train_command([*tiny_run[1], "--lr-range-test", *extra]))
    assert result.returncode == 0, explain(result)
    return result


def test_range_test_writes_png_json_and_a_suggestion(tiny_run: tuple[Path, list[str]], tmp_path: Path) -> None:
    """On the real loader and model; the run folder's checkpoint is left byte for byte."""
    folder = tiny_run[0]
    checkpoint = last_checkpoint_path(folder).read_bytes()
    steps = 24
    result = range_test(tiny_run, "--out", str(tmp_path), f"--lr_range.steps={steps}", "--lr_range.start=0.01",
                        "--lr_range.end=1e5")
    assert last_checkpoint_path(folder).read_bytes() == checkpoint
    assert not (folder / JSON_NAME).exists() and not (folder / PNG_NAME).exists()
    assert (tmp_path / PNG_NAME).read_bytes()[:8] == PNG_MAGIC
    record = json.loads((tmp_path / JSON_NAME).read_text())
    assert record["res"] == 32 and record["global_batch"] == 8  # the first epoch's resolution, batch 8 x 1 rank
    lrs = record["lr_per_256"]
    assert lrs[0] == pytest.approx(0.01) and lrs[1] / lrs[0] == pytest.approx(1e7 ** (1 / (steps - 1)))
    assert record["lr"][0] == pytest.approx(0.01 * 8 / 256)
    # an LR per 256 of 1e5 blows any network up: the sweep stops before its last step
    assert record["stop_reason"] in ("diverged", "loss not finite") and record["steps_run"] < steps
    assert len(record["loss"]) == len(record["smoothed_loss"]) == record["steps_run"]
    finite = [s for s in record["smoothed_loss"] if s is not None]
    lowest = min(finite)
    assert record["minimum_lr_per_256"] == lrs[finite.index(lowest)]
    assert record["suggested_lr_per_256"] == pytest.approx(record["minimum_lr_per_256"] / 10)
    assert record["rule"] == "minimum / 10"
    assert f"suggested lr.lr_per_256: {record['suggested_lr_per_256']:.4g} (rule: minimum / 10" in result.stdout
    assert "steepest descent of the smoothed loss" in result.stdout


def test_range_test_into_a_fresh_run_folder_creates_no_checkpoint(tiny_run: tuple[Path, list[str]],
                                                                   tmp_path: Path) -> None:
    # more steps than the 18 batches of one pass over the data: the sweep goes on into a second pass
    result = range_test(tiny_run, f"--logging.folder={tmp_path}", "--lr_range.steps=20", "--lr_range.end=0.1")
    record = json.loads((tmp_path / JSON_NAME).read_text())
    assert record["steps_run"] == 20 and record["stop_reason"] == "completed"
    assert record["lr_per_256"][-1] == pytest.approx(0.1)
    assert (tmp_path / PNG_NAME).is_file() and not last_checkpoint_path(tmp_path).parent.exists()
    assert "suggested lr.lr_per_256" in result.stdout


@pytest.mark.parametrize("args, expected", [
    (["--lr_range.start=1", "--lr_range.end=0.5"], "lr_range.end: 0.5 must be above lr_range.start"),
    (["--lr_range.divergence=1"], "lr_range.divergence must be above 1"),
    (["--out", "x"], "--out is for --lr-range-test"),
])
def test_bad_range_settings_are_one_line(tiny_run: tuple[Path, list[str]], args: list[str], expected: str) -> None:
    flag = [] if "--out" in args else ["--lr-range-test"]
    result = run(train_command([*tiny_run[1], *flag, *args]))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, explain(result)
    assert expected in result.stderr
