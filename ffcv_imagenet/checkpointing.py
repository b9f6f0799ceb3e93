"""Checkpoints: everything needed to continue a run exactly, written atomically by rank 0.

A checkpoint holds the model, optimizer and grad-scaler states, the position
(``epoch`` to run next and ``step_in_epoch`` batches of it already trained),
the resolved recipe and the RNG states. It is written under a temporary name
and renamed, so a preemption during the write leaves the previous checkpoint.

Resuming with a recipe that would train a different run (another model, LR,
schedule, epoch count...) is refused; what only changes where data comes from
or how the run is launched (paths, workers, logging, ranks) may differ.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import SECTIONS, Config, ConfigError, to_dict
from .fileio import atomic_path

CHECKPOINT_FORMAT = 1
LAST_CHECKPOINT = Path("checkpoints") / "last.pt"
BEST_CHECKPOINT = Path("checkpoints") / "best.pt"  # the state at the best val top-1 so far (same format)
RUN_DEFINING_SECTIONS = ("model", "resolution", "lr", "training")
FREE_TO_CHANGE = {"training.compile", "training.max_bad_steps"}  # no effect on the weights


def last_checkpoint_path(run_folder: str | Path) -> Path:
    return Path(run_folder) / LAST_CHECKPOINT


def best_checkpoint_path(run_folder: str | Path) -> Path:
    return Path(run_folder) / BEST_CHECKPOINT


def rng_states() -> dict[str, Any]:
    numpy_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (numpy_state[0], torch.from_numpy(numpy_state[1].copy()), *numpy_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        # weights_only: a checkpoint is data; loading one must not run code.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"checkpoint {path} does not exist") from None
    except Exception as err:  # torch raises assorted types on a truncated or foreign file
        raise ConfigError(f"checkpoint {path} is not readable: {type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"checkpoint {path} was not written by this trainer (format {CHECKPOINT_FORMAT})")
    return state


def recipe_differences(saved: dict[str, dict[str, Any]], current: Config) -> list[str]:
    """``section.key: saved -> current`` for every run-defining setting that differs."""
    now = to_dict(current)
    differences = []
    for section in RUN_DEFINING_SECTIONS:
        for key, value in now[section].items():
            dotted = f"{section}.{key}"
            # A key added since the checkpoint was written had its declared default then.
            before = saved.get(section, {}).get(key, SECTIONS[section][key].default)
            if dotted not in FREE_TO_CHANGE and before != value:
                differences.append(f"{dotted}: {before!r} -> {value!r}")
    return differences


def check_resumable(state: dict[str, Any], current: Config, path: str | Path) -> None:
    differences = recipe_differences(state["recipe"], current)
    if differences:
        raise ConfigError(f"checkpoint {path} is from a different run ({'; '.join(differences)}); "
                          "use another logging.folder or the recipe it was made with")
