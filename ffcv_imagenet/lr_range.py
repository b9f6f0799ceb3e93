"""Smith's LR range test (``train_imagenet.py --config R --lr-range-test``).

The recipe's model, optimizer and training loader at the first epoch's resolution and crop mode
take ``lr_range.steps`` optimizer steps while the LR grows exponentially from ``lr_range.start``
to ``lr_range.end`` (both per 256 images, like ``lr.lr_per_256``, scaled by the global batch).
The loss is smoothed (an exponential average, bias-corrected as in Adam); the sweep stops early
when the smoothed loss exceeds ``lr_range.divergence`` times its minimum so far, or a loss is not
finite. Two rules read a peak LR off the curve, both printed:

- steepest descent: the LR where the smoothed loss falls fastest per log-LR (before its minimum);
- minimum / 10: a tenth of the LR at the smoothed loss's minimum.

The suggestion is the minimum / 10 rule: on a short, noisy curve the steepest point moves with
the noise of a few batches, while the minimum is where the loss still clearly falls.

Smith, "Cyclical Learning Rates for Training Neural Networks" (2017), section 3.3.
The sweep trains a throw-away copy of the model: nothing of the run folder's checkpoint is read
or written; the PNG and JSON go to the run folder (or ``--out``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import LR_REFERENCE_BATCH, Config, ConfigError, LRRangeConfig, to_dict
from .distributed import DistContext, barrier, broadcast_object
from .fileio import atomic_path, atomic_write_text, check_writable_dir

if TYPE_CHECKING:
    from .preflight import Datasets

PNG_NAME = "lr_range.png"
JSON_NAME = "lr_range.json"
MIN_OVER = 10  # the minimum / 10 rule
SUGGESTION_RULE = "minimum / 10"
DIVERGED, NOT_FINITE, COMPLETED = "diverged", "loss not finite", "completed"


def sweep_lr(cfg: LRRangeConfig, step: int) -> float:
    """LR (per 256 images) of sweep step ``step``: start at 0, end at steps - 1, the same factor between."""
    return cfg.start * (cfg.end / cfg.start) ** (step / (cfg.steps - 1))


@dataclass
class Sweep:
    """The curve so far: LR per 256 images, raw and smoothed loss at each step."""

    smoothing: float
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    average: float = 0.0

    def add(self, lr: float, loss: float) -> None:
        self.average = self.smoothing * self.average + (1 - self.smoothing) * loss
        self.lrs.append(lr)
        self.losses.append(loss)
        self.smoothed.append(self.average / (1 - self.smoothing ** len(self.losses)))  # bias correction

    def stop_reason(self, divergence: float) -> str | None:
        if not math.isfinite(self.losses[-1]):
            return NOT_FINITE
        if self.smoothed[-1] > divergence * min(self.smoothed):
            return DIVERGED
        return None


def suggestions(sweep: Sweep) -> dict[str, float | None]:
    """Both rules' LR per 256 images, from the finite part of the curve up to its minimum."""
    smoothed = np.array([s for s in sweep.smoothed if math.isfinite(s)])  # once not finite, it stays so
    if not len(smoothed):
        raise ConfigError(f"lr_range.start: the loss was not finite at the first LR ({sweep.lrs[0]:g}); "
                          "start lower")
    lrs = np.array(sweep.lrs[:len(smoothed)])
    lowest = int(np.argmin(smoothed))
    steepest = None
    if lowest >= 1:  # a slope needs two points before the minimum
        slope = np.gradient(smoothed[:lowest + 1], np.log(lrs[:lowest + 1]))
        steepest = float(lrs[int(np.argmin(slope))])
    return {"steepest": steepest, "minimum": float(lrs[lowest]), "minimum_over_10": float(lrs[lowest]) / MIN_OVER}


# ---------------------------------------------------------------- the sweep on the real loader and model
def run_sweep(trainer: Any, cfg: LRRangeConfig) -> tuple[Sweep, str]:
    """Train ``trainer``'s model through the LR sweep at its first epoch's plan; (curve, why it stopped).
    One sweep step is one optimizer update (``training.accumulate`` micro-batches)."""
    from tqdm import tqdm

    from .regularizers import seed_step_draws

    sweep = Sweep(cfg.smoothing)
    scale = trainer.global_batch / LR_REFERENCE_BATCH  # samples per update, all ranks
    first_plan = trainer.plans[0]
    trainer.enter_phase(first_plan)
    accumulate, micro = trainer.accumulate, 0
    progress = tqdm(total=cfg.steps, unit="step", desc=f"LR range test at {first_plan.res} px", leave=False,
                    disable=not (trainer.ctx.is_main and trainer.config.logging.progress), dynamic_ncols=True)
    with progress:
        for data_pass in range(cfg.steps * accumulate):  # a tiny set may need several passes, each shuffled anew
            plan = dataclasses.replace(first_plan, epoch=data_pass)
            with contextlib.closing(trainer.train_loader.epoch(plan)) as batches:
                for images, labels in batches:
                    first, last = micro % accumulate == 0, micro % accumulate == accumulate - 1
                    lr = sweep_lr(cfg, len(sweep.lrs))
                    if first:
                        for group in trainer.optimizer.param_groups:
                            group["lr"] = lr * scale
                    seed_step_draws(trainer.config.training.seed, trainer.ctx.rank, data_pass, micro,
                                    trainer.ctx.device)
                    update = trainer.train_step(images, labels, first, last)
                    micro += 1
                    if update is None:
                        continue
                    sweep.add(lr, update[0])  # the loss averaged over the update and the ranks: all ranks agree
                    progress.update(1)
                    reason = sweep.stop_reason(cfg.divergence)
                    if reason:
                        return sweep, reason
                    if len(sweep.lrs) == cfg.steps:
                        return sweep, COMPLETED
    return sweep, COMPLETED


# ---------------------------------------------------------------- what it writes
def finite_or_none(values: list[float]) -> list[float | None]:
    return [value if math.isfinite(value) else None for value in values]


def result_record(config: Config, sweep: Sweep, reason: str, global_batch: int, res: int) -> dict[str, Any]:
    found = suggestions(sweep)
    return {"suggested_lr_per_256": found["minimum_over_10"], "rule": SUGGESTION_RULE,
            "steepest_lr_per_256": found["steepest"], "minimum_lr_per_256": found["minimum"],
            "minimum_over_10_lr_per_256": found["minimum_over_10"], "global_batch": global_batch,
            "res": res, "steps_run": len(sweep.lrs), "stop_reason": reason, "settings": to_dict(config)["lr_range"],
            "lr_per_256": sweep.lrs, "lr": [lr * global_batch / LR_REFERENCE_BATCH for lr in sweep.lrs],
            "loss": finite_or_none(sweep.losses), "smoothed_loss": finite_or_none(sweep.smoothed)}


def write_plot(record: dict[str, Any], path: Path) -> None:
    """Loss against LR per 256 images on a log axis, both rules marked."""
    from .plots import DPI, FIGURE_SIZE  # sets the Agg backend; matplotlib only when a plot is drawn

    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=FIGURE_SIZE)
    lrs = record["lr_per_256"]
    nan = float("nan")
    axes.plot(lrs, [nan if v is None else v for v in record["loss"]], alpha=0.3, label="loss")
    axes.plot(lrs, [nan if v is None else v for v in record["smoothed_loss"]], label="smoothed loss")
    marks = (("steepest_lr_per_256", "steepest descent", ":"), ("minimum_over_10_lr_per_256", "minimum / 10", "--"))
    for key, label, style in marks:
        if record[key] is not None:
            axes.axvline(record[key], color="gray", linestyle=style, label=f"{label}: {record[key]:.3g}")
    axes.set_xscale("log")
    axes.set_xlabel(f"lr.lr_per_256 (global batch {record['global_batch']})")
    axes.set_ylabel("training loss")
    axes.set_title(f"LR range test at {record['res']} px ({record['stop_reason']})")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=DPI, format="png")
    plt.close(figure)


def summary(record: dict[str, Any], folder: Path) -> str:
    steepest = record["steepest_lr_per_256"]
    lines = [f"LR range test: {record['steps_run']} steps at {record['res']} px, global batch "
             f"{record['global_batch']}, lr_per_256 {record['lr_per_256'][0]:.3g} -> {record['lr_per_256'][-1]:.3g} "
             f"({record['stop_reason']})",
             f"  steepest descent of the smoothed loss: lr_per_256 "
             f"{'n/a (the loss never fell)' if steepest is None else f'{steepest:.4g}'}",
             f"  minimum of the smoothed loss at lr_per_256 {record['minimum_lr_per_256']:.4g}; / 10 = "
             f"{record['minimum_over_10_lr_per_256']:.4g}",
             f"suggested lr.lr_per_256: {record['suggested_lr_per_256']:.4g} (rule: {record['rule']}; peak lr "
             f"{record['suggested_lr_per_256'] * record['global_batch'] / LR_REFERENCE_BATCH:.4g} at global batch "
             f"{record['global_batch']})",
             f"  {folder / PNG_NAME}", f"  {folder / JSON_NAME}"]
    return "\n".join(lines)


def lr_range_test(config: Config, ctx: DistContext, out: str | Path | None = None,
                  datasets: Datasets | None = None) -> dict[str, Any]:
    """The whole command: checks, the sweep, the PNG, JSON and printed suggestion (rank 0); ``datasets``:
    those ``preflight.check_before_torch`` already read, if any."""
    from .preflight import check_lr_range, preflight
    from .trainer import Trainer

    datasets = preflight(config, ctx, datasets)
    check_lr_range(config)
    folder = Path(out or config.logging.folder)
    refusal = None
    if ctx.is_main:
        try:
            check_writable_dir(folder)
        except OSError as err:
            refusal = f"{'--out' if out else 'logging.folder'}: {err}"
    refusal = broadcast_object(ctx, refusal)  # every rank stops together
    if refusal:
        raise ConfigError(str(refusal))
    # A fresh model; the run's TensorBoard log is left to the run.
    quiet = dataclasses.replace(config, logging=dataclasses.replace(config.logging, tensorboard=False))
    trainer = Trainer(quiet, ctx, datasets)
    sweep, reason = run_sweep(trainer, config.lr_range)
    record = result_record(config, sweep, reason, trainer.global_batch, trainer.plans[0].res)
    if ctx.is_main:
        atomic_write_text(folder / JSON_NAME, json.dumps(record, indent=1) + "\n")
        write_plot(record, folder / PNG_NAME)
        print(summary(record, folder), flush=True)
    barrier(ctx)
    return record
