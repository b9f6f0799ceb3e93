"""The resolution schedule, checked against values worked out by hand."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from ffcv_imagenet.config import ConfigError, ResolutionConfig
from ffcv_imagenet.recipes import load_config
from ffcv_imagenet.schedule import FIXRES, RRC, fixres_epochs, format_table, full_schedule, phases, validate

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "rcfg").glob("*.yaml"))


def test_rn50_88_schedule_by_hand() -> None:
    # ramp 65 -> 76 from 160 to 192 in steps of 32: interp(70) = 174.5 -> 160, interp(71) = 177.5 -> 192;
    # FixRes auto = round(88 / 10) = 9 epochs: 79..87 at 224.
    config = load_config(REPO / "rcfg" / "rn50_88.yaml")
    plans = full_schedule(config.resolution, config.training.epochs)
    assert phases(plans) == [(0, 70, 160, RRC), (71, 78, 192, RRC), (79, 87, 224, FIXRES)]


def test_published_ramp_without_fixres() -> None:
    cfg = ResolutionConfig(min_res=160, max_res=192, start_ramp=11, end_ramp=13, fixres_epochs=0)
    # interp(12) = 176 -> 176 / 32 = 5.5 rounds half to even, 6 -> 192 (ffcv-imagenet's np.round)
    assert [p.res for p in full_schedule(cfg, 16)] == [160] * 12 + [192] * 4
    assert {p.crop_mode for p in full_schedule(cfg, 16)} == {RRC}


def test_composer_ramp_by_hand() -> None:
    cfg = ResolutionConfig(ramp="composer", max_res=224, initial_scale=0.5, delay_fraction=0.2,
                           finetune_fraction=0.2, size_increment=32, fixres_epochs=0)
    # elapsed 0.0..0.9; scale 0.5 until 0.2, linear to 1.0 at 0.8; side = 32 * round(scale * 224 / 32), as
    # Composer's ProgressiveResizing: 0.5 -> 3.5 -> 4 (half to even); 0.583 -> 4.08 -> 4; 0.667 -> 4.67 -> 5;
    # 0.75 -> 5.25 -> 5; 0.833 -> 5.83 -> 6; 0.917 -> 6.42 -> 6; 1.0 -> 7
    assert [p.res for p in full_schedule(cfg, 10)] == [128, 128, 128, 128, 160, 160, 192, 192, 224, 224]


def test_fixres_phase_length() -> None:
    assert fixres_epochs(ResolutionConfig(fixres_epochs=-1), 88) == 9
    assert fixres_epochs(ResolutionConfig(fixres_epochs=-1), 4) == 1  # at least one epoch
    assert fixres_epochs(ResolutionConfig(fixres_epochs=3), 88) == 3
    plans = full_schedule(ResolutionConfig(fixres_epochs=2, fixres_res=256), 6)
    assert [(p.res, p.crop_mode) for p in plans[-3:]] == [(192, RRC), (256, FIXRES), (256, FIXRES)]


@pytest.mark.parametrize("changes, epochs, message", [
    ({"fixres_epochs": 16}, 16, "leaves no main-phase epoch"),
    ({"min_res": 0}, 16, "min_res must be positive"),
    ({"fixres_res": -224}, 16, "fixres_res must be positive"),
    ({"start_ramp": 13, "end_ramp": 11}, 16, "end_ramp 11 is before start_ramp 13"),
    ({"min_res": 256, "max_res": 192}, 16, "above max_res"),
    ({"ramp": "composer", "initial_scale": 0.0}, 16, "initial_scale"),
    ({"ramp": "composer", "delay_fraction": 0.6, "finetune_fraction": 0.5}, 16, "below 1"),
    ({"fixres_epochs": 2, "fixres_res": 160}, 16, "below the main phase's 192"),
    ({"fixres_crop_ratio": 1.5}, 16, "fixres_crop_ratio"),
    ({}, 0, "epochs must be positive"),
])
def test_invalid_schedules_are_refused(changes: dict, epochs: int, message: str) -> None:
    cfg = dataclasses.replace(ResolutionConfig(start_ramp=11, end_ramp=13), **changes)
    with pytest.raises(ConfigError, match=message):
        validate(cfg, epochs)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_loads_and_has_a_valid_schedule(recipe: Path) -> None:
    config = load_config(recipe)
    validate(config.resolution, config.training.epochs)
    assert len(full_schedule(config.resolution, config.training.epochs)) == config.training.epochs


def test_table_merges_equal_epochs() -> None:
    plans = full_schedule(ResolutionConfig(start_ramp=11, end_ramp=13, fixres_epochs=1, fixres_res=224), 16)
    table = format_table(plans).splitlines()
    assert table[2:] == ["0-11      | 160 | rrc", "12-14     | 192 | rrc", "15        | 224 | fixres"]


def test_schedule_command_prints_table_and_refuses_bad_overrides() -> None:
    run = [sys.executable, str(REPO / "train_imagenet.py"), "--config", str(REPO / "rcfg" / "rn50_88.yaml"),
           "--print-schedule"]
    good = subprocess.run(run, capture_output=True, text=True)
    assert good.returncode == 0 and "79-87     | 224 | fixres" in good.stdout
    bad = subprocess.run(run + ["--resolution.fixres_epochs=88"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "fixres_epochs" in bad.stderr
    unknown = subprocess.run(run + ["--resolution.max_resolution=3"], capture_output=True, text=True)
    assert unknown.returncode == 2 and "resolution.max_resolution" in unknown.stderr
