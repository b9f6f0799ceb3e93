"""The resolution schedule: a pure function of (recipe, epoch).

Each epoch gets a training resolution and a crop mode:
- ``rrc``: RandomResizedCrop + flip, the main phase, whose resolution ramps up
  (progressive resizing, in ffcv-imagenet's or Composer's style);
- ``fixres``: the last ``fixres_epochs`` epochs: resize the shorter side to
  res / fixres_crop_ratio, take a random res x res crop, flip. Minimal
  augmentation at a higher resolution closes the train/test resolution gap
  (Touvron et al., "Fixing the train-test resolution discrepancy", 2019).

``python train_imagenet.py --config rcfg/rn50_88.yaml --print-schedule`` prints the table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .config import ConfigError, ResolutionConfig, check_section, check_value

RES_MULTIPLE = 32  # ffcv-imagenet rounds ramp resolutions to a multiple of 32
FIXRES_AUTO = -1
FIXRES_AUTO_SHARE = 0.1  # auto FixRes phase: about the last tenth of training
RRC, FIXRES = "rrc", "fixres"


@dataclass(frozen=True)
class EpochPlan:
    epoch: int
    res: int
    crop_mode: str  # RRC | FIXRES


def fixres_epochs(cfg: ResolutionConfig, epochs: int) -> int:
    if cfg.fixres_epochs == FIXRES_AUTO:
        return max(1, round(epochs * FIXRES_AUTO_SHARE))
    return cfg.fixres_epochs


def ffcv_ramp_res(cfg: ResolutionConfig, epoch: int) -> int:
    """ffcv-imagenet's ramp: min_res up to start_ramp, max_res from end_ramp, linear between."""
    if epoch <= cfg.start_ramp:
        return cfg.min_res
    if epoch >= cfg.end_ramp:
        return cfg.max_res
    interp = np.interp(epoch, [cfg.start_ramp, cfg.end_ramp], [cfg.min_res, cfg.max_res])
    return int(np.round(interp / RES_MULTIPLE)) * RES_MULTIPLE


def composer_ramp_res(cfg: ResolutionConfig, epoch: int, epochs: int) -> int:
    """Composer's progressive resizing, by fraction of training elapsed at the epoch's start."""
    elapsed = epoch / epochs
    ramp_end = 1.0 - cfg.finetune_fraction
    if elapsed < cfg.delay_fraction:
        scale = cfg.initial_scale
    elif elapsed >= ramp_end:
        scale = 1.0
    else:
        progress = (elapsed - cfg.delay_fraction) / (ramp_end - cfg.delay_fraction)
        scale = cfg.initial_scale + (1.0 - cfg.initial_scale) * progress
    # To the nearest multiple, as Composer does (Python's round: halves go to the even multiple)
    steps = round(scale * cfg.max_res / cfg.size_increment)
    return max(1, steps) * cfg.size_increment


def main_phase_res(cfg: ResolutionConfig, epoch: int, epochs: int) -> int:
    if cfg.ramp == "ffcv":
        return ffcv_ramp_res(cfg, epoch)
    return composer_ramp_res(cfg, epoch, epochs)


def plan_for_epoch(cfg: ResolutionConfig, epochs: int, epoch: int) -> EpochPlan:
    if epoch >= epochs - fixres_epochs(cfg, epochs):
        return EpochPlan(epoch=epoch, res=cfg.fixres_res, crop_mode=FIXRES)
    return EpochPlan(epoch=epoch, res=main_phase_res(cfg, epoch, epochs), crop_mode=RRC)


def full_schedule(cfg: ResolutionConfig, epochs: int) -> list[EpochPlan]:
    return [plan_for_epoch(cfg, epochs, epoch) for epoch in range(epochs)]


def validate(cfg: ResolutionConfig, epochs: int) -> None:
    """Refuse impossible schedules before any work, naming the value."""
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    check_value("training.epochs", epochs)
    check_section("resolution", cfg)  # each value against its declaration; the rules between them follow
    need(cfg.min_res <= cfg.max_res, f"resolution.min_res {cfg.min_res} is above max_res {cfg.max_res}")
    need(cfg.start_ramp <= cfg.end_ramp,
         f"resolution.end_ramp {cfg.end_ramp} is before start_ramp {cfg.start_ramp}")
    need(cfg.delay_fraction + cfg.finetune_fraction < 1.0,
         f"resolution.delay_fraction + finetune_fraction must be below 1: "
         f"{cfg.delay_fraction} + {cfg.finetune_fraction}")
    phase = fixres_epochs(cfg, epochs)
    need(phase < epochs, f"resolution.fixres_epochs {phase} leaves no main-phase epoch in {epochs} epochs")
    if phase:
        largest = max(main_phase_res(cfg, epoch, epochs) for epoch in range(epochs - phase))
        need(cfg.fixres_res >= largest,
             f"resolution.fixres_res {cfg.fixres_res} is below the main phase's {largest}: FixRes trains higher")


def check_resolutions(option: str, resolutions: Sequence[int]) -> None:
    """Resolutions asked for on a command line (``--eval-res``, ``--res``): each positive, naming the option."""
    for res in resolutions:
        if res <= 0:
            raise ConfigError(f"{option}: resolutions must be positive, got {res}")


def phases(plans: Sequence[EpochPlan]) -> list[tuple[int, int, int, str]]:
    """Consecutive epochs with the same resolution and crop mode: (first, last, res, mode)."""
    rows: list[tuple[int, int, int, str]] = []
    for plan in plans:
        if rows and rows[-1][2:] == (plan.res, plan.crop_mode):
            rows[-1] = (rows[-1][0], plan.epoch, plan.res, plan.crop_mode)
        else:
            rows.append((plan.epoch, plan.epoch, plan.res, plan.crop_mode))
    return rows


def format_table(plans: Sequence[EpochPlan]) -> str:
    lines = ["epochs    | res | crop mode", "----------+-----+----------"]
    for first, last, res, mode in phases(plans):
        span = f"{first}-{last}" if last > first else f"{first}"
        lines.append(f"{span:<9} | {res:>3} | {mode}")
    return "\n".join(lines)
