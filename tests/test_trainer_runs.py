"""The trainer in one-off runs: the README's demo (the suite's longest test), a diverging loss, a bn_fc
FixRes phase, bf16. Split from test_trainer.py: the test workers take whole files (--dist loadfile),
so the two files' runs go on side by side."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ffcv_imagenet.checkpointing import FINAL_WEIGHTS, last_checkpoint_path, load_checkpoint
from ffcv_imagenet.cli import EXIT_DIVERGED
from ffcv_imagenet.convert.conversion import ConversionSettings, convert_imagefolder
from ffcv_imagenet.convert.train_val_pair import DEMO_MAX_RESOLUTION
from ffcv_imagenet.recipes import load_config
from helpers import DEMO_RECIPE, REPO, cpu_env, epoch_records, explain, run, tiny_overrides, train_command

YUV420_TOP1_NOISE = 0.05
VAL_IMAGES = 42  # conftest: 6 classes x 7; 21 per rank in batches of 8: uneven on purpose


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(demo_betons: dict, tmp_path: Path) -> None:
    # step schedule x 1e8 after epoch 0: epoch 1's LR is absurd, its loss blows up
    args = tiny_overrides(demo_betons, tmp_path, **{"lr.schedule": "step", "lr.step_length": 1,
                                                     "lr.step_ratio": 1e8, "lr.warmup_epochs": 0,
                                                     "training.max_bad_steps": 2})
    result = run(train_command(args))
    assert result.returncode == EXIT_DIVERGED, explain(result)
    assert result.stderr.count("\n") == 1 and "not finite for 2 steps" in result.stderr
    kept = load_checkpoint(last_checkpoint_path(tmp_path))
    assert kept["epoch"] == 1 and kept["samples_in_epoch"] == 0  # epoch 0's checkpoint, untouched
    assert all(torch.isfinite(value).all() for value in kept["model"].values() if value.is_floating_point())


@pytest.fixture(scope="module")
def readme_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's first commands, verbatim apart from the scripts' location; the folder they ran in."""
    folder = tmp_path_factory.mktemp("readme_demo")
    demo = subprocess.run([sys.executable, str(REPO / "write_datasets.py"), "demo", "data/demo"], cwd=folder,
                          capture_output=True, text=True, env=cpu_env(2, users_numba=True), timeout=600)
    assert demo.returncode == 0, demo.stderr[-2000:]
    trained = subprocess.run(demo_command(), cwd=folder, capture_output=True, text=True,
                             env=cpu_env(2, users_numba=True), timeout=900)
    assert trained.returncode == 0, explain(trained)
    return folder


def demo_command(*extra: str) -> list[str]:
    return [sys.executable, str(REPO / "train_imagenet.py"), "--config", str(DEMO_RECIPE), "--logging.progress=false",
            *extra]


def resolution_tables(run_folder: Path) -> list[dict]:
    return [r for r in map(json.loads, (run_folder / "log.jsonl").read_text().splitlines())
            if r["kind"] == "resolution_table"]


def test_readme_demo_trains_clearly_above_chance(readme_demo: Path) -> None:
    """10 classes, chance is 10%."""
    records = epoch_records(readme_demo / "runs" / "demo")
    assert [r["crop_mode"] for r in records][-1] == "fixres" and records[-1]["val_count"] == 200
    assert records[-1]["val_top1"] >= 0.4, [r["val_top1"] for r in records]


def test_demo_weights_score_the_same_on_yuv420_records_of_the_val_images(readme_demo: Path) -> None:
    """Issue 27: a trained model sees yuv420 records (1.5 bytes per pixel, no JPEG) as it sees the default
    records of the same images: the demo's final weights, evaluated on both, agree within noise."""
    data = readme_demo / "data" / "demo"
    yuv_val = data / "val_yuv420.beton"
    settings = ConversionSettings(max_resolution=DEMO_MAX_RESOLUTION, num_workers=2, write_mode="yuv420")
    convert_imagefolder(data / "images" / "val", yuv_val, settings, class_map=data / "train.beton", progress=False)
    run_folder = readme_demo / "runs" / "demo"
    evaluated = subprocess.run(demo_command(f"--data.val_dataset={yuv_val}", "--evaluate",
                                            str(run_folder / FINAL_WEIGHTS)),
                               cwd=readme_demo, capture_output=True, text=True, env=cpu_env(2, users_numba=True),
                               timeout=600)
    assert evaluated.returncode == 0, explain(evaluated)
    (table,) = resolution_tables(run_folder)  # the evaluation's; training logs its own as epoch records
    val_res = load_config(DEMO_RECIPE).validation.resolution
    yuv_top1 = next(row["top1"] for row in table["rows"] if row["res"] == val_res)
    default_top1 = epoch_records(run_folder)[-1]["val_top1"]  # the same weights on the default records, at val_res
    assert default_top1 >= 0.4  # a model that has learnt something, so agreement means something
    # 200 images: 10 of them are noise (the records differ by the JPEG's loss, ~35 dB)
    assert abs(yuv_top1 - default_top1) <= YUV420_TOP1_NOISE, (default_top1, yuv_top1, table["rows"])


def test_bn_fc_fixres_phase_trains_only_batchnorm_and_classifier(demo_betons: dict, tmp_path: Path) -> None:
    from ffcv_imagenet.distributed import DistContext
    from ffcv_imagenet.preflight import check_datasets
    from ffcv_imagenet.trainer import Trainer

    config = load_config(DEMO_RECIPE, tiny_overrides(demo_betons, tmp_path, **{
        "training.epochs": 2, "resolution.fixres_train": "bn_fc", "validation.every": 2}))
    ctx = DistContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    trainer = Trainer(config, ctx, check_datasets(config))
    trainer._run_epoch(trainer.plans[0])
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    assert trainer.plans[1].crop_mode == "fixres"
    trainer._run_epoch(trainer.plans[1])
    after = trainer.model.state_dict()
    convs = [k for k in after if k.endswith("weight") and after[k].ndim == 4]
    adapted = [k for k in after if "bn" in k or "downsample.1" in k or k.startswith("fc.")]
    assert convs and all(torch.equal(before[k], after[k]) for k in convs)
    assert all(not torch.equal(before[k], after[k]) for k in adapted if after[k].is_floating_point())


def test_bf16_autocast_on_cpu_trains(demo_betons: dict, tmp_path: Path) -> None:
    args = tiny_overrides(demo_betons, tmp_path, **{"training.epochs": 1, "resolution.fixres_epochs": 0,
                                                     "training.precision": "bf16", "training.channels_last": False})
    result = run(train_command(args))
    assert result.returncode == 0, explain(result)
    record = epoch_records(tmp_path)[0]
    assert record["val_count"] == VAL_IMAGES and record["train_loss"] > 0
    weights = torch.load(tmp_path / FINAL_WEIGHTS, weights_only=True)
    assert all(value.dtype != torch.bfloat16 for value in weights.values())  # autocast keeps fp32 weights
