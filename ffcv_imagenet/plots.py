"""Pictures of a run from its log.jsonl: loss, accuracy, LR and resolution, throughput per epoch.

The FixRes epochs are shaded. Several runs overlay on the same axes, one colour
each, named by their folder. matplotlib's Agg backend: no display needed.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend is chosen first
from matplotlib.figure import Figure  # noqa: E402

from .fileio import atomic_path, check_writable_dir  # noqa: E402
from .run_log import LOG_NAME, read_log  # noqa: E402

FIXRES_SHADE = {"color": "tab:orange", "alpha": 0.12}
LINE_STYLES = ("-", "--", ":")  # one per logged key on a figure; the colour says which run
FIGURE_SIZE = (7.0, 4.0)
DPI = 110


class PlotError(ValueError):
    """A run folder that cannot be plotted; reported as one line."""


@dataclass(frozen=True)
class Run:
    name: str
    epochs: list[dict[str, Any]]  # the last record of each epoch, in epoch order
    folder: Path

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(epochs, values) where ``key`` was logged (validation may skip epochs)."""
        points = [(r["epoch"], r[key]) for r in self.epochs if r.get(key) is not None]
        return [e for e, _ in points], [v for _, v in points]

    def fixres_span(self) -> tuple[float, float] | None:
        fixres = [r["epoch"] for r in self.epochs if r.get("crop_mode") == "fixres"]
        return (min(fixres) - 0.5, max(fixres) + 0.5) if fixres else None


def load_run(folder: str | Path) -> Run:
    folder = Path(folder)
    if not folder.is_dir():
        raise PlotError(f"{folder} is not a folder (give the run's logging.folder)")
    if not (folder / LOG_NAME).is_file():
        raise PlotError(f"{folder} has no {LOG_NAME}: is it a run folder (logging.folder)?")
    # A resumed run can log an epoch twice: the last record is the one its checkpoint carried on from.
    by_epoch = {r["epoch"]: r for r in read_log(folder)
                if r.get("kind") == "epoch" and isinstance(r.get("epoch"), int)}
    if not by_epoch:
        raise PlotError(f"{folder / LOG_NAME} has no finished epoch yet")
    folder = folder.resolve()
    return Run(name=folder.name, epochs=[by_epoch[e] for e in sorted(by_epoch)], folder=folder)


def distinct_names(runs: list[Run]) -> list[Run]:
    """Runs whose folders share a name (a/out, b/out) are labelled parent/name so the legend tells them apart."""
    names = [run.name for run in runs]
    return [dataclasses.replace(run, name=f"{run.folder.parent.name}/{run.name}") if names.count(run.name) > 1
            else run for run in runs]


def _axes(title: str, ylabel: str) -> tuple[Figure, plt.Axes]:
    figure, axes = plt.subplots(figsize=FIGURE_SIZE)
    axes.set_title(title)
    axes.set_xlabel("epoch")
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    return figure, axes


def _shade_fixres(axes: plt.Axes, runs: list[Run]) -> None:
    spans = {span for run in runs if (span := run.fixres_span()) is not None}
    for index, (start, end) in enumerate(sorted(spans)):
        axes.axvspan(start, end, label="FixRes" if index == 0 else None, **FIXRES_SHADE)


def _lines(runs: list[Run], title: str, ylabel: str, keys: dict[str, str], scale: float = 1.0) -> Figure:
    """One line per (run, key); ``keys`` maps a logged key to its legend suffix."""
    figure, axes = _axes(title, ylabel)
    for index, run in enumerate(runs):
        colour = f"C{index}"
        for style, (key, suffix) in zip(LINE_STYLES, keys.items()):
            epochs, values = run.series(key)
            if epochs:
                axes.plot(epochs, [scale * v for v in values], style, color=colour, marker=".",
                          label=f"{run.name} {suffix}".strip())
    _shade_fixres(axes, runs)
    if axes.get_lines():
        axes.legend(fontsize="small")
    else:  # e.g. validation switched off: say so rather than leave a blank frame
        axes.text(0.5, 0.5, f"no {' / '.join(keys)} in the log", transform=axes.transAxes, ha="center")
    figure.tight_layout()
    return figure


def loss_figure(runs: list[Run]) -> Figure:
    return _lines(runs, "loss", "cross-entropy", {"train_loss": "train", "val_loss": "val"})


def accuracy_figure(runs: list[Run]) -> Figure:
    return _lines(runs, "validation accuracy", "%", {"val_top1": "top-1", "val_top5": "top-5",
                                                      "ema_val_top1": "EMA top-1"}, scale=100.0)


def schedule_figure(runs: list[Run]) -> Figure:
    """LR (left axis) and training resolution (right axis)."""
    figure = _lines(runs, "learning rate and resolution", "learning rate (end of epoch)", {"lr": "lr"})
    axes = figure.axes[0]
    resolution_axes = axes.twinx()
    resolution_axes.set_ylabel("resolution (px)")
    for index, run in enumerate(runs):
        epochs, res = run.series("res")
        resolution_axes.step(epochs, res, where="mid", color=f"C{index}", alpha=0.5, label=f"{run.name} res")
    resolution_axes.legend(fontsize="small", loc="lower right")
    figure.tight_layout()
    return figure


def throughput_figure(runs: list[Run]) -> Figure:
    return _lines(runs, "training throughput", "img/s (all ranks)", {"images_per_second": ""})


FIGURES: dict[str, Callable[[list[Run]], Figure]] = {
    "loss": loss_figure, "accuracy": accuracy_figure, "lr_resolution": schedule_figure,
    "throughput": throughput_figure,
}


def write_figures(runs: list[Run], out: str | Path) -> list[Path]:
    """One PNG per figure in ``out``, each written under a temporary name and renamed."""
    out = check_writable_dir(out)
    runs = distinct_names(runs)
    written = []
    for name, make in FIGURES.items():
        figure = make(runs)
        path = out / f"{name}.png"
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png", dpi=DPI)
        plt.close(figure)
        written.append(path)
    return written
