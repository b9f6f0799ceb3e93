"""Record order: a train set is written in a seeded random permutation, val in folder order, and the
``.index`` keeps every record's label, source path and pixels matched (decoded through FFCV's Loader)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ffcv.fields.basics import IntDecoder
from ffcv.fields.rgb_image import SimpleRGBImageDecoder
from ffcv.loader import Loader, OrderOption
from PIL import Image

from ffcv_imagenet.convert.conversion import (ConversionError, ConversionSettings, convert_imagefolder, read_index,
                                      sidecar_path)
from ffcv_imagenet.convert.inspection import distinct_classes_per_window, labels, open_beton

CLASSES = {"ant": 7, "bee": 5, "cat": 6, "dog": 6}
SIZE = (20, 28)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PNG files of one size (so FFCV's SimpleRGBImageDecoder reads them), each of its own colours."""
    root = tmp_path_factory.mktemp("order") / "tree"
    rng = np.random.default_rng(0)
    for name, count in CLASSES.items():
        (root / name).mkdir(parents=True)
        for k in range(count):
            Image.fromarray(rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)).save(root / name / f"{k:02d}.png")
    return root


def convert(tree: Path, out: Path, class_map: Path | None = None, **settings: object) -> list[tuple[str, int, bool]]:
    convert_imagefolder(tree, out, ConversionSettings(write_mode="raw", num_workers=2, **settings),
                        class_map=class_map, progress=False)
    return read_index(out)


def folder_order(tree: Path) -> list[tuple[str, int]]:
    return [(str(path), label) for label, name in enumerate(sorted(CLASSES))
            for path in sorted((tree / name).iterdir())]


def test_shuffled_is_a_seeded_permutation_of_every_record(tree: Path, tmp_path: Path) -> None:
    orders = {name: [row[:2] for row in convert(tree, tmp_path / f"{name}.beton", seed=seed)]
              for name, seed in (("first", 3), ("again", 3), ("other", 4))}
    folder = folder_order(tree)
    assert sorted(orders["first"]) == sorted(folder) and len(orders["first"]) == len(folder)
    assert orders["first"] == orders["again"]
    assert orders["first"] != orders["other"] and orders["first"] != folder
    assert json.loads(sidecar_path(tmp_path / "first.beton").read_text())["record_order"] == "shuffled"
    folder_rows = convert(tree, tmp_path / "folder.beton", record_order="folder")
    assert [row[:2] for row in folder_rows] == folder


def test_label_path_and_pixels_stay_matched_record_by_record(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "train.beton"
    rows = convert(tree, out, seed=1)
    loader = Loader(str(out), batch_size=len(rows), num_workers=1, order=OrderOption.SEQUENTIAL,
                    pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]})
    images, label_batch = next(iter(loader))
    assert np.asarray(label_batch[:, 0]).tolist() == [label for _, label, _ in rows]
    for image, (path, label, _) in zip(np.asarray(images), rows):
        assert sorted(CLASSES)[label] == Path(path).parent.name
        np.testing.assert_array_equal(image, np.asarray(Image.open(path).convert("RGB")))


def test_val_with_a_class_map_keeps_folder_order(tree: Path, tmp_path: Path) -> None:
    convert(tree, tmp_path / "train.beton")
    rows = convert(tree, tmp_path / "val.beton", class_map=tmp_path / "train.beton")
    assert [row[:2] for row in rows] == folder_order(tree)
    assert json.loads(sidecar_path(tmp_path / "val.beton").read_text())["record_order"] == "folder"


def test_shuffled_pages_hold_many_classes(tree: Path, tmp_path: Path) -> None:
    counts = {}
    for order in ("shuffled", "folder"):
        convert(tree, tmp_path / f"{order}.beton", record_order=order)
        counts[order] = distinct_classes_per_window(labels(open_beton(tmp_path / f"{order}.beton")), 6)
    # 24 records, windows of 6: folder order holds 1-2 classes per window, a shuffled file about 3.5
    assert counts["folder"] < 2 < counts["shuffled"]


def test_unknown_order_and_missing_index_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="record order"):
        ConversionSettings(record_order="sorted")
    with pytest.raises(ConversionError, match="index is missing"):
        read_index(tmp_path / "x.beton")
