"""The files an export leaves, the checks of its arguments that need no model, and top-1/top-5
recomputed from the files without a model (``python -m ffcv_imagenet.export --evaluate-saved DIR``,
the FixRes repository's evaluate-from-softmax).

``DIR/res<R>/`` holds ``probs.npy``, ``embeddings.npy``, ``logits.npy`` (with --logits), ``labels.npy``
and ``manifest.json``, written last; a file is written under a hidden ``.NAME.partial`` name first
(``exporting``). Imports numpy only: an evaluation of saved files loads neither torch nor FFCV.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .config import ConfigError

MANIFEST = "manifest.json"
PARTIAL_SUFFIX = ".partial"
EVAL_CHUNK_ROWS = 65536  # rows of probabilities read at a time by --evaluate-saved
TOP_K = 5


def resolution_folder(out: Path, res: int) -> Path:
    return out / f"res{res}"


def partial_path(final: Path) -> Path:
    """The hidden name a file is written under until every rank has finished it."""
    return final.with_name(f".{final.name}{PARTIAL_SUFFIX}")


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
