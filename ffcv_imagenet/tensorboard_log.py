"""TensorBoard scalars beside ``log.jsonl`` (``logging.tensorboard: true``), on rank 0 only.

``log.jsonl`` stays the record of a run (the plots read it alone); this mirrors
each epoch record and, every ``logging.tensorboard_every`` steps, the training
loss and LR into RUN/tensorboard/. Everything is on one x axis, optimizer steps
since the start of training, so a resumed run continues its curves: its writer
starts with ``purge_step`` at its first step, which makes TensorBoard drop what
an earlier, killed attempt logged from that step on.

torch's SummaryWriter needs the ``tensorboard`` package (the ``tensorboard``
extra), which the core install does not pull in.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, SupportsFloat

from .config import ConfigError, LoggingConfig

TENSORBOARD_FOLDER = "tensorboard"
INSTALL_HINT = ".venv/bin/python -m pip install tensorboard"

# TensorBoard groups tags by the part before "/"; each name after it is the log.jsonl key it mirrors.
EPOCH_TAGS = {
    "loss": ("train_loss", "val_loss"),
    "accuracy": ("val_top1", "val_top5", "ema_val_top1", "ema_val_top5"),
    "schedule": ("epoch", "lr", "res"),
    "speed": ("images_per_second", "epoch_seconds"),
    "memory": ("gpu_peak_mib", "host_rss_mib", "process_cache_mib"),
}
STEP_LOSS_TAG = "loss/train_loss_step"
STEP_LR_TAG = "schedule/lr_step"


def check_tensorboard(cfg: LoggingConfig) -> None:
    """At start, when asked for: the writer can be imported."""
    if not cfg.tensorboard:
        return
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ConfigError(f"logging.tensorboard: the tensorboard package is not installed; "
                          f"install it with `{INSTALL_HINT}` (or set logging.tensorboard=false)") from None


def epoch_end_step(record: dict[str, Any]) -> int:
    """Optimizer steps since the start of training when this epoch ended."""
    return (record["epoch"] + 1) * record["steps"]


class TensorBoardLog:
    """Creates no folder or file until it has a value to write (a finished run, or --evaluate, writes none)."""

    def __init__(self, run_folder: str | Path, every: int):
        self.folder = Path(run_folder) / TENSORBOARD_FOLDER
        self.every = every
        self.first_step: int | None = None  # this process's first training step: where its curves take over
        self._writer = None

    def _open(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self._writer = SummaryWriter(str(self.folder), purge_step=self.first_step)
        return self._writer

    def train_step(self, step: int, loss: SupportsFloat, lr: float) -> None:
        """``step`` counts optimizer steps from the start of training, 1 after the first; ``loss`` is
        only turned into a number on the steps written, so a device tensor costs no sync elsewhere."""
        if self.first_step is None:
            self.first_step = step
        if step % self.every == 0:
            writer = self._open()
            writer.add_scalar(STEP_LOSS_TAG, float(loss), step)
            writer.add_scalar(STEP_LR_TAG, lr, step)

    def epoch(self, record: dict[str, Any]) -> None:
        writer, step = self._open(), epoch_end_step(record)
        for group, keys in EPOCH_TAGS.items():
            for key in keys:
                if record.get(key) is not None:
                    writer.add_scalar(f"{group}/{key}", record[key], step)
        writer.flush()  # like log.jsonl: a killed run keeps the epochs it finished

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
