"""The files a best val top-1 rewrites (``best_writes``), the names the log gives them (``best_files_named``),
and what such a job copies to the host (``best_job_state``): for the EMA's best alone, only its weights."""
from __future__ import annotations

from pathlib import Path

import torch
from torchvision import models

from ffcv_imagenet.checkpointing import (BEST_EMA_WEIGHTS, BEST_WEIGHTS, CheckpointWriter, best_checkpoint_path,
                                         best_files_named, best_job_state, best_writes, load_checkpoint)
from ffcv_imagenet.model import torchvision_weights

CLASSES = 3


def run_state() -> dict:
    """A whole state as the trainer makes it: a real model, its optimizer (with momentum), an EMA copy."""
    model = models.resnet18(num_classes=CLASSES)
    ema = models.resnet18(num_classes=CLASSES)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    return {"recipe": {}, "epoch": 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "ema": {"weights": ema.state_dict(), "steps": 1, "updates": 1}}


def test_written_files_are_the_named_ones(tmp_path: Path) -> None:
    for improved in (["model"], ["ema"], ["model", "ema"]):
        written = [path.relative_to(tmp_path).as_posix() for path, _ in best_writes(tmp_path, improved)]
        assert written == [name for which in improved for name in best_files_named(which)]
    assert best_files_named("model") == ["checkpoints/best.pt", BEST_WEIGHTS]
    assert best_files_named("ema") == [BEST_EMA_WEIGHTS]


def test_an_ema_best_alone_copies_and_writes_only_the_ema_weights(tmp_path: Path) -> None:
    state = run_state()
    assert best_job_state(state, ["model"]) is state and best_job_state(state, ["model", "ema"]) is state
    ema_only = best_job_state(state, ["ema"])
    assert ema_only == {"ema": {"weights": state["ema"]["weights"]}}
    writer = CheckpointWriter()
    writer.submit_job(best_writes(tmp_path, ["ema"]), ema_only)
    writer.wait()
    saved = torch.load(tmp_path / BEST_EMA_WEIGHTS, weights_only=True)
    expected = torchvision_weights(state["ema"]["weights"])
    assert saved.keys() == expected.keys() and all(torch.equal(saved[key], expected[key]) for key in saved)
    assert sorted(path.name for path in tmp_path.iterdir()) == [BEST_EMA_WEIGHTS]
    models.resnet18(num_classes=CLASSES).load_state_dict(saved)  # a plain torchvision state_dict

    writer.submit_job(best_writes(tmp_path, ["model"]), best_job_state(state, ["model"]))
    writer.wait()
    best = load_checkpoint(best_checkpoint_path(tmp_path))  # a whole checkpoint, as resume reads it
    assert best["epoch"] == 1 and best["optimizer"]["state"] and best["ema"]["steps"] == 1
    assert all(torch.equal(best["model"][key], value) for key, value in state["model"].items())
    assert torch.load(tmp_path / BEST_WEIGHTS, weights_only=True).keys() == expected.keys()
