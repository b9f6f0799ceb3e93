"""A training run from yuv420 files (issue 27) against the same run from the default files (conftest's
``tiny_run``, shared with other tests): the trainer reads every record through the decoder the records
call for, and validates every image. At this budget (one epoch at 32 px) both runs are near chance, so
the accuracy bound here only catches a broken pipeline; equal accuracy of a model that has learnt
something is checked in test_trainer_runs.py (the README demo's weights on yuv420 val records), and
decode-level equivalence (same windows and flips, pixels) in test_yuv420.py."""
from __future__ import annotations

from pathlib import Path

import pytest
from helpers import epoch_records, explain, run, train_command

from ffcv_imagenet.convert.conversion import ConversionSettings, convert_imagefolder

VAL_IMAGES = 42  # conftest's demo set: 6 classes x 7
# Two runs' top-1 on 42 images differ by chance alone: the standard error of a difference of two
# accuracies near 0.5 is sqrt(2 * 0.25 / 42) = 0.11; two of them is the noise allowed.
TOP1_NOISE = 0.22


@pytest.fixture(scope="module")
def yuv420_betons(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The conftest demo set converted as conftest does, every record stored as yuv420."""
    out = tmp_path_factory.mktemp("yuv420_betons")
    settings = ConversionSettings(max_resolution=256, num_workers=2, write_mode="yuv420")
    convert_imagefolder(demo_root / "train", out / "train.beton", settings, progress=False)
    convert_imagefolder(demo_root / "val", out / "val.beton", settings, class_map=out / "train.beton", progress=False)
    return {"train": out / "train.beton", "val": out / "val.beton"}


def test_training_from_yuv420_files_matches_the_default_files(tiny_run: tuple[Path, list[str]], demo_betons: dict,
                                                               yuv420_betons: dict, tmp_path: Path) -> None:
    default_folder, overrides = tiny_run
    swapped = {str(demo_betons[role]): str(yuv420_betons[role]) for role in ("train", "val")}
    swapped[str(default_folder)] = str(tmp_path)
    yuv_overrides = [option.split("=", 1)[0] + "=" + swapped.get(option.split("=", 1)[1], option.split("=", 1)[1])
                     for option in overrides]
    assert yuv_overrides != overrides
    result = run(train_command(yuv_overrides))
    assert result.returncode == 0, explain(result)
    default, yuv = epoch_records(default_folder)[-1], epoch_records(tmp_path)[-1]
    assert yuv["val_count"] == default["val_count"] == VAL_IMAGES
    assert abs(yuv["val_top1"] - default["val_top1"]) <= TOP1_NOISE, (yuv["val_top1"], default["val_top1"])
