"""Run plots from log.jsonl files written by the trainer's own RunLog."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from matplotlib.patches import Polygon, Rectangle
from PIL import Image

from ffcv_imagenet.plots import FIGURES, accuracy_figure, load_run, write_figures
from ffcv_imagenet.run_log import RunLog


def write_run(folder: Path, epochs: int, fixres_epochs: int, resumed_epoch: int | None = None) -> Path:
    log = RunLog(folder, enabled=True)
    folder.mkdir(parents=True, exist_ok=True)
    for epoch in range(epochs):
        fixres = epoch >= epochs - fixres_epochs
        res = 224 if fixres else 160 + 32 * (epoch * 2 // epochs)
        record = {"epoch": epoch, "res": res, "crop_mode": "fixres" if fixres else "rrc",
                  "first_batch_shape": [8, 3, res, res], "lr": 0.1 * (1 - epoch / epochs), "steps": 10,
                  "train_loss": 3.0 - 0.2 * epoch, "val_top1": 0.1 + 0.05 * epoch, "val_top5": 0.3 + 0.05 * epoch,
                  "images_per_second": 1000.0 + epoch, "epoch_seconds": 10.0}
        log.epoch(record, epochs)
        if epoch == resumed_epoch:  # the same epoch logged again after a resume: the last one counts
            log.record("event", event="resumed")
            log.epoch({**record, "train_loss": 9.0}, epochs)
    return folder


def test_one_png_per_figure_with_fixres_shaded(tmp_path: Path) -> None:
    run = load_run(write_run(tmp_path / "rn50", epochs=8, fixres_epochs=2, resumed_epoch=3))
    assert [r["epoch"] for r in run.epochs] == list(range(8)) and run.epochs[3]["train_loss"] == 9.0
    assert run.fixres_span() == (5.5, 7.5)
    written = write_figures([run], tmp_path / "out")
    assert [p.name for p in written] == [f"{name}.png" for name in FIGURES]
    for path in written:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 400 and image.height > 200
    shaded = [p for p in accuracy_figure([run]).axes[0].patches if isinstance(p, (Polygon, Rectangle))]
    assert shaded, "the FixRes epochs are not shaded"
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_compare_overlays_each_run(tmp_path: Path) -> None:
    runs = [load_run(write_run(tmp_path / name, epochs=6, fixres_epochs=fix)) for name, fix in
            (("short_fixres", 1), ("no_fixres", 0), ("long_fixres", 2))]
    labels = [line.get_label() for line in accuracy_figure(runs).axes[0].get_lines()]
    assert labels == [f"{run} {metric}" for run in ("short_fixres", "no_fixres", "long_fixres")
                      for metric in ("top-1", "top-5")]


def plot_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ffcv_imagenet.plot", *args], capture_output=True, text=True,
                          timeout=120)


def test_command_writes_pngs_and_refuses_bad_folders(tmp_path: Path) -> None:
    first, second = write_run(tmp_path / "a", 4, 1), write_run(tmp_path / "b", 4, 0)
    result = plot_cli(str(first), "--compare", str(second), "--out", str(tmp_path / "pngs"))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "pngs").glob("*.png")) == sorted(f"{n}.png" for n in FIGURES)
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "started").mkdir()
    (tmp_path / "started" / "log.jsonl").write_text('{"kind": "start"}\n')
    for folder, message in ((tmp_path / "missing", "no log.jsonl"), (empty, "no log.jsonl"),
                            (tmp_path / "started", "no finished epoch")):
        result = plot_cli(str(folder))
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr
