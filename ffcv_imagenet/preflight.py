"""Checks before any work, shared by training, ``--evaluate`` and the profiler.

Each single value was checked against its declaration when the recipe was
loaded (``config``); what is left are the rules between values, and between
the recipe and the world it runs in (the datasets, the ranks, the device).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from . import schedule
from .beton_format import ConversionError, load_class_names, open_beton
from .config import SECTIONS, Config, ConfigError, check_section
from .distributed import DistContext
from .tensorboard_log import check_tensorboard


@dataclass(frozen=True)
class Datasets:
    train_path: Path
    val_path: Path
    train_size: int
    val_size: int
    classes: list[str]


def check_datasets(config: Config) -> Datasets:
    """Both .beton files readable, with image/label fields, and the same class list."""
    paths = {"data.train_dataset": config.data.train_dataset, "data.val_dataset": config.data.val_dataset}
    sizes, class_lists = {}, {}
    for key, value in paths.items():
        if not value:
            raise ConfigError(f"{key}: no dataset given (a .beton from write_datasets.py)")
        try:
            sizes[key] = open_beton(value).num_samples
            class_lists[key] = load_class_names(value)
        except ConversionError as err:
            raise ConfigError(f"{key}: {err}") from None
    if class_lists["data.train_dataset"] != class_lists["data.val_dataset"]:
        raise ConfigError("data.val_dataset: its classes differ from the train set's; convert val with "
                          "--class-map TRAIN.beton (write_datasets.py does this in its imagenet command)")
    return Datasets(Path(paths["data.train_dataset"]), Path(paths["data.val_dataset"]),
                    sizes["data.train_dataset"], sizes["data.val_dataset"], class_lists["data.train_dataset"])


def check_run_settings(config: Config, datasets: Datasets, world_size: int, device: torch.device) -> None:
    """Every rule between recipe values, and between the recipe and the datasets, ranks and device."""
    for name in SECTIONS:  # a Config built in code has not met its declarations yet
        check_section(name, getattr(config, name))
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
    if training.precision == "fp16" and device.type != "cuda":
        raise ConfigError("training.precision: fp16 needs a GPU; use bf16 or fp32 on CPU")
    if config.model.num_classes not in (0, len(datasets.classes)):
        raise ConfigError(f"model.num_classes: {config.model.num_classes}, but the datasets have "
                          f"{len(datasets.classes)} classes (0 takes the datasets' count)")
    if training.focal_alpha and len(training.focal_alpha) != len(datasets.classes):
        raise ConfigError(f"training.focal_alpha: {len(training.focal_alpha)} weights, but the datasets have "
                          f"{len(datasets.classes)} classes (one weight per class, or [] for none)")
    schedule.validate(config.resolution, training.epochs)
    check_tensorboard(config.logging)


def preflight(config: Config, ctx: DistContext) -> Datasets:
    """The datasets, once every setting is known to fit them, this launch and each other."""
    datasets = check_datasets(config)
    check_run_settings(config, datasets, ctx.world_size, ctx.device)
    return datasets
