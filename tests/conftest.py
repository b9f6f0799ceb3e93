"""Shared, session-scoped data: numba compiles each FFCV pipeline once per process,
and converting the demo set takes seconds, so every test reuses these."""
from __future__ import annotations

from pathlib import Path

import helpers  # noqa: F401  first: it sets the tests' numba optimisation level before numba loads
import pytest

from ffcv_imagenet.convert.demo_data import make_demo_imagefolder

DEMO_CLASSES = 6
DEMO_TRAIN_PER_CLASS = 24
DEMO_VAL_PER_CLASS = 7  # 42 val images: does not divide evenly across 2 ranks x batch 8


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo_images")
    return make_demo_imagefolder(root, num_classes=DEMO_CLASSES, train_per_class=DEMO_TRAIN_PER_CLASS,
                                 val_per_class=DEMO_VAL_PER_CLASS, seed=0)


@pytest.fixture(scope="session")
def demo_betons(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{'train': Path, 'val': Path}: the demo ImageFolder converted the way users convert."""
    from ffcv_imagenet.convert.conversion import ConversionSettings, convert_imagefolder

    out = tmp_path_factory.mktemp("demo_betons")
    settings = ConversionSettings(max_resolution=256, num_workers=2)
    train = out / "train.beton"
    val = out / "val.beton"
    convert_imagefolder(demo_root / "train", train, settings, progress=False)
    convert_imagefolder(demo_root / "val", val, settings, class_map=train, progress=False)
    return {"train": train, "val": val}


@pytest.fixture(scope="session")
def tiny_run(demo_betons: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """(run folder, the recipe overrides it was trained with): one epoch at 32 px, validated at 64 px with
    flip TTA; for the tools that read a finished run (export, LR range test)."""
    from helpers import explain, run, tiny_overrides, train_command

    folder = tmp_path_factory.mktemp("tiny_run")
    overrides = tiny_overrides(demo_betons, folder, **{"training.epochs": 1, "resolution.fixres_epochs": 0,
                                                       "resolution.max_res": 32, "validation.flip_tta": True,
                                                       "validation.resolutions": "[]"})
    result = run(train_command(overrides))
    assert result.returncode == 0, explain(result)
    return folder, overrides
