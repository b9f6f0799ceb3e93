"""The ``.beton`` format as this project writes it: FFCV's file plus two files beside it.

- ``NAME.beton``: FFCV's records (fields ``image``, ``label``), its header and allocation table;
- ``NAME.beton.json``: the sidecar (class list, counts, conversion settings);
- ``NAME.beton.skipped``: one ``path<TAB>reason`` line per input file left out;
- ``NAME.beton.index``: one ``path<TAB>label<TAB>kept|decoded`` line per record, in record order.

Everything that reads datasets (trainer, profiler, ``inspect``) opens them here,
with one-line errors for a missing, foreign or mismatched file. FFCV is
imported inside the functions: it pulls in torch and numba (about 4 s).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ffcv.reader import Reader

EXPECTED_FIELDS = ("image", "label")
KEPT, DECODED = "kept", "decoded"  # the index's third column: source JPEG bytes kept, or decoded and stored


class ConversionError(RuntimeError):
    """A problem with the input or output, reported to the user as one line."""


# ---------------------------------------------------------------- the files beside it
def sidecar_path(beton: str | Path) -> Path:
    """``train.beton`` -> ``train.beton.json``."""
    beton = Path(beton)
    return beton.with_name(beton.name + ".json")


def skipped_report_path(beton: str | Path) -> Path:
    """``train.beton`` -> ``train.beton.skipped``: one ``path<TAB>reason`` line per file left out."""
    beton = Path(beton)
    return beton.with_name(beton.name + ".skipped")


def index_path(beton: str | Path) -> Path:
    """``train.beton`` -> ``train.beton.index``: one ``path<TAB>label<TAB>how`` line per record, in record order."""
    beton = Path(beton)
    return beton.with_name(beton.name + ".index")


def read_index(beton: str | Path) -> list[tuple[str, int, bool]]:
    """(source path, label, source bytes kept) per record of a ``.beton``, from its ``.index``."""
    path = index_path(beton)
    try:
        rows = [line.split("\t") for line in path.read_text().splitlines()]
        return [(source, int(label), how == KEPT) for source, label, how in rows]
    except FileNotFoundError:
        raise ConversionError(f"{path} is missing: convert again to get the per-record index") from None
    except (OSError, ValueError) as err:
        raise ConversionError(f"{path} is not a readable record index: {type(err).__name__}: {err}") from None



def load_sidecar(beton_or_json: str | Path) -> dict:
    """The sidecar of a ``.beton`` (either path may be given), checked against the ``.beton`` when present."""
    path = Path(beton_or_json)
    if path.suffix != ".json":
        path = sidecar_path(path)
    try:
        sidecar = json.loads(path.read_text())
        classes, count = list(sidecar["classes"]), int(sidecar["num_images"])
    except FileNotFoundError:
        raise ConversionError(f"{path} is missing: convert with write_datasets.py, which writes it beside "
                              "the .beton") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConversionError(f"{path} is not a readable sidecar: {type(err).__name__}: {err}") from None
    beton = path.with_name(path.name[: -len(".json")])
    if beton.is_file() and _record_count(beton) != count:
        raise ConversionError(f"{path} describes {count} images but {beton} holds {_record_count(beton)}: "
                              "they come from different conversions; convert again")
    if not classes:
        raise ConversionError(f"{path} has an empty class list")
    return sidecar


def _record_count(beton: Path) -> int:
    try:
        return int(read_header(beton)["num_samples"])
    except (OSError, ValueError) as err:
        raise ConversionError(f"{beton} is not a readable .beton: {err}") from None


def load_class_names(beton: str | Path) -> list[str]:
    """Index -> class folder name, as recorded when the ``.beton`` was written."""
    return list(load_sidecar(beton)["classes"])


# ---------------------------------------------------------------- the file itself
def read_header(path: str | Path) -> np.void:
    """The .beton header (version, num_samples, alloc_table_ptr, ...), read without FFCV's Reader."""
    from ffcv.types import HeaderType

    header = np.fromfile(path, dtype=HeaderType, count=1)
    if len(header) != 1:
        raise ValueError(f"{path} is too short to be a .beton")
    return header[0]


def stored_bytes(path: str | Path) -> int:
    """Bytes of record data (images) in a .beton: what a loader reads, page padding excluded."""
    from ffcv.types import ALLOC_TABLE_TYPE

    table = np.fromfile(path, dtype=ALLOC_TABLE_TYPE, offset=int(read_header(path)["alloc_table_ptr"]))
    return int(table["size"].sum())


def open_beton(path: str | Path) -> Reader:
    """FFCV's reader, with one-line errors for a missing, corrupt or foreign file."""
    from ffcv.reader import Reader

    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path} does not exist")
    try:
        reader = Reader(str(path))
    except Exception as err:  # FFCV raises assorted types on a foreign or truncated file
        raise ConversionError(f"{path} is not a readable .beton: {type(err).__name__}: {err}") from None
    missing = [name for name in EXPECTED_FIELDS if name not in reader.field_names]
    if missing:
        raise ConversionError(f"{path} lacks the field(s) {missing}: it has {reader.field_names}; "
                              "write it with write_datasets.py")
    return reader


def image_metadata(reader: Reader) -> np.ndarray:
    return reader.metadata[f"f{reader.field_names.index('image')}"]


def labels(reader: Reader) -> np.ndarray:
    return np.asarray(reader.metadata[f"f{reader.field_names.index('label')}"]).astype(np.int64)


def record_bytes(reader: Reader, index: int) -> np.ndarray:
    """The stored bytes of record ``index``'s image: a JPEG file's bytes, or raw RGB pixels."""
    size = int(reader.alloc_table["size"][reader.alloc_table["sample_id"] == index].sum())
    offset = int(image_metadata(reader)[index]["data_ptr"])
    return np.fromfile(reader.file_name, dtype=np.uint8, count=size, offset=offset)
