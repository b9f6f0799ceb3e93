"""The .beton files FFCV users already have (ffcv-imagenet's write_imagenet.py, no sidecar): train, evaluate,
adopt, and every FFCV write mode through both decode methods. Real files from FFCV's own DatasetWriter."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ffcv_imagenet.beton_format import (Fields, field_names, labels, open_beton, recorded_fields, sidecar_path,
                                        stored_bytes, stored_bytes_by_field)
from ffcv_imagenet.convert.inspection import read_image, report
from ffcv_imagenet.distributed import DistContext
from ffcv_imagenet.evaluation import Evaluator
from ffcv_imagenet.loaders import LoaderSettings, TrainLoader, build_val_loader
from ffcv_imagenet.preflight import check_datasets
from ffcv_imagenet.recipes import load_config
from ffcv_imagenet.schedule import RRC, EpochPlan
from ffcv_writer import write_like_ffcv_imagenet
from helpers import DEMO_RECIPE, REPO, epoch_records, explain, run, tiny_overrides, train_command

STORED_SIDE = 64  # ffcv-imagenet writes 500 px (train_500_0.50_90.ffcv); tiny here
TWO_EPOCHS = {"training.epochs": 2, "validation.resolutions": "[]"}  # one 32 px rrc epoch, one 64 px FixRes epoch
EXIT_ERROR = 2


@pytest.fixture(scope="module")
def ffcv_files(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{'train': ..., 'val': ...}: the demo ImageFolder written exactly as ffcv-imagenet writes ImageNet."""
    out = tmp_path_factory.mktemp("ffcv_imagenet_files")
    return {split: write_like_ffcv_imagenet(demo_root / split, out / f"{split}_{STORED_SIDE}_0.50_90.ffcv",
                                            max_resolution=STORED_SIDE) for split in ("train", "val")}


def run_write_datasets(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "write_datasets.py"), *args], capture_output=True, text=True,
                          cwd=REPO)


def one_error_line(result: subprocess.CompletedProcess, prog: str) -> str:
    assert result.returncode == EXIT_ERROR, explain(result)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), result.stderr
    return lines[0]


def start_record(folder: Path) -> dict:
    return [r for r in map(json.loads, (folder / "log.jsonl").read_text().splitlines()) if r["kind"] == "start"][0]


# ---------------------------------------------------------------- train, evaluate, adopt
def test_trains_and_evaluates_on_ffcv_imagenet_files(ffcv_files: dict, tmp_path: Path) -> None:
    assert not sidecar_path(ffcv_files["train"]).exists() and not sidecar_path(ffcv_files["val"]).exists()
    folder = tmp_path / "run"
    result = run(train_command(tiny_overrides(ffcv_files, folder, **TWO_EPOCHS, **{"data.order": "random"})))
    assert result.returncode == 0, explain(result)
    records = epoch_records(folder)
    assert [r["epoch"] for r in records] == [0, 1] and all(r["val_top1"] is not None for r in records)
    class_count = int(labels(open_beton(ffcv_files["train"])).max()) + 1
    assert start_record(folder)["classes"] == [str(label) for label in range(class_count)]
    assert "classes named by number" in result.stdout

    evaluated = run(train_command([*tiny_overrides(ffcv_files, folder, **TWO_EPOCHS), "--evaluate",
                                   str(folder / "final_weights.pt"), "--eval-res", "64"]))
    assert evaluated.returncode == 0, explain(evaluated)
    row = [line.split("|") for line in evaluated.stdout.splitlines() if line.strip().startswith("64 |")]
    assert len(row) == 1 and float(row[0][1].strip(" %")) == pytest.approx(100 * records[-1]["val_top1"], abs=0.006)


def adopted_copies(ffcv_files: dict, demo_root: Path, folder: Path) -> dict[str, Path]:
    """Copies of the files, adopted with their ImageFolder roots; the .beton bytes and mtime never change."""
    folder.mkdir()
    copies = {}
    for split, original in ffcv_files.items():
        copies[split] = Path(shutil.copy2(original, folder / original.name))
        before = (copies[split].read_bytes(), os.stat(copies[split]).st_mtime_ns)
        result = run_write_datasets("adopt", str(copies[split]), "--classes-from", str(demo_root / split))
        assert result.returncode == 0, explain(result)
        assert (copies[split].read_bytes(), os.stat(copies[split]).st_mtime_ns) == before
        assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]  # written atomically
    return copies


def test_adopted_files_name_their_classes_in_sidecar_log_and_inspect(ffcv_files: dict, demo_root: Path,
                                                                     tmp_path: Path) -> None:
    copies = adopted_copies(ffcv_files, demo_root, tmp_path / "adopted")
    folders = sorted(entry.name for entry in (demo_root / "train").iterdir())
    for split, path in copies.items():
        sidecar = json.loads(sidecar_path(path).read_text())
        assert sidecar["classes"] == folders and sidecar["num_images"] == open_beton(path).num_samples
        assert sidecar["images_per_class"] == np.bincount(labels(open_beton(path))).tolist()

    folder = tmp_path / "run"
    result = run(train_command(tiny_overrides(copies, folder, **TWO_EPOCHS, **{"data.order": "quasi_random"})))
    assert result.returncode == 0, explain(result)
    assert [r["epoch"] for r in epoch_records(folder)] == [0, 1]
    assert start_record(folder)["classes"] == folders
    assert f"{len(folders)} classes: {', '.join(folders)}" in result.stdout

    inspected = run_write_datasets("inspect", str(copies["train"]))
    assert inspected.returncode == 0, explain(inspected)
    assert f"names from {sidecar_path(copies['train']).name}" in inspected.stdout
    assert all(f" {name} " in inspected.stdout for name in folders)  # one histogram row per class, by name


# ---------------------------------------------------------------- every write mode, both decode methods
MODES = {  # FFCV's write modes, each at its own max resolution (smart: large images as JPEG, small ones raw)
    "jpg": {"write_mode": "jpg", "max_resolution": 200, "compress_probability": None},
    "raw": {"write_mode": "raw", "max_resolution": 96, "compress_probability": None},
    "proportion": {"write_mode": "proportion", "max_resolution": 128},
    "smart": {"write_mode": "smart", "max_resolution": 160, "compress_probability": None,
              "smart_threshold": 140 * 140 * 3},
}
MODE_CLASSES, MODE_PER_CLASS = 2, 6  # 12 records: 3 batches of 4
BATCH = 4
OUT_SIDE = 48
CLOSE_LEVELS = 12  # mean |difference| in 8-bit levels between two decodes of the same window, different resizes


@pytest.fixture(scope="module")
def mode_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ffcv_imagenet.convert.demo_data import make_demo_imagefolder

    root = make_demo_imagefolder(tmp_path_factory.mktemp("mode_images"), num_classes=MODE_CLASSES,
                                 train_per_class=MODE_PER_CLASS, val_per_class=1, seed=3)
    return root / "train"


def one_epoch(path: Path, decoder: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The page-shuffled order through the process cache (data larger than RAM), 48 px crops."""
    settings = LoaderSettings(batch_size=BATCH, num_workers=1, device=torch.device("cpu"))
    loader = TrainLoader(path, settings, order="quasi_random", in_memory=False, distributed=False, seed=0,
                         fixres_crop_ratio=0.875, cache_mib=16, decoder=decoder)
    batches = [(images.clone(), labels.clone()) for images, labels in loader.epoch(EpochPlan(0, OUT_SIDE, RRC))]
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


@pytest.mark.parametrize("mode", sorted(MODES))
def test_ffcv_write_modes_decode_with_both_methods(mode: str, mode_root: Path, tmp_path: Path) -> None:
    path = write_like_ffcv_imagenet(mode_root, tmp_path / f"{mode}.ffcv", **MODES[mode])
    reader = open_beton(path)
    assert int(reader.page_size) == 8 * 2 ** 20  # FFCV's default pages
    modes_stored = set(reader.metadata["f0"]["mode"].tolist())
    assert modes_stored == {"jpg": {0}, "raw": {1}}.get(mode, {0, 1}), modes_stored  # smart/proportion: both
    file_labels = labels(reader)

    fast_images, fast_labels = one_epoch(path, "fast")
    stock_images, stock_labels = one_epoch(path, "stock")
    assert sorted(fast_labels.tolist()) == sorted(file_labels.tolist())  # every record once
    assert torch.equal(fast_labels, stock_labels)  # same order
    assert fast_images.float().mean(dim=(1, 2, 3)).min() > 0  # nothing zeroed as undecodable
    difference = (fast_images.float() - stock_images.float()).abs().mean()
    assert difference < CLOSE_LEVELS, difference  # the same seeded windows, decoded two ways

    settings = LoaderSettings(batch_size=BATCH, num_workers=1, device=torch.device("cpu"), channels_last=False)
    val = build_val_loader(path, settings, res=OUT_SIDE, crop_ratio=1.0, num_samples=len(file_labels), rank=0,
                           world_size=1)
    centres = torch.cat([images.clone() for images, _ in val])
    for index, centre in enumerate(centres):  # each against its record decoded whole by FFCV's reader
        full = read_image(reader, index)
        side = min(full.shape[:2])
        top, left = (full.shape[0] - side) // 2, (full.shape[1] - side) // 2
        expected = full[top:top + side, left:left + side].reshape(-1, 3).mean(axis=0)
        assert np.abs(centre.float().mean(dim=(1, 2)).numpy() - expected).max() < CLOSE_LEVELS


# ---------------------------------------------------------------- other fields, bad input
class Triples:
    """An indexed dataset of (label, image, weight): fields in an order of their own, one extra."""

    def __init__(self, root: Path):
        from torchvision.datasets import ImageFolder

        self.folder = ImageFolder(root=str(root))

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> tuple:
        image, label = self.folder[index]
        return label, image, 0.5


@pytest.fixture(scope="module")
def other_fields(mode_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ffcv.fields import FloatField, IntField, RGBImageField

    out = tmp_path_factory.mktemp("other_fields") / "triples.beton"
    fields = {"target": IntField(), "img": RGBImageField(max_resolution=64), "weight": FloatField()}
    from ffcv.writer import DatasetWriter

    DatasetWriter(str(out), fields, num_workers=1).from_indexed_dataset(Triples(mode_root))
    return out


def test_fields_named_in_the_recipe_are_read_in_any_order(other_fields: Path, tmp_path: Path) -> None:
    assert field_names(other_fields) == ["target", "img", "weight"]
    result = run(train_command(tiny_overrides({"train": other_fields, "val": other_fields}, tmp_path / "run")))
    line = one_error_line(result, "train_imagenet.py")
    assert "['image', 'label']" in line and "['target', 'img', 'weight']" in line and "data.image_field" in line

    fields = Fields(image="img", label="target")
    settings = LoaderSettings(batch_size=BATCH, num_workers=1, device=torch.device("cpu"), channels_last=False)
    val = build_val_loader(other_fields, settings, res=OUT_SIDE, crop_ratio=1.0, num_samples=MODE_CLASSES *
                           MODE_PER_CLASS, rank=0, world_size=1, fields=fields)
    batches = [(images.clone(), got.clone()) for images, got in val]
    assert all(images.shape == (BATCH, 3, OUT_SIDE, OUT_SIDE) for images, _ in batches)  # images first
    assert torch.cat([got.view(-1) for _, got in batches]).tolist() == labels(open_beton(other_fields, fields),
                                                                              fields).tolist()


def test_an_adopted_file_is_read_with_the_fields_its_sidecar_records(other_fields: Path, mode_root: Path,
                                                                     tmp_path: Path) -> None:
    copy = tmp_path / "triples.beton"
    shutil.copy(other_fields, copy)
    adopted = run_write_datasets("adopt", str(copy), "--classes-from", str(mode_root), "--image-field", "img",
                                 "--label-field", "target")
    assert adopted.returncode == 0, explain(adopted)
    recorded = Fields(image="img", label="target")
    assert recorded_fields(copy) == recorded
    config = load_config(DEMO_RECIPE, tiny_overrides({"train": copy, "val": copy}, tmp_path / "run"))
    datasets = check_datasets(config)  # the recipe leaves data.image_field and data.label_field at their defaults
    assert datasets.fields == datasets.val_fields == recorded
    ctx = DistContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    evaluator = Evaluator(config, ctx, datasets.val_path, datasets.val_size, datasets.val_fields)
    seen = torch.cat([got.view(-1).clone() for _, got in evaluator.loader(OUT_SIDE)])
    assert seen.tolist() == labels(open_beton(copy, recorded), recorded).tolist()


class WithNotes(Triples):
    """(image, label, note): a second field stored outside the metadata, as the image is."""

    def __getitem__(self, index: int) -> tuple:
        image, label = self.folder[index]
        return image, label, np.full(NOTE_BYTES * (index % 3 + 1), index, dtype=np.uint8)


NOTE_BYTES = 700


def test_stored_bytes_are_counted_per_field(mode_root: Path, tmp_path: Path) -> None:
    from ffcv.fields import BytesField, IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    path = tmp_path / "notes.beton"
    fields = {"image": RGBImageField(max_resolution=32), "label": IntField(), "note": BytesField()}
    DatasetWriter(str(path), fields, num_workers=1).from_indexed_dataset(WithNotes(mode_root))
    reader = open_beton(path)
    stored = stored_bytes_by_field(reader)
    count = int(reader.num_samples)
    assert set(stored) == {"image", "note"}  # the label lives in the metadata table
    assert stored["note"] == sum(NOTE_BYTES * (index % 3 + 1) for index in range(count))
    assert stored["image"] + stored["note"] == stored_bytes(path) and stored["image"] > 0
    per_record = f"{stored['image'] / count / 1024:.1f} KiB of image data per record, note " \
                 f"{stored['note'] / count / 1024:.1f} KiB"
    assert per_record in report(path)


@pytest.fixture(scope="module")
def float_labels(mode_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ffcv.fields import FloatField, RGBImageField

    out = tmp_path_factory.mktemp("float_labels") / "float.ffcv"
    return write_like_ffcv_imagenet(mode_root, out, max_resolution=32,
                                    fields={"image": RGBImageField(max_resolution=32), "label": FloatField()})


@pytest.fixture(scope="module")
def fewer_classes(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A val set written from 4 of the demo's 6 class folders (FOLDER/images), as FOLDER/val_four.ffcv."""
    folder = tmp_path_factory.mktemp("four_classes")
    for name in sorted(entry.name for entry in (demo_root / "val").iterdir())[:4]:
        shutil.copytree(demo_root / "val" / name, folder / "images" / name)
    return write_like_ffcv_imagenet(folder / "images", folder / "val_four.ffcv", max_resolution=32)


@pytest.mark.parametrize("case", ["labels not integers", "class counts differ", "val labels beyond train's"])
def test_bad_ffcv_files_are_one_line(case: str, ffcv_files: dict, float_labels: Path, fewer_classes: Path,
                                     tmp_path: Path) -> None:
    files, expected = {
        "labels not integers": ({"train": ffcv_files["train"], "val": float_labels}, "labels must be integers"),
        "class counts differ": ({"train": ffcv_files["train"], "val": fewer_classes}, "class counts must agree"),
        "val labels beyond train's": ({"train": fewer_classes, "val": ffcv_files["val"]}, "outside the train set's"),
    }[case]
    line = one_error_line(run(train_command(tiny_overrides(files, tmp_path / "run"))), "train_imagenet.py")
    assert expected in line and "data.val_dataset" in line
    assert not (tmp_path / "run" / "log.jsonl").exists()


def test_adopt_refuses_a_folder_that_does_not_match(ffcv_files: dict, demo_root: Path, fewer_classes: Path,
                                                    demo_betons: dict, tmp_path: Path) -> None:
    copy = Path(shutil.copy2(ffcv_files["train"], tmp_path / ffcv_files["train"].name))
    mismatches = {"4 class folders": fewer_classes.parent / "images",
                  "has 7 images but": demo_root / "val"}  # the right classes, 7 images each instead of 24
    for expected, root in mismatches.items():
        line = one_error_line(run_write_datasets("adopt", str(copy), "--classes-from", str(root)), "write_datasets.py")
        assert expected in line and "--classes-from" in line
        assert not sidecar_path(copy).exists()

    ours = Path(shutil.copy2(demo_betons["train"], tmp_path / "ours.beton"))
    shutil.copy2(sidecar_path(demo_betons["train"]), sidecar_path(ours))
    assert "needs no adopting" in one_error_line(run_write_datasets("adopt", str(ours)), "write_datasets.py")
