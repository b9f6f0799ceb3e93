"""Which training set a checkpoint was made on, so that a resume on another one is refused.

A checkpoint's position (an epoch and a sample in its global order) means other images in another
file: the run would go on silently on different data. The identity of a ``.beton`` is its size and
hashes of the parts that describe its records, which preflight reads anyway: the header and field
descriptors, the metadata table (labels, image sizes, where each record lies) and the allocation
table. A copy of the file on another disk, or the same object read from a bucket through its local
stand-in (``remote_cache``), has the same identity; a re-conversion, another subset or a relabelled
file has another. Modification times are left out (a copy or a restore from backup changes them),
and so are the record bytes (hashing them would read the whole dataset at every start).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from .beton_header import HEADER_DTYPE, field_kinds, metadata_row, read_field_descriptors, read_header
from .config import ConfigError

CHUNK = 2 ** 24  # bytes hashed at a time
PARTS = {"fields": "header and field descriptors", "metadata": "metadata table (labels, image sizes, record places)",
         "allocations": "allocation table (where record bytes lie)"}


def _hash_range(handle: Any, start: int, end: int) -> str:
    digest = hashlib.sha256()
    handle.seek(start)
    left = end - start
    while left > 0:
        chunk = handle.read(min(CHUNK, left))
        if not chunk:
            break
        digest.update(chunk)
        left -= len(chunk)
    return digest.hexdigest()[:32]


def dataset_identity(path: str | Path) -> dict[str, Any]:
    """{"size": bytes, "fields", "metadata", "allocations": hashes} of a .beton preflight has checked
    (or of a remote dataset's stand-in, which holds those parts of the object)."""
    header = read_header(path)
    descriptors = read_field_descriptors(path, header)
    fields_end = HEADER_DTYPE.itemsize + descriptors.nbytes
    metadata_end = fields_end + int(header["num_samples"]) * metadata_row(field_kinds(descriptors)).itemsize
    size = Path(path).stat().st_size
    with open(path, "rb") as handle:
        return {"size": size, "fields": _hash_range(handle, 0, fields_end),
                "metadata": _hash_range(handle, fields_end, metadata_end),
                "allocations": _hash_range(handle, int(header["alloc_table_ptr"]), size)}


def identity_change(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    """What differs between two identities, in words; None when they are the same dataset."""
    if saved["size"] != current["size"]:
        return f"its size changed: {saved['size']} -> {current['size']} bytes"
    changed = [words for part, words in PARTS.items() if saved.get(part) != current.get(part)]
    if not changed:
        return None
    return f"same size, but its {' and its '.join(changed)} {'differs' if len(changed) == 1 else 'differ'}"


def check_same_train_dataset(saved: dict[str, Any] | None, current: dict[str, Any], dataset: str,
                             checkpoint: str | Path) -> None:
    """Refuse, in one line naming the file and what changed, to resume ``checkpoint`` (whose recorded
    identity is ``saved``; None in a checkpoint from before identities: allowed, as it always was) on
    a training set whose identity is ``current``."""
    change = None if saved is None else identity_change(saved, current)
    if change is not None:
        raise ConfigError(f"data.train_dataset: {dataset} is not the training set checkpoint {checkpoint} was "
                          f"made on ({change}); resume with that file (a copy of it anywhere will do), or "
                          "start the run in another logging.folder")
