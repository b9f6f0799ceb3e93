"""``python -m ffcv_imagenet.export``: predictions and embeddings of every image of a .beton, and
top-1/top-5 recomputed from them without a model (the FixRes repository's evaluate-from-softmax).

    python -m ffcv_imagenet.export --config R --weights W --dataset val.beton --res 224 288 --out DIR
    torchrun --nproc_per_node=8 -m ffcv_imagenet.export ...      (each rank writes its own rows)
    python -m ffcv_imagenet.export --evaluate-saved DIR

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
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .cli import (EXIT_ERROR, EXIT_IO_ERROR, OneLineParser, fail, interrupt_outside_native_callbacks, interrupted,
                  os_error_message, world_from_env)
from .config import Config, ConfigError, to_dict
from .recipe_options import add_recipe_options, answer_recipe_questions, split_overrides
from .recipes import load_config

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .distributed import DistContext
    from .evaluation import Evaluator

PROG = "python -m ffcv_imagenet.export"
MANIFEST = "manifest.json"
PARTIAL_SUFFIX = ".partial"
EVAL_CHUNK_ROWS = 65536  # rows of probabilities read at a time by --evaluate-saved
TOP_K = 5


def resolution_folder(out: Path, res: int) -> Path:
    return out / f"res{res}"


def partial_path(final: Path) -> Path:
    """The hidden name a file is written under until every rank has finished it."""
    return final.with_name(f".{final.name}{PARTIAL_SUFFIX}")


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
def check_resolutions(resolutions: Sequence[int]) -> None:
    for res in resolutions:
        if res <= 0:
            raise ConfigError(f"--res: resolutions must be positive, got {res}")


def dataset_classes(dataset: Path) -> tuple[list[str], int]:
    """(class list, record count) of the .beton to export."""
    from .beton_format import ConversionError, load_class_names, open_beton

    try:
        return load_class_names(dataset), int(open_beton(dataset).num_samples)
    except ConversionError as err:
        raise ConfigError(f"--dataset: {err}") from None


def check_class_count(weights: Path, dataset: Path, classes: list[str], config: Config) -> None:
    """The weights' classifier and the .beton must count the same classes (labels index both)."""
    from .trainer import read_trained_weights

    state, _ = read_trained_weights(weights, "--weights")
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
    from .distributed import barrier

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
    from .distributed import barrier
    from .fileio import atomic_write_text

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
    import torch
    from tqdm import tqdm

    from .evaluation import view_logits
    from .loaders import val_indices

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
    from .decoders import CorruptRecordError
    from .distributed import broadcast_object, init_distributed, shutdown
    from .evaluation import Evaluator
    from .fileio import check_writable_dir
    from .preflight import check_precision
    from .trainer import load_trained_weights, prepare_model

    check_resolutions(resolutions)
    classes, count = dataset_classes(dataset)
    check_class_count(weights, dataset, classes, config)
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
        load_trained_weights(model, weights, config.model.arch, "--weights")
        model.eval()
        plan = ExportPlan(weights=weights, dataset=dataset, classes=classes, count=count,
                          embedding_size=model.fc.in_features, logits=logits,
                          dtype="float16" if float16 else "float32")
        evaluator = Evaluator(config, ctx, dataset, count)
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


# ---------------------------------------------------------------- evaluate from saved probabilities
def saved_folders(folder: Path) -> list[Path]:
    """``folder`` itself if it is one resolution's export, else its res<R> subfolders."""
    if (folder / MANIFEST).is_file():
        return [folder]
    found = sorted((path.parent for path in folder.glob(f"*/{MANIFEST}")),
                   key=lambda path: json.loads((path / MANIFEST).read_text())["resolution"])
    if not found:
        raise ConfigError(f"--evaluate-saved: {folder} holds no finished export ({MANIFEST} in it or its "
                          "res<R> folders)")
    return found


def topk_hits(scores: np.ndarray, labels: np.ndarray) -> tuple[int, int]:
    """(top-1 hits, top-5 hits) of a block of rows of probabilities or logits."""
    k = min(TOP_K, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return int((scores.argmax(axis=1) == labels).sum()), int((top == labels[:, None]).any(axis=1).sum())


def evaluate_saved_folder(folder: Path) -> dict[str, Any]:
    """Top-1/top-5 of one export, read in blocks of rows (a train-set export does not fit in RAM).

    Ranked by the logits where they were saved: a confident model's probabilities underflow to
    exactly 0 for several classes, which then tie, and top-5 among ties is a guess."""
    info = json.loads((folder / MANIFEST).read_text())
    source = "logits" if (folder / "logits.npy").is_file() else "probs"
    try:
        scores = np.load(folder / f"{source}.npy", mmap_mode="r")
        labels = np.load(folder / "labels.npy", mmap_mode="r")
    except (OSError, ValueError) as err:
        raise ConfigError(f"--evaluate-saved: {folder}: {err}") from None
    if scores.shape[0] != labels.shape[0] or scores.shape[0] != info["count"]:
        raise ConfigError(f"--evaluate-saved: {folder}: {source}.npy has {scores.shape[0]} rows, labels.npy "
                          f"{labels.shape[0]}, the manifest says {info['count']}")
    top1 = top5 = 0
    for start in range(0, scores.shape[0], EVAL_CHUNK_ROWS):
        block = slice(start, start + EVAL_CHUNK_ROWS)
        hits1, hits5 = topk_hits(np.asarray(scores[block], dtype=np.float32), np.asarray(labels[block]))
        top1, top5 = top1 + hits1, top5 + hits5
    count = int(labels.shape[0])
    return {"folder": str(folder), "res": info["resolution"], "count": count, "top1_hits": top1,
            "top5_hits": top5, "top1": top1 / max(1, count), "top5": top5 / max(1, count), "ranked_by": source}


def evaluate_saved(folder: Path) -> list[dict[str, Any]]:
    rows = [evaluate_saved_folder(path) for path in saved_folders(folder)]
    for row in rows:
        print(f"res {row['res']}: top-1 {100 * row['top1']:.2f}% ({row['top1_hits']}/{row['count']}) "
              f"top-5 {100 * row['top5']:.2f}% ({row['top5_hits']}/{row['count']}) from {row['ranked_by']}  "
              f"{row['folder']}", flush=True)
    return rows


# ---------------------------------------------------------------- command line
def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description="Write softmax probabilities, embeddings (and logits) of every "
                           "image of a .beton as .npy files, or recompute top-1/top-5 from such an export. "
                           "Recipe keys can be overridden as --section.key=value.")
    add_recipe_options(parser)
    parser.add_argument("--weights", type=Path, help="final_weights.pt, or a checkpoint (checkpoints/last.pt, "
                        "best.pt)")
    parser.add_argument("--dataset", type=Path, help=".beton to export (val or train)")
    parser.add_argument("--res", type=int, nargs="+", metavar="RES",
                        help="test resolutions (default: validation.resolution)")
    parser.add_argument("--out", type=Path, help="output folder; one res<R> folder per resolution")
    parser.add_argument("--logits", action="store_true", help="also write logits.npy")
    parser.add_argument("--float16", action="store_true", help="probabilities, embeddings, logits as float16")
    parser.add_argument("--evaluate-saved", type=Path, metavar="DIR",
                        help="no model: top-1/top-5 from an export's probs.npy and labels.npy")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, overrides = split_overrides(parser, sys.argv[1:] if argv is None else argv)
    interrupt_outside_native_callbacks()
    speaks = True  # under torchrun, rank 0 alone says what every rank found
    try:
        if answer_recipe_questions(args, overrides):
            return 0
        if args.evaluate_saved:  # numpy only: no torch, no model
            evaluate_saved(args.evaluate_saved)
            return 0
        speaks = world_from_env()[0] == 0
        missing = [option for option, value in (("--config", args.config), ("--weights", args.weights),
                                                ("--dataset", args.dataset), ("--out", args.out)) if not value]
        if missing:
            parser.error(f"{', '.join(missing)} required (or --evaluate-saved DIR)")
        check_resolutions(args.res or [])
        config = load_config(args.config, overrides)
        export(config, args.weights, args.dataset, args.res or [config.validation.resolution], args.out,
               logits=args.logits, float16=args.float16)
    except ConfigError as err:
        return fail(PROG, str(err), EXIT_ERROR, speaks)
    except KeyboardInterrupt:
        return interrupted(PROG, "interrupted; no partial file was left at the final names", speaks)
    except OSError as err:
        return fail(PROG, os_error_message(err), EXIT_IO_ERROR)
    return 0


if __name__ == "__main__":
    sys.exit(main())
