"""Checks before any work, shared by training, ``--evaluate`` and the profiler.

Each single value was checked against its declaration when the recipe was
loaded (``config``); what is left are the rules between values, and between
the recipe and the world it runs in (the datasets, the ranks, the device).
The module loads no torch: ``train_imagenet.py`` runs the dataset checks
(``check_before_torch``) before the seconds torch and FFCV take to load.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import schedule
from .beton_format import (DEFAULT_FIELDS, ConversionError, Fields, checked_labels, class_names, open_layout,
                           recorded_fields, sidecar_path)
from .config import SECTIONS, Config, ConfigError, DataConfig, check_section
from .remote import is_remote
from .remote_cache import CacheSettings, local_view
from .tensorboard_log import check_tensorboard

if TYPE_CHECKING:
    import torch

    from .distributed import DistContext

CLASS_NAMES_SHOWN = 10  # in the run's opening lines (dataset_line); log.jsonl's start record has them all


@dataclass(frozen=True)
class Datasets:
    train_path: Path
    val_path: Path
    train_size: int
    val_size: int
    classes: list[str]
    fields: Fields = DEFAULT_FIELDS
    names_from: str = ""  # where the class names come from (a sidecar, or the label numbers)
    val_fields: Fields = DEFAULT_FIELDS


@dataclass(frozen=True)
class DatasetFile:
    """One dataset as preflight sees it: size, class names (sidecar or numbers), labels' top, fields."""

    size: int
    classes: list[str]
    names_from: str
    has_sidecar: bool
    top_label: int
    fields: Fields = DEFAULT_FIELDS
    path: str = ""  # the file read: the recipe's path, or a remote URL's local stand-in (remote_cache)


def read_dataset(key: str, value: str, data: DataConfig) -> DatasetFile:
    """One recipe dataset key, opened with its fields (``dataset_fields``); errors name the key."""
    if not value:
        raise ConfigError(f"{key}: no dataset given (a .beton from write_datasets.py or FFCV's DatasetWriter)")
    try:
        value = local_view(value, CacheSettings.of(data))
        fields = dataset_fields(data, value)
        label_values = dataset_labels(value, fields)
        names, names_from = class_names(value, label_values)
    except ConversionError as err:
        raise ConfigError(f"{key}: {err}") from None
    return DatasetFile(label_values.size, names, names_from, sidecar_path(value).is_file(),
                       int(label_values.max()), fields, value)


def dataset_labels(path: str, fields: Fields) -> np.ndarray:
    """Every record's label, checked, from the file's metadata table alone (no FFCV, no torch); a remote
    dataset is read from its local stand-in (``remote_cache.local_view``), which holds the real table."""
    layout = open_layout(path, fields)
    return checked_labels(path, layout.column(fields.label).astype(np.int64), fields)


def check_class_agreement(train: DatasetFile, val: DatasetFile) -> None:
    """Both sidecars: the same class list. Otherwise the same class count, val's labels within train's."""
    if train.has_sidecar and val.has_sidecar:
        if train.classes != val.classes:
            raise ConfigError("data.val_dataset: its classes differ from the train set's; convert val with "
                              "--class-map TRAIN.beton (write_datasets.py does this in its imagenet command)")
        return
    if val.top_label >= len(train.classes):
        raise ConfigError(f"data.val_dataset: its labels go up to {val.top_label}, outside the train set's "
                          f"{len(train.classes)} classes (0-{len(train.classes) - 1}); write val with train's classes")
    if len(val.classes) != len(train.classes):
        raise ConfigError(f"data.val_dataset: {len(val.classes)} classes ({val.names_from}), but the train set "
                          f"has {len(train.classes)}; the class counts must agree")


def dataset_fields(data: DataConfig, path: str | Path) -> Fields:
    """The recipe's image/label field names; where it leaves both at their defaults, those the file's
    sidecar records (a file adopted with --image-field/--label-field names them otherwise)."""
    asked = Fields.of(data)
    if asked != DEFAULT_FIELDS:
        return asked
    return recorded_fields(path) or asked


def check_datasets(config: Config) -> Datasets:
    """Both .beton files readable, with their image/label fields (``dataset_fields``), and classes that agree."""
    data = config.data
    train = read_dataset("data.train_dataset", data.train_dataset, data)
    val = read_dataset("data.val_dataset", data.val_dataset, data)
    check_class_agreement(train, val)
    named = train if train.has_sidecar or not val.has_sidecar else val  # names from a sidecar where there is one
    return Datasets(Path(train.path), Path(val.path), train.size, val.size,
                    named.classes, train.fields, named.names_from, val.fields)


def check_precision(config: Config, device: torch.device) -> None:
    if config.training.precision == "fp16" and device.type != "cuda":
        raise ConfigError("training.precision: fp16 needs a GPU; use bf16 or fp32 on CPU")


def check_lr_range(config: Config) -> None:
    """The LR range test's sweep goes up: from lr_range.start to a larger lr_range.end."""
    if config.lr_range.end <= config.lr_range.start:
        raise ConfigError(f"lr_range.end: {config.lr_range.end} must be above lr_range.start "
                          f"({config.lr_range.start})")


def check_run_settings(config: Config, datasets: Datasets, world_size: int, device: torch.device) -> None:
    """Every rule between recipe values, and between the recipe and the datasets, ranks and device."""
    for name in SECTIONS:  # a Config built in code has not met its declarations yet
        check_section(name, getattr(config, name))
    check_dataset_fit(config, datasets, world_size)
    check_precision(config, device)
    schedule.validate(config.resolution, config.training.epochs)
    check_tensorboard(config.logging)


def check_dataset_fit(config: Config, datasets: Datasets, world_size: int) -> None:
    """The recipe against the datasets' sizes and classes, over ``world_size`` ranks."""
    training = config.training
    if datasets.train_size // world_size < training.batch_size:
        raise ConfigError(f"training.batch_size: {training.batch_size} per rank x {world_size} ranks is more than "
                          f"the {datasets.train_size} training images; no full batch per rank")
    update = training.batch_size * world_size * training.accumulate
    if datasets.train_size < update:
        raise ConfigError(f"training.accumulate: {training.accumulate} micro-steps of {training.batch_size} x "
                          f"{world_size} ranks need {update} images per update; the train set has "
                          f"{datasets.train_size}")
    if datasets.val_size < world_size:
        raise ConfigError(f"data.val_dataset: {datasets.val_size} images cannot be shared by {world_size} ranks")
    if config.model.num_classes not in (0, len(datasets.classes)):
        raise ConfigError(f"model.num_classes: {config.model.num_classes}, but the datasets have "
                          f"{len(datasets.classes)} classes (0 takes the datasets' count)")
    if training.focal_alpha and len(training.focal_alpha) != len(datasets.classes):
        raise ConfigError(f"training.focal_alpha: {len(training.focal_alpha)} weights, but the datasets have "
                          f"{len(datasets.classes)} classes (one weight per class, or [] for none)")


def check_before_torch(config: Config, world_size: int) -> Datasets | None:
    """The dataset checks (files, fields, labels, classes, and the recipe against them), from the files'
    headers and metadata alone, so that a mistake answers before torch and FFCV load; the datasets read,
    for ``preflight`` to take instead of reading them again. Remote datasets are left to ``preflight``,
    which reads them once FFCV is loaded (None)."""
    if any(is_remote(path) for path in (config.data.train_dataset, config.data.val_dataset)):
        return None
    datasets = check_datasets(config)
    check_dataset_fit(config, datasets, world_size)
    return datasets


def preflight(config: Config, ctx: DistContext, datasets: Datasets | None = None) -> Datasets:
    """The datasets, once every setting is known to fit them, this launch and each other; ``datasets``:
    those ``check_before_torch`` already read (None: read them now)."""
    datasets = datasets or check_datasets(config)
    check_run_settings(config, datasets, ctx.world_size, ctx.device)
    return datasets


def dataset_line(datasets: Datasets) -> str:
    """Which files, how many images, and the classes (the first few names, and where they come from)."""
    hidden = len(datasets.classes) - CLASS_NAMES_SHOWN
    shown = ", ".join(datasets.classes[:CLASS_NAMES_SHOWN]) + (f", ... ({hidden} more)" if hidden > 0 else "")
    return (f"data: train {datasets.train_path} ({datasets.train_size} images), val {datasets.val_path} "
            f"({datasets.val_size} images); {len(datasets.classes)} classes: {shown} ({datasets.names_from})")
