"""What a run tells its user: one JSON line and one readable line per epoch, on rank 0.

``log.jsonl`` in the run folder is the machine-readable record (one object per
line, appended and flushed as each epoch ends, so a killed run keeps what it
finished); the readable line goes to stdout. Other ranks log nothing. With
``logging.tensorboard`` on, the same records also go to TensorBoard (tensorboard_log.py).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, SupportsFloat, TextIO

from .config import Config, to_yaml
from .fileio import atomic_write_text
from .tensorboard_log import TensorBoardLog

LOG_NAME = "log.jsonl"
RECIPE_NAME = "recipe.yaml"
SAMPLE_LOG_ENV = "FFCV_IMAGENET_SAMPLE_LOG"  # a folder: the tests' record of what each rank trained on


def read_log(run_folder: str | Path) -> list[dict[str, Any]]:
    """The records of a run folder's log (a torn last line from a kill is skipped)."""
    records = []
    for line in (Path(run_folder) / LOG_NAME).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {record['epoch']} (of 0-{epochs - 1})",
             f"res {record['res']} {record['crop_mode']}",
             f"batch {'x'.join(str(d) for d in record['first_batch_shape'] or ['-'])}",  # none: resumed at its end
             f"lr {record['lr']:.4g}",
             f"loss {record['train_loss']:.4f}"]
    if record.get("val_top1") is not None:
        parts.append(f"val top-1 {100 * record['val_top1']:.2f}% top-5 {100 * record['val_top5']:.2f}%")
    if record.get("ema_val_top1") is not None:
        parts.append(f"EMA top-1 {100 * record['ema_val_top1']:.2f}%")
    parts.append(f"{record['images_per_second']:.0f} img/s")
    parts.append(f"{record['epoch_seconds']:.1f} s")
    if record.get("gpu_peak_mib") is not None:
        parts.append(f"GPU peak {record['gpu_peak_mib']:.0f} MiB")
    return " | ".join(parts)


class RunLog:
    """Rank 0 writes; on other ranks every method does nothing."""

    def __init__(self, run_folder: str | Path, enabled: bool, stream: TextIO = sys.stdout,
                 tensorboard: TensorBoardLog | None = None):
        self.folder = Path(run_folder)
        self.enabled = enabled
        self.stream = stream
        self.tensorboard = tensorboard if enabled else None

    def say(self, message: str) -> None:
        if self.enabled:
            print(message, file=self.stream, flush=True)

    def save_recipe(self, config: Config) -> None:
        if self.enabled:
            atomic_write_text(self.folder / RECIPE_NAME, to_yaml(config))

    def record(self, kind: str, **fields: Any) -> None:
        """Append one JSON object (``kind`` says what it is: epoch, event, eval...)."""
        if not self.enabled:
            return
        entry = {"kind": kind, "time": round(time.time(), 3), **fields}
        with open(self.folder / LOG_NAME, "a") as log:
            log.write(json.dumps(entry) + "\n")
            log.flush()

    def epoch(self, record: dict[str, Any], epochs: int) -> None:
        self.record("epoch", **record)
        self.say(epoch_line(record, epochs))
        if self.tensorboard is not None:
            self.tensorboard.epoch(record)

    def train_step(self, step: int, loss: SupportsFloat, lr: float) -> None:
        """Per-step values, for TensorBoard only (log.jsonl keeps one line per epoch)."""
        if self.tensorboard is not None:
            self.tensorboard.train_step(step, loss, lr)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


class SampleLog:
    """A test hook, off unless ``$FFCV_IMAGENET_SAMPLE_LOG`` names a folder: then every rank appends
    one line ``epoch label label ...`` per trained step to ``rank<r>.txt`` there. With a .beton
    labelled by sample id, that is which samples each step trained on."""

    def __init__(self, path: Path | None):
        self.path = path

    @classmethod
    def from_env(cls, rank: int) -> "SampleLog":
        folder = os.environ.get(SAMPLE_LOG_ENV)
        return cls(Path(folder) / f"rank{rank}.txt" if folder else None)

    def write(self, epoch: int, labels: Any) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as out:
            out.write(" ".join(str(value) for value in [epoch, *labels.tolist()]) + "\n")
