"""A ``.beton``'s header, field descriptors and metadata table, read with numpy alone.

FFCV's layout (``ffcv.types``, ``ffcv.reader.Reader``): a header, one descriptor per field, then
one metadata row per record (each field's metadata side by side, C-aligned), the records' data,
and the allocation table at ``alloc_table_ptr``. Reading these needs neither FFCV nor torch
(importing FFCV loads both, seconds), so checks of record counts, field kinds and labels answer
before either loads. A test compares every value read here with FFCV's Reader on real files.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

VERSION = 2  # ffcv.types.CURRENT_VERSION: the only version FFCV's Reader opens
NAME_BYTES = 16  # a field name's room in its descriptor, null-padded

HEADER_DTYPE = np.dtype([("version", "<u2"), ("num_fields", "<u2"), ("page_size", "<u4"),
                         ("num_samples", "<u8"), ("alloc_table_ptr", "<u8")], align=True)
FIELD_DESC_DTYPE = np.dtype([("type_id", "<u1"), ("name", ("<u1", NAME_BYTES)), ("arguments", ("<u1", (1024,)))],
                            align=True)
ALLOC_TABLE_DTYPE = np.dtype([("sample_id", "<u8"), ("ptr", "<u8"), ("size", "<u8")])


class FieldKind(NamedTuple):
    """A field type as a file names it: FFCV's class name, and the metadata each record keeps for it."""

    name: str
    metadata: np.dtype


_BYTES_METADATA = np.dtype([("ptr", "<u8"), ("size", "<u8")])
# ffcv.types.TYPE_ID_HANDLER, each handler's metadata_type (unaligned, as FFCV declares them);
# a new field kind is one more entry.
YUV420_TYPE_ID = 89  # our YUV 4:2:0 image field (yuv420_records); ord("Y"), free in FFCV's table (0-6, 255)
_IMAGE_METADATA = np.dtype([("mode", "<u1"), ("width", "<u2"), ("height", "<u2"), ("data_ptr", "<u8")])
FIELD_KINDS: dict[int, FieldKind] = {
    0: FieldKind("FloatField", np.dtype("<f8")),
    1: FieldKind("IntField", np.dtype("<i8")),
    2: FieldKind("RGBImageField", _IMAGE_METADATA),
    3: FieldKind("BytesField", _BYTES_METADATA),
    4: FieldKind("NDArrayField", np.dtype("<u8")),
    5: FieldKind("JSONField", _BYTES_METADATA),
    6: FieldKind("TorchTensorField", np.dtype("<u8")),
    YUV420_TYPE_ID: FieldKind("YUV420ImageField", _IMAGE_METADATA),
}


class BetonFormatError(ValueError):
    """The file is not a .beton this reader understands; the message says why (the caller names the file)."""


@dataclass(frozen=True)
class BetonLayout:
    """What the front of a .beton holds: its header, fields (in file order) and metadata table."""

    header: np.void
    field_names: list[str]
    kinds: list[FieldKind]
    metadata: np.ndarray  # one row per record; field i's metadata in column f"f{i}", as in FFCV's Reader

    @property
    def num_samples(self) -> int:
        return int(self.header["num_samples"])

    def kind(self, field: str) -> FieldKind:
        return self.kinds[self.field_names.index(field)]

    def column(self, field: str) -> np.ndarray:
        return self.metadata[f"f{self.field_names.index(field)}"]


def read_header(path: str | Path) -> np.void:
    """The header (version, num_fields, page_size, num_samples, alloc_table_ptr)."""
    header = np.fromfile(path, dtype=HEADER_DTYPE, count=1)
    if len(header) != 1:
        raise BetonFormatError("too short to be a .beton")
    return header[0]


def read_field_descriptors(path: str | Path, header: np.void | None = None) -> np.ndarray:
    """One descriptor (type_id, name, arguments) per field, in file order."""
    count = int((read_header(path) if header is None else header)["num_fields"])
    descriptors = np.fromfile(path, dtype=FIELD_DESC_DTYPE, count=count, offset=HEADER_DTYPE.itemsize)
    if len(descriptors) != count:
        raise BetonFormatError("cut short in its field descriptors")
    return descriptors


def field_name(descriptor: np.void) -> str:
    """A descriptor's name: ASCII up to its first null byte (ffcv.utils.decode_null_terminated_string)."""
    return descriptor["name"].tobytes().decode("ascii").split("\x00")[0]


def read_layout(path: str | Path) -> BetonLayout:
    """Header, fields and metadata table of a local .beton, or BetonFormatError saying what is wrong."""
    header = read_header(path)
    if int(header["version"]) != VERSION:
        raise BetonFormatError(f"format version {int(header['version'])}; FFCV reads version {VERSION}")
    descriptors = read_field_descriptors(path, header)
    names = [field_name(descriptor) for descriptor in descriptors]
    kinds = field_kinds(descriptors)
    row = metadata_row(kinds)
    count = int(header["num_samples"])
    metadata = np.fromfile(path, dtype=row, count=count, offset=HEADER_DTYPE.itemsize + descriptors.nbytes)
    if len(metadata) != count:
        raise BetonFormatError(f"cut short: its header promises {count} records, its metadata table holds "
                               f"{len(metadata)}")
    return BetonLayout(header, names, kinds, metadata)


def field_kinds(descriptors: np.ndarray) -> list[FieldKind]:
    """Each field's kind, in file order, or BetonFormatError for a type id unknown here."""
    unknown = {field_name(descriptor): int(descriptor["type_id"]) for descriptor in descriptors
               if int(descriptor["type_id"]) not in FIELD_KINDS}
    if unknown:
        raise BetonFormatError(f"field(s) of a type unknown here (type ids {unknown})")
    return [FIELD_KINDS[int(type_id)] for type_id in descriptors["type_id"]]


def metadata_row(kinds: list[FieldKind]) -> np.dtype:
    """One record's row of the metadata table, as ffcv.types.get_metadata_type builds it."""
    return np.dtype([("", kind.metadata) for kind in kinds], align=True)


def read_alloc_table(path: str | Path, header: np.void | None = None) -> np.ndarray:
    """One (sample_id, ptr, size) row per stored allocation: where record data lives in the file."""
    offset = int((read_header(path) if header is None else header)["alloc_table_ptr"])
    return np.fromfile(path, dtype=ALLOC_TABLE_DTYPE, offset=offset)
