"""The ``.beton`` format as this project writes it: FFCV's file plus the files beside it.

- ``NAME.beton``: FFCV's records (fields ``image``, ``label``), its header and allocation table;
- ``NAME.beton.json``: the sidecar (class list, counts, conversion settings);
- ``NAME.beton.skipped``: one ``path<TAB>reason`` line per input file left out;
- ``NAME.beton.index``: one ``path<TAB>label<TAB>kept|decoded`` line per record, in record order.

Everything that reads datasets (trainer, profiler, ``inspect``, ``adopt``) opens them here,
with one-line errors for a missing, foreign or mismatched file. FFCV is
imported inside the functions: it pulls in torch and numba (seconds). What the front
of a file holds (header, fields, labels) is read without it (``beton_header``,
``open_layout``), so checks of it answer before torch loads.

A file written by FFCV's own DatasetWriter (ffcv-imagenet's ``write_imagenet.py``:
no sidecar, any extension) is read too: its fields are chosen by name (``Fields``),
its class count comes from its labels, which FFCV keeps in the metadata (read
without touching an image), and its class names are the label numbers until
``write_datasets.py adopt`` writes a sidecar for it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .beton_header import (BetonFormatError, BetonLayout, field_name, read_alloc_table, read_field_descriptors,
                           read_header, read_layout)

if TYPE_CHECKING:
    from ffcv.reader import Reader

JPEG_MODE, RAW_MODE = 0, 1  # RGBImageField's metadata codes for a JPEG and a raw record
# FFCV's own table (ffcv.fields.rgb_image.IMAGE_MODES) is a numba typed dict: its first lookup
# compiles, a fraction of a second in every process that does one; this plain copy does not.
IMAGE_MODES = {"jpg": JPEG_MODE, "raw": RAW_MODE}


@dataclass(frozen=True)
class Fields:
    """The names of the image (RGBImageField) and label (IntField) fields; ffcv-imagenet's by default."""

    image: str = "image"
    label: str = "label"

    @classmethod
    def of(cls, data: Any) -> Fields:
        """From the recipe's ``data`` section (its ``image_field`` and ``label_field``)."""
        return cls(data.image_field, data.label_field)


DEFAULT_FIELDS = Fields()
IMAGE_KINDS = ("RGBImageField", "YUV420ImageField")  # the FFCV field classes training decodes as images (by class name)
LABEL_KINDS = ("IntField",)
FIELD_KEYS = "data.image_field / data.label_field"  # where a user names other fields
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
def field_names(path: str | Path) -> list[str]:
    """The names of a .beton's fields, in file order, from its descriptors alone (no metadata read)."""
    return [field_name(descriptor) for descriptor in read_field_descriptors(path)]


def stored_bytes(path: str | Path) -> int:
    """Bytes of record data (images) in a .beton: what a loader reads, page padding excluded."""
    return int(read_alloc_table(path)["size"].sum())


POINTER_COLUMNS = ("data_ptr", "ptr")  # where FFCV's fields keep the address of data stored outside the metadata


def stored_bytes_by_field(reader: Reader) -> dict[str, int]:
    """Bytes of record data per field, for the fields that store it outside the metadata table
    (images, byte strings, arrays: each record's allocation is found by the address its metadata
    holds); fields held whole in the metadata (labels) are absent."""
    stored = {}
    for index, name in enumerate(reader.field_names):
        column = reader.metadata[f"f{index}"]
        pointer = next((key for key in POINTER_COLUMNS if key in (column.dtype.names or ())), None)
        if pointer is not None:
            stored[name] = int(allocation_sizes(reader, column[pointer]).sum())
    return stored


def allocation_sizes(reader: Reader, pointers: np.ndarray) -> np.ndarray:
    """The size of the allocation at each of ``pointers`` (data addresses a metadata column holds)."""
    table = reader.alloc_table
    order = np.argsort(table["ptr"], kind="stable")
    at = np.searchsorted(table["ptr"][order], pointers)
    return table["size"][order][np.minimum(at, len(order) - 1)].astype(np.int64)


def open_beton(path: str | Path, fields: Fields = DEFAULT_FIELDS) -> Reader:
    """FFCV's reader, with one-line errors for a missing, corrupt or foreign file, or one whose
    ``fields`` are absent or of the wrong kind (labels must be integers)."""
    from ffcv.reader import Reader

    from . import yuv420_records  # noqa: F401 - registers the yuv420 field's type id with FFCV's reader

    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path} does not exist")
    try:
        reader = Reader(str(path))
    except Exception as err:  # FFCV raises assorted types on a foreign or truncated file
        raise ConversionError(f"{path} is not a readable .beton: {type(err).__name__}: {err}") from None
    check_fields(path, {name: type(handler).__name__ for name, handler in reader.handlers.items()}, fields)
    return reader


def open_layout(path: str | Path, fields: Fields = DEFAULT_FIELDS) -> BetonLayout:
    """A local file's header, fields and metadata table read without FFCV (so without torch), with
    ``open_beton``'s one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path} does not exist")
    try:
        layout = read_layout(path)
    except (OSError, BetonFormatError) as err:
        raise ConversionError(f"{path} is not a readable .beton: {err}") from None
    check_fields(path, {name: kind.name for name, kind in zip(layout.field_names, layout.kinds)}, fields)
    return layout


def check_fields(path: Path, kinds: dict[str, str], fields: Fields) -> None:
    """The file's fields (name -> FFCV field class name, in file order) hold ``fields``' image and
    label, of the kinds training reads."""
    names = list(kinds)
    missing = [name for name in (fields.image, fields.label) if name not in kinds]
    if missing:
        raise ConversionError(f"{path} lacks the field(s) {missing}: it has {names}; "
                              f"name its image and label fields with {FIELD_KEYS}")
    for name, wanted, what in ((fields.image, IMAGE_KINDS, "an image field (RGB or YUV 4:2:0)"),
                               (fields.label, LABEL_KINDS, "an integer field: labels must be integers")):
        if kinds[name] not in wanted:
            raise ConversionError(f"{path}: field {name!r} is a {kinds[name]}, not {what}; "
                                  f"its fields are {names} ({FIELD_KEYS} choose them)")


def image_metadata(reader: Reader, fields: Fields = DEFAULT_FIELDS) -> np.ndarray:
    return reader.metadata[f"f{reader.field_names.index(fields.image)}"]


def labels(reader: Reader, fields: Fields = DEFAULT_FIELDS) -> np.ndarray:
    """Every record's label, from FFCV's metadata: no image is read."""
    return np.asarray(reader.metadata[f"f{reader.field_names.index(fields.label)}"]).astype(np.int64)


def label_range(path: str | Path, reader: Reader, fields: Fields = DEFAULT_FIELDS) -> np.ndarray:
    """The labels of a non-empty file, refused when negative (a class index never is)."""
    return checked_labels(path, labels(reader, fields), fields)


def checked_labels(path: str | Path, values: np.ndarray, fields: Fields = DEFAULT_FIELDS) -> np.ndarray:
    """``values`` (a file's labels), refused when there are none or some are negative."""
    if values.size == 0:
        raise ConversionError(f"{path} holds no records")
    if values.min() < 0:
        raise ConversionError(f"{path}: field {fields.label!r} holds negative labels (down to {values.min()}): "
                              "not class indices")
    return values


def recorded_fields(beton: str | Path) -> Fields | None:
    """The image and label field names the sidecar records (``convert`` and ``adopt`` write them);
    None without a sidecar, or with one that does not name exactly one of each."""
    path = sidecar_path(beton)
    if not path.is_file():
        return None
    kinds = load_sidecar(path).get("fields", {})
    images = [name for name, kind in kinds.items() if kind in IMAGE_KINDS]
    labels = [name for name, kind in kinds.items() if kind == "IntField"]
    return Fields(images[0], labels[0]) if len(images) == len(labels) == 1 else None


def class_names(path: str | Path, label_values: np.ndarray) -> tuple[list[str], str]:
    """(index -> name, where the names come from): the sidecar's list, or the label numbers without one."""
    path = Path(path)
    if sidecar_path(path).is_file():
        names = load_class_names(path)
        if label_values.max() >= len(names):
            raise ConversionError(f"{path} has labels up to {label_values.max()}, outside the "
                                  f"{len(names)} classes of its sidecar")
        return names, f"names from {sidecar_path(path).name}"
    return ([str(label) for label in range(int(label_values.max()) + 1)],
            f"no {sidecar_path(path).name}: classes named by number; write_datasets.py adopt names them")


def loader_pipelines(path: str | Path, fields: Fields, image: list, label: list) -> dict:
    """FFCV Loader ``pipelines`` yielding (image, label) batches from ``fields``, whatever the file's
    field order, every other field of the file switched off."""
    from ffcv.pipeline import PipelineSpec

    pipelines: dict[str, Any] = {name: None for name in field_names(path)}
    # FFCV yields file fields in file order, then other outputs in the order given; a field
    # name has at most 16 bytes, so these longer output names follow the order given here.
    pipelines["ffcv_imagenet.image"] = PipelineSpec(fields.image, transforms=image)
    pipelines["ffcv_imagenet.label"] = PipelineSpec(fields.label, transforms=label)
    return pipelines


def record_extent(reader: Reader, index: int, fields: Fields = DEFAULT_FIELDS) -> tuple[int, int]:
    """(offset in the file, size) of record ``index``'s image bytes."""
    offset = int(image_metadata(reader, fields)[index]["data_ptr"])
    table = reader.alloc_table  # one allocation per (record, field that stores bytes): this field's starts at offset
    return offset, int(table["size"][(table["sample_id"] == index) & (table["ptr"] == offset)].sum())


def record_bytes(reader: Reader, index: int, fields: Fields = DEFAULT_FIELDS) -> np.ndarray:
    """The stored bytes of record ``index``'s image: a JPEG file's bytes, or raw RGB pixels."""
    offset, size = record_extent(reader, index, fields)
    return np.fromfile(reader.file_name, dtype=np.uint8, count=size, offset=offset)
