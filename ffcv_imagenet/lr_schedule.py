"""Learning rate per iteration: warm-up, then linear, cosine or step decay (or one-cycle).

The recipe states the peak LR per 256 images of global batch; ``peak_lr``
scales it by the real global batch (per-rank batch x ranks), so one recipe is
right on 1 GPU and on 64 (the linear scaling rule of Goyal et al., 2017).
Time is measured in fractional epochs, so a resumed run or a different number
of ranks (hence steps per epoch) follows the same curve.
"""
from __future__ import annotations

import math

from .config import LR_REFERENCE_BATCH, LRConfig


def peak_lr(cfg: LRConfig, global_batch: int) -> float:
    return cfg.lr_per_256 * global_batch / LR_REFERENCE_BATCH


def lr_factor(cfg: LRConfig, epochs: int, progress: float) -> float:
    """Multiplier of the peak LR at ``progress`` epochs into training (0 <= progress <= epochs)."""
    if progress < cfg.warmup_epochs:
        rise = progress / cfg.warmup_epochs
        if cfg.schedule == "onecycle":  # Smith's one-cycle: the warm-up is a half cosine too
            rise = 0.5 * (1.0 - math.cos(math.pi * rise))
        return cfg.warmup_start_factor + (1.0 - cfg.warmup_start_factor) * rise
    if cfg.schedule == "step":
        return cfg.step_ratio ** math.floor(progress / cfg.step_length)
    decay_span = max(epochs - cfg.warmup_epochs, 1e-12)
    done = min(1.0, (progress - cfg.warmup_epochs) / decay_span)
    if cfg.schedule == "linear":
        shape = 1.0 - done
    else:  # cosine, onecycle
        shape = 0.5 * (1.0 + math.cos(math.pi * done))
    return cfg.end_factor + (1.0 - cfg.end_factor) * shape


def lr_at(cfg: LRConfig, epochs: int, global_batch: int, epoch: int, step: float, steps_per_epoch: int) -> float:
    """The LR of iteration ``step`` (0-based; fractional when a run resumed on another rank count) of ``epoch``."""
    return peak_lr(cfg, global_batch) * lr_factor(cfg, epochs, epoch + step / steps_per_epoch)
