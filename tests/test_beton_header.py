"""beton_header reads what FFCV's Reader reads (header, fields, metadata, allocation table) from real
files, with numpy alone; train_imagenet.py answers dataset mistakes from it before torch loads."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ffcv_imagenet.beton_format import ConversionError, open_layout
from ffcv_imagenet.remote import is_remote
from ffcv_imagenet.beton_header import (FIELD_DESC_DTYPE, FIELD_KINDS, HEADER_DTYPE, BetonFormatError,
                                        read_alloc_table, read_header, read_layout)
from helpers import REPO, TRAIN, DEMO_RECIPE, cpu_env, tiny_overrides

RECORDS = 5
EXIT_ERROR = 2


class EveryKind:
    """One record per index with a field of every kind FFCV writes (small and deterministic)."""

    def __len__(self) -> int:
        return RECORDS

    def __getitem__(self, index: int) -> tuple:
        import torch

        index = int(index)  # FFCV's writer hands numpy integers, which json cannot write
        pixels = np.full((6 + index, 9, 3), 40 * index, dtype=np.uint8)
        return (float(index) / 3, index * 7 - 2, pixels, np.arange(index + 1, dtype=np.uint8),
                np.full((2, 3), index, dtype=np.float32), {"index": index}, torch.full((4,), index, dtype=torch.int16))


@pytest.fixture(scope="module")
def every_kind(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from ffcv.fields import BytesField, FloatField, IntField, JSONField, NDArrayField, RGBImageField, TorchTensorField
    from ffcv.writer import DatasetWriter

    path = tmp_path_factory.mktemp("every_kind") / "every.beton"
    fields = {"score": FloatField(), "label": IntField(), "image": RGBImageField(write_mode="raw"),
              "blob": BytesField(), "array": NDArrayField(np.dtype("float32"), (2, 3)), "meta": JSONField(),
              "tensor": TorchTensorField(torch.int16, (4,))}
    DatasetWriter(str(path), fields, num_workers=1).from_indexed_dataset(EveryKind())
    return path


def assert_reads_as_ffcv_does(path: Path) -> None:
    from ffcv.reader import Reader
    from ffcv.types import TYPE_ID_HANDLER

    import ffcv_imagenet.yuv420_records  # noqa: F401 - registers our yuv420 field's type id

    reader = Reader(str(path))
    layout = read_layout(path)
    assert layout.header.dtype == reader.header.dtype and layout.header.tobytes() == reader.header.tobytes()
    assert layout.field_names == reader.field_names
    # by type id: FFCV's Reader opens a JSONField as a BytesField (JSONField.from_binary is BytesField's)
    assert [kind.name for kind in layout.kinds] == [TYPE_ID_HANDLER[type_id].__name__
                                                    for type_id in reader.field_descriptors["type_id"]]
    assert layout.metadata.dtype == reader.metadata.dtype and layout.num_samples == int(reader.num_samples)
    assert np.array_equal(layout.metadata, reader.metadata)
    table = read_alloc_table(path)
    assert table.dtype == reader.alloc_table.dtype and np.array_equal(table, reader.alloc_table)


def test_every_field_kind_reads_as_ffcv_reads_it(every_kind: Path) -> None:
    from ffcv.types import TYPE_ID_HANDLER

    import ffcv_imagenet.yuv420_records  # noqa: F401 - registers our yuv420 field's type id with FFCV

    assert {type_id: kind.name for type_id, kind in FIELD_KINDS.items()} == \
        {type_id: handler.__name__ for type_id, handler in TYPE_ID_HANDLER.items() if handler is not None}
    assert_reads_as_ffcv_does(every_kind)
    layout = read_layout(every_kind)
    assert layout.column("label").tolist() == [index * 7 - 2 for index in range(RECORDS)]
    assert layout.column("image")["height"].tolist() == [6 + index for index in range(RECORDS)]


def test_our_conversions_read_as_ffcv_reads_them(demo_betons: dict) -> None:
    """(FFCV's own writer wrote ``every_kind``, as it writes ffcv-imagenet's files.)"""
    for path in demo_betons.values():
        assert_reads_as_ffcv_does(path)


def test_foreign_and_cut_files_are_refused_in_one_line(demo_betons: dict, tmp_path: Path) -> None:
    whole = demo_betons["train"].read_bytes()
    header = read_header(demo_betons["train"])
    cases = {
        "short.beton": (whole[:10], "too short to be a .beton"),
        "foreign.beton": (b"not a beton at all" * 100, "format version"),
        "cut.beton": (whole[:HEADER_DTYPE.itemsize + FIELD_DESC_DTYPE.itemsize * int(header["num_fields"]) + 100],
                      "cut short: its header promises"),
    }
    for name, (content, expected) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(BetonFormatError, match=expected):
            read_layout(tmp_path / name)
        with pytest.raises(ConversionError, match=f"{name} is not a readable .beton: {expected}"):
            open_layout(tmp_path / name)
    assert is_remote("s3://bucket/train.beton") and not is_remote(demo_betons["train"])


def imported_modules(stderr: str) -> set[str]:
    """The modules ``python -X importtime`` reports (one stderr line each, name last)."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


@pytest.fixture(scope="module")
def three_class_val(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ffcv_imagenet.convert.conversion import ConversionSettings, convert_imagefolder
    from ffcv_imagenet.convert.demo_data import make_demo_imagefolder

    folder = tmp_path_factory.mktemp("three_classes")
    other = make_demo_imagefolder(folder / "images", num_classes=3, train_per_class=1, val_per_class=2, seed=1)
    val = folder / "val.beton"
    convert_imagefolder(other / "val", val, ConversionSettings(max_resolution=32, num_workers=1), progress=False)
    return val


@pytest.mark.parametrize("case", ["batch larger than the shard", "val classes differ"])
def test_dataset_mistakes_answer_before_torch_loads(case: str, demo_betons: dict, three_class_val: Path,
                                                    tmp_path: Path) -> None:
    changes, expected = {
        "batch larger than the shard": ({"training.batch_size": 1000}, "no full batch per rank"),
        "val classes differ": ({"data.val_dataset": three_class_val}, "its classes differ"),
    }[case]
    command = [sys.executable, "-X", "importtime", str(TRAIN), "--config", str(DEMO_RECIPE),
               *tiny_overrides(demo_betons, tmp_path / "run", **changes)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO, env=cpu_env())
    modules = imported_modules(result.stderr)
    lines = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert result.returncode == EXIT_ERROR, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("train_imagenet.py: error: ") and expected in lines[0], lines
    assert "ffcv_imagenet.preflight" in modules and "numpy" in modules  # the reader saw these imports
    assert not {name for name in modules if name.split(".")[0] in ("torch", "ffcv", "numba")}
    assert not (tmp_path / "run").exists()
