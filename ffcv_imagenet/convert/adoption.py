"""``write_datasets.py adopt``: a sidecar for a .beton written elsewhere (ffcv-imagenet's ``write_imagenet.py``).

The .beton itself is only read. The class list comes from the ImageFolder root
the file was written from (``--classes-from``): its sorted class folders are
torchvision ImageFolder's label order, which is what ffcv-imagenet wrote; the
folder is checked against the file (class count, then images per class, counted
the way ImageFolder counts them). Without a folder the classes are named by number.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..beton_format import (DEFAULT_FIELDS, ConversionError, Fields, label_range, load_sidecar, open_beton,
                           sidecar_path)
from ..fileio import atomic_write_text

ADOPTED = "adopted"  # the sidecar key that marks a sidecar written by adopt (which adopt may replace)


def imagefolder_counts(root: Path) -> tuple[list[str], np.ndarray]:
    """(sorted class folders, images per class) exactly as torchvision's ImageFolder finds them."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    try:
        classes, class_to_idx = find_classes(str(root))
        samples = make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    except (FileNotFoundError, NotADirectoryError) as err:
        raise ConversionError(f"--classes-from: {root}: {err}") from None
    return classes, np.bincount([label for _, label in samples], minlength=len(classes))


def check_against_folder(beton: Path, counts: np.ndarray, root: Path, folder_counts: np.ndarray,
                         classes: list[str]) -> None:
    """The folder must have the file's class count and, class by class, its record count."""
    if len(classes) != len(counts):
        raise ConversionError(f"--classes-from: {root} has {len(classes)} class folders but the labels of {beton} "
                              f"span {len(counts)} classes (0-{len(counts) - 1}): not the folder it was written from")
    differ = np.flatnonzero(folder_counts != counts)
    if differ.size:
        first = int(differ[0])
        raise ConversionError(f"--classes-from: {root}/{classes[first]} (label {first}) has {folder_counts[first]} "
                              f"images but {beton} holds {counts[first]} records of that label ({differ.size} "
                              "class(es) differ): not the folder it was written from")


def check_replaceable(beton: Path) -> None:
    """An existing sidecar is replaced only if adopt wrote it: a conversion's own knows more."""
    path = sidecar_path(beton)
    if path.is_file() and not load_sidecar(beton).get(ADOPTED):
        raise ConversionError(f"{path} already exists, written by a conversion: {beton} needs no adopting")


def adopt(beton: str | Path, classes_from: str | Path | None = None, fields: Fields = DEFAULT_FIELDS) -> dict:
    """Write ``beton``'s sidecar (atomically) from its labels and, if given, its ImageFolder root; return it."""
    beton = Path(beton)
    reader = open_beton(beton, fields)
    check_replaceable(beton)
    label_values = label_range(beton, reader, fields)
    counts = np.bincount(label_values)
    if classes_from is None:
        classes = [str(label) for label in range(len(counts))]
    else:
        classes, folder_counts = imagefolder_counts(Path(classes_from))
        check_against_folder(beton, counts, Path(classes_from), folder_counts, classes)
    sidecar = {
        "classes": classes,
        "num_images": int(reader.num_samples),
        "images_per_class": counts.tolist(),
        "source_root": str(Path(classes_from).resolve()) if classes_from is not None else None,
        "fields": {fields.image: "RGBImageField", fields.label: "IntField"},
        ADOPTED: True,
    }
    atomic_write_text(sidecar_path(beton), json.dumps(sidecar, indent=1) + "\n")
    return sidecar


def adoption_line(beton: str | Path, classes_from: str | Path | None, sidecar: dict) -> str:
    """The one line ``adopt`` prints: what was written, and that the file itself was not touched."""
    names = f"names from {classes_from}" if classes_from else "named by number"
    return (f"wrote {sidecar_path(Path(beton))}: {sidecar['num_images']} images, {len(sidecar['classes'])} classes "
            f"({names}); {beton} unchanged")
