"""The resolution schedule: a pure function of (recipe, epoch).

Each epoch gets a training resolution and a crop mode:
- ``rrc``: RandomResizedCrop + flip (the main phase, with progressive resizing);
- ``fixres``: resize the shorter side to res*256/224, random res x res crop, flip.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import ResolutionConfig

RES_MULTIPLE = 32  # ffcv-imagenet rounds ramp resolutions to a multiple of 32


@dataclass(frozen=True)
class EpochPlan:
    epoch: int
    res: int
    crop_mode: str  # "rrc" | "fixres"


def ffcv_ramp_res(cfg: ResolutionConfig, epoch: int) -> int:
    """ffcv-imagenet's ramp: min_res up to start_ramp, max_res from end_ramp, linear between."""
    if epoch <= cfg.start_ramp:
        return cfg.min_res
    if epoch >= cfg.end_ramp:
        return cfg.max_res
    interp = np.interp(epoch, [cfg.start_ramp, cfg.end_ramp], [cfg.min_res, cfg.max_res])
    return int(np.round(interp / RES_MULTIPLE)) * RES_MULTIPLE


def plan_for_epoch(cfg: ResolutionConfig, epochs: int, epoch: int) -> EpochPlan:
    return EpochPlan(epoch=epoch, res=ffcv_ramp_res(cfg, epoch), crop_mode="rrc")


def full_schedule(cfg: ResolutionConfig, epochs: int) -> list[EpochPlan]:
    return [plan_for_epoch(cfg, epochs, epoch) for epoch in range(epochs)]
