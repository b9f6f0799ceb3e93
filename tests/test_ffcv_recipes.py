"""ffcv-imagenet's own config files run unchanged: translated key by key, checked against our rcfg/."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from helpers import REPO, TRAIN, epoch_records, explain, run, tiny_overrides
from ffcv_imagenet.config import ConfigError, Config, to_dict
from ffcv_imagenet.recipes import load_config

# The twelve published files of libffcv/ffcv-imagenet (rn50_configs/, rn18_configs/), as written there;
# only the epochs and the ramp differ between the files of one family.
RN50_TEXT = """data:
  in_memory: 1
  num_workers: 12
dist:
  world_size: 8
logging:
  folder: /tmp/
lr:
  lr: 1.7
  lr_schedule_type: cyclic
model:
  arch: resnet50
resolution:
  end_ramp: {end_ramp}
  max_res: 192
  min_res: 160
  start_ramp: {start_ramp}
training:
  batch_size: 512
  bn_wd: 0
  distributed: 1
  epochs: {epochs}
  label_smoothing: 0.1
  momentum: 0.9
  optimizer: sgd
  weight_decay: 0.0001
  use_blurpool: 1
validation:
  lr_tta: true
  resolution: 256
"""
RN18_TEXT = """data:
  gpu: 0
  in_memory: 1
  num_workers: 12
dist:
  world_size: 1
logging:
  folder: /tmp/
  log_level: 0
lr:
  lr: 0.5
  lr_peak_epoch: 2
  lr_schedule_type: cyclic
model:
  arch: resnet18
resolution:
  end_ramp: {end_ramp}
  max_res: 192
  min_res: 160
  start_ramp: {start_ramp}
training:
  batch_size: 1024
  bn_wd: 0
  distributed: 0
  epochs: {epochs}
  label_smoothing: 0.1
  momentum: 0.9
  optimizer: sgd
  weight_decay: 5e-5
  use_blurpool: 1
validation:
  lr_tta: true
  resolution: 256
"""
RAMPS = {16: (11, 13), 24: (17, 20), 32: (23, 27), 40: (29, 34), 56: (41, 48), 88: (65, 76)}  # epochs: start, end
PUBLISHED = [(family, epochs) for family in ("rn50", "rn18") for epochs in RAMPS]
# Where our rcfg/ recipes differ from theirs on purpose: the machine (paths, workers, run folder),
# the extra evaluation table, rn50_88's FixRes phase, and when to evaluate (their rn18 log_level 0).
OURS_ON_PURPOSE = {"data.train_dataset", "data.val_dataset", "data.num_workers", "logging.folder",
                   "validation.resolutions", "resolution.fixres_epochs", "validation.every"}


def their_file(tmp_path: Path, family: str, epochs: int) -> Path:
    start, end = RAMPS[epochs]
    path = tmp_path / f"{family}_{epochs}_epochs.yaml"
    path.write_text((RN50_TEXT if family == "rn50" else RN18_TEXT).format(epochs=epochs, start_ramp=start,
                                                                         end_ramp=end))
    return path


def flat(config: Config) -> dict:
    return {f"{section}.{key}": value for section, body in to_dict(config).items() for key, value in body.items()}


@pytest.mark.parametrize("family, epochs", PUBLISHED, ids=[f"{f}_{e}" for f, e in PUBLISHED])
def test_published_config_translates_to_our_recipe(tmp_path: Path, family: str, epochs: int) -> None:
    theirs = flat(load_config(their_file(tmp_path, family, epochs)))
    ours = flat(load_config(REPO / "rcfg" / f"{family}_{epochs}.yaml"))
    for key in sorted(set(ours) - OURS_ON_PURPOSE):
        assert theirs[key] == pytest.approx(ours[key]), key
    # lr.lr is for their global batch: 1.7 for 512 x 8 GPUs, 0.5 for 1024 x 1 GPU -> per 256 images
    assert theirs["lr.lr_per_256"] == pytest.approx(1.7 * 256 / 4096 if family == "rn50" else 0.5 * 256 / 1024)
    assert theirs["data.num_workers"] == 12 and theirs["resolution.fixres_epochs"] == 0
    assert theirs["logging.folder"] == f"/tmp/{family}_{epochs}_epochs"
    assert theirs["validation.every"] == (epochs if family == "rn18" else 1)  # log_level 0: evaluate at the end


def test_their_step_schedule_has_no_warmup(tmp_path: Path) -> None:
    path = tmp_path / "step.yaml"
    path.write_text("lr:\n  lr: 0.5\n  lr_schedule_type: step\n  step_ratio: 0.2\n  step_length: 10\n"
                    "training:\n  batch_size: 256\n")
    config = load_config(path)
    assert (config.lr.schedule, config.lr.warmup_epochs, config.lr.step_ratio, config.lr.step_length) == \
        ("step", 0.0, 0.2, 10)
    assert config.lr.lr_per_256 == 0.5  # 256 x 1 GPU (their dist.world_size default)


@pytest.mark.parametrize("addition, message", [
    ("training:\n  eval_only: 1\n", "training.eval_only: 1 has no equivalent here"),
    ("training:\n  bn_wd: 1\n", "training.bn_wd: 1 has no equivalent here"),
    ("model:\n  pretrained: 1\n", "model.pretrained: 1 has no equivalent here"),
    ("training:\n  use_blurpool: 2\n", "training.use_blurpool must be 1/0"),
    ("lr:\n  lr_schedule_type: triangular\n", "lr.lr_schedule_type must be one of cyclic, step"),
    ("logging:\n  log_level: 5\n", "logging.log_level must be 0, 1 or 2"),
    ("data:\n  prefetch: 4\n", "data.prefetch: an ffcv-imagenet key with no equivalent here"),
    ("validation:\n  lr_tta: 1\n  flip: 1\n", "validation.flip: an ffcv-imagenet key with no equivalent"),
])
def test_their_keys_without_an_equivalent_are_one_line(tmp_path: Path, addition: str, message: str) -> None:
    path = tmp_path / "theirs.yaml"
    path.write_text("lr:\n  lr: 0.5\n" + addition)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


@pytest.mark.slow
def test_a_run_from_their_config_trains_and_its_recipe_reruns_identically(demo_betons: dict, tmp_path: Path) -> None:
    """Their rn18_16 file on the demo data (paths, size and length overridden), then our own --config of
    the recipe.yaml that run saved: the same recipe and the same numbers."""
    theirs = their_file(tmp_path, "rn18", 16)
    tiny = tiny_overrides(demo_betons, tmp_path / "first", **{"training.epochs": 2, "training.precision": "fp32"})
    first = run([sys.executable, str(TRAIN), "--config", str(theirs), *tiny])
    assert first.returncode == 0, explain(first)
    assert "is an ffcv-imagenet config" in first.stdout and "lr_per_256: 0.125" in first.stdout
    saved = tmp_path / "first" / "recipe.yaml"
    recipe = yaml.safe_load(saved.read_text())
    assert recipe["model"]["arch"] == "resnet18" and recipe["lr"]["lr_per_256"] == 0.125

    again = run([sys.executable, str(TRAIN), "--config", str(saved), f"--logging.folder={tmp_path / 'second'}"])
    assert again.returncode == 0, explain(again)
    resaved = yaml.safe_load((tmp_path / "second" / "recipe.yaml").read_text())
    assert {**resaved, "logging": None} == {**recipe, "logging": None}
    numbers = {name: [[record.get(key) for key in ("epoch", "res", "train_loss", "lr", "val_top1")]
                      for record in epoch_records(tmp_path / name)] for name in ("first", "second")}
    assert len(numbers["first"]) == 2 and numbers["first"] == numbers["second"], json.dumps(numbers)
