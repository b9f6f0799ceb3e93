"""Predictions and embeddings of every image of a .beton (``python -m ffcv_imagenet.export``, whose
command is ``export_cli``); top-1/top-5 recomputed from them without a model is ``export_files``'.

For each resolution, ``DIR/res<R>/`` holds ``probs.npy`` (N x classes), ``embeddings.npy`` (N x 512 for
ResNet-18, 2048 for ResNet-50: the output of the last spatial pooling, the input of ``fc``),
``logits.npy`` with --logits, ``labels.npy`` and ``manifest.json``, rows in .beton record order.
The images are those of evaluation (``Evaluator``'s loader: resize, centre crop of
``validation.crop_ratio``, ``validation.flip_tta`` averaging each image with its mirror).

The arrays are written through ``np.lib.format.open_memmap``: a train-set export never sits in RAM.
Rank 0 creates each file under a hidden ``.NAME.partial`` name, every rank writes the rows of its
own images (r, r+W, ...: the sharding of validation) into it, and rank 0 renames the files and
writes the manifest last, so an interrupted export leaves nothing at the final names and a folder
with a manifest is complete. The ranks share the files, so they must run on one node (or a file
system that keeps concurrent writers' pages coherent).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .beton_format import ConversionError, Fields, load_class_names, open_beton
from .checkpointing import put_trained_weights, read_trained_weights
from .config import Config, ConfigError, DataConfig, to_dict
from .decoders import CorruptRecordError
from .distributed import DistContext, barrier, broadcast_object, init_distributed, shutdown
from .evaluation import Evaluator, view_logits
from .export_files import MANIFEST, partial_path, resolution_folder
from .fileio import atomic_write_text, check_writable_dir
from .loaders import val_indices
from .model import prepare_model
from .preflight import check_precision, dataset_fields
from .remote_cache import CacheSettings, local_view
from .schedule import check_resolutions


@dataclass(frozen=True)
class ExportPlan:
    """What one export writes, known before any work."""

    weights: Path
    dataset: Path
    classes: list[str]
    count: int  # records in the .beton
    embedding_size: int
    logits: bool
    dtype: str  # of the float arrays: float32 | float16

    def shapes(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """array name -> (shape, dtype)."""
        shapes = {"probs": ((self.count, len(self.classes)), self.dtype),
                  "embeddings": ((self.count, self.embedding_size), self.dtype)}
        if self.logits:
            shapes["logits"] = ((self.count, len(self.classes)), self.dtype)
        shapes["labels"] = ((self.count,), "int64")
        return shapes


# ---------------------------------------------------------------- checks before any work
def dataset_classes(dataset: Path, data: DataConfig) -> tuple[list[str], int, Fields]:
    """(class list, record count, image/label fields) of the .beton to export."""
    try:
        return load_class_names(dataset), int(open_beton(dataset).num_samples), dataset_fields(data, dataset)
    except ConversionError as err:
        raise ConfigError(f"--dataset: {err}") from None


def check_class_count(state: dict[str, torch.Tensor], weights: Path, dataset: Path, classes: list[str],
                      config: Config) -> None:
    """The weights' classifier (``state``, read from ``weights``) and the .beton must count the same
    classes (labels index both)."""
    outputs = state["fc.weight"].shape[0] if "fc.weight" in state else None
    for expected, what in ((outputs, f"the weights {weights} classify"),
                           (config.model.num_classes or None, "model.num_classes is")):
        if expected is not None and expected != len(classes):
            raise ConfigError(f"--dataset: {dataset} has {len(classes)} classes but {what} {expected}; "
                              "export a .beton converted with the training set's class list (--class-map)")


# ---------------------------------------------------------------- the model's outputs
class PooledFeatures:
    """Forward hook on ``avgpool``: the embedding of each forward pass (the input of ``fc``)."""

    def __init__(self, model: nn.Module):
        self.captured: list[torch.Tensor] = []
        self.handle = model.avgpool.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self.captured.append(output.flatten(1).float())

    def mean(self) -> torch.Tensor:
        """The average over the batch's views (one, or two with flip TTA), as the logits are averaged:
        ``fc`` is linear, so fc(mean embedding) is the mean logits."""
        views, self.captured = self.captured, []
        return sum(views[1:], views[0]) / len(views)


# ---------------------------------------------------------------- files shared by the ranks
def open_arrays(folder: Path, plan: ExportPlan, ctx: DistContext) -> dict[str, np.memmap]:
    """Rank 0 creates the partial files, then every rank maps them for writing."""
    if ctx.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MANIFEST).unlink(missing_ok=True)  # a folder being rewritten is not a finished export
        for name, (shape, dtype) in plan.shapes().items():
            # Created and unmapped at once: the header and the file's size are on disk for the other ranks.
            np.lib.format.open_memmap(partial_path(folder / f"{name}.npy"), mode="w+", dtype=dtype, shape=shape)
    barrier(ctx)
    return {name: np.lib.format.open_memmap(partial_path(folder / f"{name}.npy"), mode="r+")
            for name in plan.shapes()}


def remove_partials(folder: Path, plan: ExportPlan) -> None:
    for name in plan.shapes():
        partial_path(folder / f"{name}.npy").unlink(missing_ok=True)


def manifest(plan: ExportPlan, config: Config, res: int, ctx: DistContext) -> dict[str, Any]:
    return {"weights": str(plan.weights.resolve()), "dataset": str(plan.dataset.resolve()), "resolution": res,
            "crop_ratio": config.validation.crop_ratio, "flip_tta": config.validation.flip_tta,
            "precision": config.training.precision, "decoder": config.data.decoder, "arch": config.model.arch,
            "count": plan.count, "ranks": ctx.world_size, "classes": plan.classes,
            "files": {f"{name}.npy": {"shape": list(shape), "dtype": dtype}
                      for name, (shape, dtype) in plan.shapes().items()},
            "embedding": "output of the last spatial pooling (input of fc), averaged over the flip TTA views",
            "probs": "softmax of the logits, which flip TTA averages over the image and its mirror",
            "recipe": to_dict(config)}


def finish(folder: Path, plan: ExportPlan, config: Config, res: int, ctx: DistContext) -> None:
    """After every rank's rows are on disk: rank 0 renames the files, the manifest last."""
    barrier(ctx)
    if ctx.is_main:
        for name in plan.shapes():
            partial_path(folder / f"{name}.npy").replace(folder / f"{name}.npy")
        atomic_write_text(folder / MANIFEST, json.dumps(manifest(plan, config, res, ctx), indent=1) + "\n")
    barrier(ctx)


# ---------------------------------------------------------------- one resolution
def write_rows(model: nn.Module, evaluator: Evaluator, res: int, arrays: dict[str, np.memmap],
               ctx: DistContext) -> int:
    """This rank's images (r, r+W, ...) through the model, into their rows; returns how many."""
    config = evaluator.config
    rows = val_indices(arrays["labels"].shape[0], ctx.rank, ctx.world_size).astype(np.int64)
    features = PooledFeatures(model)
    done = 0
    progress = tqdm(total=len(rows), unit="img", desc=f"export res {res}", leave=False, dynamic_ncols=True,
                    disable=not (ctx.is_main and config.logging.progress))
    try:
        with torch.no_grad(), progress:
            for images, labels in evaluator.loader(res):
                logits = view_logits(model, images, ctx.device, precision=config.training.precision,
                                     flip_tta=config.validation.flip_tta)
                batch_rows = rows[done:done + len(logits)]
                outputs = {"probs": logits.softmax(dim=1), "embeddings": features.mean(), "logits": logits,
                           "labels": labels.view(-1)}
                for name, array in arrays.items():
                    array[batch_rows] = outputs[name].cpu().numpy()  # copied out of FFCV's reused buffers
                done += len(logits)
                progress.update(len(logits))
    finally:
        features.handle.remove()
    for array in arrays.values():
        array.flush()
    if done != len(rows):
        raise RuntimeError(f"rank {ctx.rank} exported {done} images of its {len(rows)}")
    return done


def export_resolution(model: nn.Module, evaluator: Evaluator, plan: ExportPlan, res: int, out: Path,
                      ctx: DistContext) -> Path:
    folder = resolution_folder(out, res)
    arrays: dict[str, np.memmap] = {}
    try:
        arrays = open_arrays(folder, plan, ctx)
        write_rows(model, evaluator, res, arrays, ctx)
        arrays.clear()  # unmapped before the rename
        finish(folder, plan, evaluator.config, res, ctx)
    except BaseException:
        arrays.clear()
        if ctx.is_main:
            remove_partials(folder, plan)
        raise
    return folder


def export(config: Config, weights: Path, dataset: Path, resolutions: Sequence[int], out: Path, *,
           logits: bool, float16: bool) -> list[Path]:
    """The whole command on this rank: checks, model, one folder per resolution."""
    check_resolutions("--res", resolutions)
    try:
        dataset = Path(local_view(dataset, CacheSettings.of(config.data)))  # a URL: its local stand-in
    except ConversionError as err:
        raise ConfigError(f"--dataset: {err}") from None
    classes, count, fields = dataset_classes(dataset, config.data)
    trained = read_trained_weights(weights, "--weights")  # (state, is a checkpoint): read once, used twice
    check_class_count(trained[0], weights, dataset, classes, config)
    ctx = init_distributed(config.dist)
    try:
        check_precision(config, ctx.device)
        refusal = None
        if ctx.is_main:
            try:
                check_writable_dir(out)
            except OSError as err:
                refusal = f"--out: {err}"
        refusal = broadcast_object(ctx, refusal)  # every rank stops, none waits at a barrier
        if refusal:
            raise ConfigError(str(refusal))
        model = prepare_model(config, ctx, len(classes))
        put_trained_weights(model, *trained, weights, config.model.arch, "--weights")
        model.eval()
        plan = ExportPlan(weights=weights, dataset=dataset, classes=classes, count=count,
                          embedding_size=model.fc.in_features, logits=logits,
                          dtype="float16" if float16 else "float32")
        evaluator = Evaluator(config, ctx, dataset, count, fields)
        try:
            folders = [export_resolution(model, evaluator, plan, res, out, ctx) for res in resolutions]
        except CorruptRecordError as err:  # the dataset: bad input, said in one line
            raise ConfigError(f"--dataset: {err}") from None
        if ctx.is_main:
            for folder in folders:
                print(f"{folder}: {count} images", flush=True)
        return folders
    finally:
        shutdown(ctx)
