"""Run plots from log.jsonl files written by the trainer's own RunLog."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

from matplotlib.axes import Axes
from PIL import Image

from ffcv_imagenet.plots import (FIGURES, accuracy_figure, distinct_names, load_run, loss_figure,
                                 schedule_figure, write_figures)
from ffcv_imagenet.run_log import LOG_NAME, RunLog


def epoch_record(epoch: int, epochs: int, fixres_epochs: int, validated: bool) -> dict:
    fixres = epoch >= epochs - fixres_epochs
    res = 224 if fixres else 160 + 32 * (epoch * 2 // epochs)
    record = {"epoch": epoch, "res": res, "crop_mode": "fixres" if fixres else "rrc",
              "first_batch_shape": [8, 3, res, res], "lr": 0.1 * (1 - epoch / epochs), "steps": 10,
              "train_loss": 3.0 - 0.2 * epoch, "process_cache_mib": 1.0, "images_per_second": 1000.0 + epoch,
              "epoch_seconds": 10.0, "gpu_peak_mib": None, "host_rss_mib": 500.0}
    if validated:
        record.update(val_top1=0.1 + 0.05 * epoch, val_top5=0.3 + 0.05 * epoch, val_loss=3.1 - 0.2 * epoch,
                      val_count=50)
    return record


def write_run(folder: Path, epochs: int, fixres_epochs: int, resumed_epoch: int | None = None,
              validated: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    log = RunLog(folder, enabled=True, stream=io.StringIO())  # the readable lines are not under test
    log.record("start", world_size=1)
    for epoch in range(epochs):
        record = epoch_record(epoch, epochs, fixres_epochs, validated)
        log.epoch(record, epochs)
        if epoch == resumed_epoch:  # the same epoch logged again after a resume: the last one counts
            log.record("event", event="resumed", epoch=epoch)
            log.epoch({**record, "train_loss": 9.0}, epochs)
    log.record("resolution_table", trained_at=224, rows=[{"res": 224, "top1": 0.5, "top5": 0.8}])
    return folder


def shaded_spans(axes: Axes) -> list[tuple[float, float]]:
    """x extent of each shaded span, whichever patch type this matplotlib's axvspan returns."""
    spans = []
    for patch in axes.patches:
        xs = patch.get_patch_transform().transform(patch.get_path().vertices)[:, 0]
        spans.append((float(xs.min()), float(xs.max())))
    return spans


def test_one_png_per_figure_with_fixres_shaded(tmp_path: Path) -> None:
    folder = write_run(tmp_path / "rn50", epochs=8, fixres_epochs=2, resumed_epoch=3)
    with open(folder / LOG_NAME, "a") as log:  # a kill in the middle of a line
        log.write(json.dumps({"kind": "epoch", **epoch_record(8, 9, 0, True)})[:40])
    run = load_run(folder)
    assert [r["epoch"] for r in run.epochs] == list(range(8)) and run.epochs[3]["train_loss"] == 9.0

    written = write_figures([run], tmp_path / "out")
    assert [p.name for p in written] == [f"{name}.png" for name in FIGURES]
    for path in written:
        with Image.open(path) as image:
            image.verify()
            assert image.format == "PNG" and image.width > 400 and image.height > 200
    assert not list((tmp_path / "out").glob("*.tmp"))

    for make in FIGURES.values():  # the FixRes epochs 6 and 7 are shaded on every figure
        assert shaded_spans(make([run]).axes[0]) == [(5.5, 7.5)], make.__name__
    loss = loss_figure([run]).axes[0]
    assert [line.get_label() for line in loss.get_lines()] == ["rn50 train", "rn50 val"]
    assert list(loss.get_lines()[0].get_ydata())[3] == 9.0
    lr_axes, res_axes = schedule_figure([run]).axes
    assert list(res_axes.get_lines()[0].get_ydata()) == [r["res"] for r in run.epochs]
    assert list(lr_axes.get_lines()[0].get_ydata()) == [r["lr"] for r in run.epochs]


def test_compare_overlays_each_run(tmp_path: Path) -> None:
    runs = [load_run(write_run(tmp_path / name, epochs=6, fixres_epochs=fix)) for name, fix in
            (("short_fixres", 1), ("no_fixres", 0), ("long_fixres", 2))]
    accuracy = accuracy_figure(runs).axes[0]
    labels = [line.get_label() for line in accuracy.get_lines()]
    assert labels == [f"{run} {metric}" for run in ("short_fixres", "no_fixres", "long_fixres")
                      for metric in ("top-1", "top-5")]
    assert [line.get_color() for line in accuracy.get_lines()][::2] == ["C0", "C1", "C2"]
    assert sorted(shaded_spans(accuracy)) == [(3.5, 5.5), (4.5, 5.5)]
    assert shaded_spans(accuracy_figure(runs[1:2]).axes[0]) == []  # no FixRes epochs, no shading

    twins = [load_run(write_run(tmp_path / parent / "run", epochs=3, fixres_epochs=0)) for parent in "ab"]
    labels = [line.get_label() for line in loss_figure(distinct_names(twins)).axes[0].get_lines()]
    assert labels == ["a/run train", "a/run val", "b/run train", "b/run val"]


def test_run_without_validation_still_plots(tmp_path: Path) -> None:
    run = load_run(write_run(tmp_path / "noval", epochs=3, fixres_epochs=0, validated=False))
    axes = accuracy_figure([run]).axes[0]
    assert axes.get_lines() == [] and "no val_top1" in axes.texts[0].get_text()
    assert len(write_figures([run], tmp_path / "out")) == len(FIGURES)


def plot_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ffcv_imagenet.plot", *args], capture_output=True, text=True,
                          timeout=120)


def test_command_writes_pngs_and_refuses_bad_folders(tmp_path: Path) -> None:
    first, second = write_run(tmp_path / "a" / "run", 4, 1), write_run(tmp_path / "b" / "run", 4, 0)
    result = plot_cli(str(first), "--compare", str(second), "--out", str(tmp_path / "pngs"))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "pngs").glob("*.png")) == sorted(f"{n}.png" for n in FIGURES)
    assert plot_cli(str(first)).returncode == 0 and len(list((first / "plots").glob("*.png"))) == len(FIGURES)

    empty = tmp_path / "empty"
    empty.mkdir()
    started = tmp_path / "started"
    started.mkdir()
    RunLog(started, enabled=True).record("start", world_size=1)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    for args, message in (([str(tmp_path / "missing")], "is not a folder"), ([str(empty)], "no log.jsonl"),
                          ([str(started)], "no finished epoch"),
                          ([str(first), "--compare", str(empty)], "no log.jsonl"),
                          ([str(first), "--out", str(blocker / "sub")], "a_file"),
                          ([str(first), "--bogus"], "unrecognized arguments")):
        result = plot_cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and "plot: error:" in result.stderr and message in result.stderr, \
            (args, result.stderr)
