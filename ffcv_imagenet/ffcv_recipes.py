"""ffcv-imagenet's own config files (rn50_*_epochs.yaml, rn18_*_epochs.yaml), translated to our keys.

Their files are flat YAML keyed by the sections of their ``train_imagenet.py``
(``lr.lr``, ``lr.lr_schedule_type``, ``training.use_blurpool``,
``validation.lr_tta``, ...). Each of their keys either has an equivalent here,
is harmless where we decide it another way (torchrun sets the device and the
addresses), or is refused with one line naming it; none is silently dropped.

Their ``lr.lr`` is the peak for their global batch, ``training.batch_size``
(per GPU) x ``dist.world_size`` (their GPU count, 1 if the file does not say):
we state the LR per 256 images, so it becomes lr x 256 / that global batch.
Keys their file leaves out take our base recipe's defaults.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import LR_REFERENCE_BATCH, SECTIONS, ConfigError, flatten

# Their sections, and keys that only they have: either appears -> the file is theirs.
THEIR_MARKERS = ("lr.lr", "lr.lr_schedule_type", "lr.lr_peak_epoch", "training.bn_wd", "training.use_blurpool",
                 "training.distributed", "training.eval_only", "validation.lr_tta", "dist.world_size",
                 "logging.log_level", "model.pretrained", "data.gpu")
THEIR_WARMUP_START_FACTOR = 1e-4  # their cyclic schedule starts at 1e-4 x lr
THEIR_DEFAULT_WORLD_SIZE = 1  # their dist.world_size default
THEIR_DEFAULT_BATCH = 512  # their training.batch_size default

# Their key -> our key, same meaning and value (booleans as their 1/0).
SAME_MEANING = {
    "data.train_dataset": "data.train_dataset", "data.val_dataset": "data.val_dataset",
    "data.num_workers": "data.num_workers", "model.arch": "model.arch",
    "resolution.min_res": "resolution.min_res", "resolution.max_res": "resolution.max_res",
    "resolution.start_ramp": "resolution.start_ramp", "resolution.end_ramp": "resolution.end_ramp",
    "lr.step_ratio": "lr.step_ratio", "lr.step_length": "lr.step_length", "lr.lr_peak_epoch": "lr.warmup_epochs",
    "training.batch_size": "training.batch_size", "training.optimizer": "training.optimizer",
    "training.momentum": "training.momentum", "training.weight_decay": "training.weight_decay",
    "training.epochs": "training.epochs", "training.label_smoothing": "training.label_smoothing",
    "validation.batch_size": "validation.batch_size", "validation.resolution": "validation.resolution",
}
AS_BOOL = {"data.in_memory": "data.in_memory", "training.use_blurpool": "model.use_blurpool",
           "validation.lr_tta": "validation.flip_tta"}
# Their key -> (the value we already match, why the key needs no equivalent); another value is refused.
HARMLESS = {
    "training.distributed": (None, "torchrun's environment decides distribution here"),
    "dist.address": (None, "torchrun's --master_addr decides it here"),
    "dist.port": (None, "torchrun's --master_port decides it here"),
    "data.gpu": (None, "LOCAL_RANK picks each rank's GPU here"),
    "training.bn_wd": (0, "BatchNorm weights and biases never get weight decay here"),
    "model.pretrained": (0, "training starts from random weights here"),
    "training.eval_only": (0, "evaluate saved weights with --evaluate WEIGHTS"),
}
HANDLED_APART = ("lr.lr", "lr.lr_schedule_type", "dist.world_size", "logging.folder", "logging.log_level")


@dataclass
class Translation:
    values: dict[str, Any] = field(default_factory=dict)  # our dotted keys
    notes: list[str] = field(default_factory=list)  # what was assumed, for the start of the run


def is_ffcv_imagenet(content: dict[str, dict[str, Any]]) -> bool:
    return any(key in THEIR_MARKERS for key in flatten(content))


def _as_bool(dotted: str, value: Any) -> bool:
    if value in (0, 1, True, False):
        return bool(value)
    raise ConfigError(f"{dotted} must be 1/0 or true/false (ffcv-imagenet's meaning): {value!r}")


def _number(dotted: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{dotted} must be a number: {value!r}")
    return value


def _learning_rate(theirs: dict[str, Any], out: Translation) -> None:
    """Their peak LR for their global batch -> ours per 256 images; their schedule -> ours."""
    batch = _number("training.batch_size", theirs.get("training.batch_size", THEIR_DEFAULT_BATCH))
    gpus = _number("dist.world_size", theirs.get("dist.world_size", THEIR_DEFAULT_WORLD_SIZE))
    if "lr.lr" in theirs:
        lr = _number("lr.lr", theirs["lr.lr"])
        out.values["lr.lr_per_256"] = lr * LR_REFERENCE_BATCH / (batch * gpus)
        out.notes.append(f"lr.lr {lr:g} is their peak for a global batch of {batch:g} x dist.world_size "
                         f"{gpus:g} GPUs = {batch * gpus:g}: lr.lr_per_256 {out.values['lr.lr_per_256']:g} "
                         "(scaled by the global batch of this run)")
    kind = theirs.get("lr.lr_schedule_type", "cyclic")
    if kind == "cyclic":  # np.interp([0, peak, epochs], [1e-4 lr, lr, 0]): our linear warm-up and decay
        out.values.update({"lr.schedule": "linear", "lr.warmup_start_factor": THEIR_WARMUP_START_FACTOR,
                           "lr.end_factor": 0.0})
    elif kind == "step":  # step_ratio ** (epoch // step_length), no warm-up
        out.values.update({"lr.schedule": "step", "lr.warmup_epochs": 0.0})
    else:
        raise ConfigError(f"lr.lr_schedule_type must be one of cyclic, step (ffcv-imagenet's choices): {kind!r}")


def _logging(theirs: dict[str, Any], recipe: Path, out: Translation) -> None:
    if "logging.folder" in theirs:  # they log into FOLDER/<uuid>; a run here gets FOLDER/<recipe name>
        out.values["logging.folder"] = str(Path(str(theirs["logging.folder"])) / recipe.stem)
    log_level = theirs.get("logging.log_level", 1)
    if log_level == 0:  # theirs: evaluate only at the end
        out.values["validation.every"] = _number("training.epochs", theirs.get("training.epochs", 1))
    elif log_level not in (1, 2):
        raise ConfigError(f"logging.log_level must be 0, 1 or 2 (ffcv-imagenet's levels): {log_level!r}")


def _one_key(dotted: str, value: Any, out: Translation) -> None:
    section, _, key = dotted.partition(".")
    if dotted in SAME_MEANING:
        out.values[SAME_MEANING[dotted]] = value
    elif dotted in AS_BOOL:
        out.values[AS_BOOL[dotted]] = _as_bool(dotted, value)
    elif dotted in HARMLESS:
        expected, why = HARMLESS[dotted]
        if expected is not None and value != expected:
            raise ConfigError(f"{dotted}: {value!r} has no equivalent here ({why})")
    elif key in SECTIONS.get(section, {}):  # one of our own keys, added to their file
        out.values[dotted] = value
    elif dotted not in HANDLED_APART:
        raise ConfigError(f"{dotted}: an ffcv-imagenet key with no equivalent here; remove it "
                          "(--help-config lists our keys)")


def translate(content: dict[str, dict[str, Any]], recipe: Path) -> Translation:
    """Their file's values as ours (dotted keys), with the assumptions stated in ``notes``."""
    theirs = flatten(content)
    out = Translation(notes=[f"{recipe} is an ffcv-imagenet config: translated to this trainer's keys; "
                             "the keys it leaves out take this trainer's base recipe (--help-config)"])
    for dotted, value in theirs.items():
        _one_key(dotted, value, out)
    _learning_rate(theirs, out)
    _logging(theirs, recipe, out)
    out.values.setdefault("resolution.ramp", "ffcv")
    out.values.setdefault("resolution.fixres_epochs", 0)  # they have no FixRes phase
    return out
