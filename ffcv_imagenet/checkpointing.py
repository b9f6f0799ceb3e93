"""Checkpoints: everything needed to continue a run exactly, written atomically by rank 0.

A checkpoint holds the model, optimizer and grad-scaler states, the position
(``epoch`` to run next and ``samples_in_epoch``, the global samples of it
already trained, so that any number of ranks can continue from there),
the resolved recipe and the RNG states. It is written under a temporary name
and renamed, so a preemption during the write leaves the previous checkpoint.
``CheckpointWriter`` copies the state to host memory and writes it on a
background thread, so training goes on during the write. An epoch's end is one
job: best.pt, the best weights and last.pt, all from one host copy of the state.

Resuming with a recipe that would train a different run (another model, LR,
schedule, epoch count...) is refused; what only changes where data comes from
or how the run is launched (paths, workers, logging, ranks) may differ.

Saved weights are read back here too (``load_trained_weights``): a checkpoint (our keys) or an
exported ``final_weights.pt`` (torchvision's), with one error line naming the option that gave the
path; ``find_resume_point`` picks the checkpoint a run continues from.
"""
from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .config import SECTIONS, Config, ConfigError, to_dict
from .fileio import atomic_path, check_writable_dir
from .model import load_torchvision_weights, torchvision_state_dict, torchvision_weights

CHECKPOINT_FORMAT = 1
LAST_CHECKPOINT = Path("checkpoints") / "last.pt"
BEST_CHECKPOINT = Path("checkpoints") / "best.pt"  # the state at the best val top-1 so far (same format)
RUN_DEFINING_SECTIONS = ("model", "resolution", "lr", "training")
# compile and max_bad_steps: no effect on the weights; accumulate: like the rank count, it sets the global batch,
# which the LR follows (8 GPUs become 4: accumulate 2 keeps the recipe's global batch)
FREE_TO_CHANGE = {"training.compile", "training.max_bad_steps", "training.accumulate"}
# One file of a checkpoint job: its path, and what goes in it, made from the job's host copy of the
# state (None: the whole state, as a checkpoint).
Write = tuple[Path, Callable[[dict[str, Any]], Any] | None]
FINAL_WEIGHTS = "final_weights.pt"
FINAL_EMA_WEIGHTS = "final_weights_ema.pt"
BEST_WEIGHTS = "best_weights.pt"  # the model of checkpoints/best.pt, as a torchvision state_dict
BEST_EMA_WEIGHTS = "best_weights_ema.pt"  # the EMA weights at their own best val top-1


def last_checkpoint_path(run_folder: str | Path) -> Path:
    return Path(run_folder) / LAST_CHECKPOINT


def best_checkpoint_path(run_folder: str | Path) -> Path:
    return Path(run_folder) / BEST_CHECKPOINT


def rng_states(device: torch.device) -> dict[str, Any]:
    """The generators' states; on a GPU only this rank's own device's (the others belong to other ranks)."""
    numpy_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (numpy_state[0], torch.from_numpy(numpy_state[1].copy()), *numpy_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def restore_rng_states(states: dict[str, Any], device: torch.device) -> None:
    """Into this rank's generators. The CUDA state goes to this rank's device only, so a resume
    on fewer GPUs per node, or on another rank count, works (and a CPU run ignores it)."""
    random.setstate(states["python"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(states["torch"])
    cuda = states["cuda"]
    if device.type == "cuda" and isinstance(cuda, torch.Tensor):
        torch.cuda.set_rng_state(cuda, device)


def save_file(path: str | Path, obj: Any) -> None:
    """``torch.save`` under a temporary name, renamed once on disk (its folder made if missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    save_file(path, {"format": CHECKPOINT_FORMAT, **state})


def to_host(value: Any) -> Any:
    """``value`` with every tensor copied to host memory, so that training may go on changing the originals."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: to_host(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_host(item) for item in value)
    return value


class CheckpointWriter:
    """Writes one job at a time on a background thread, from a host copy taken at submission.

    Each file is still written atomically: a kill during it leaves the previous one. An error in
    the thread (a full disk) is raised by the next ``submit`` or ``wait``.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.jobs = 0  # submitted so far: one per epoch at most, plus the saves inside an epoch

    def submit(self, path: str | Path, state: dict[str, Any], then: Callable[[], None] | None = None) -> None:
        """Copy ``state`` to the host now, write it in the background, then call ``then`` (on the thread)."""
        self.submit_job([(Path(path), None)], state, then)

    def submit_job(self, writes: Sequence[Write], state: dict[str, Any],
                   then: Callable[[], None] | None = None) -> None:
        """Copy ``state`` to the host once, now; write the files of ``writes`` in order in the
        background, then call ``then`` (on the thread). Waits for the previous job first."""
        self.wait()
        host_state = to_host(state)
        self.jobs += 1
        self._thread = threading.Thread(target=self._write, args=(list(writes), host_state, then),
                                        name="checkpoint-writer")
        self._thread.start()

    def _write(self, writes: list[Write], state: dict[str, Any], then: Callable[[], None] | None) -> None:
        try:
            for path, part in writes:
                if part is None:
                    save_checkpoint(path, state)
                else:
                    save_file(path, part(state))
            if then is not None:
                then()
        except BaseException as err:  # handed to the training thread by wait()
            self._error = err

    def wait(self) -> None:
        """Until the last submitted checkpoint is on disk (and its ``then`` done); re-raises its error."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


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
            # A key newer than the checkpoint had its declared default there.
            before = saved.get(section, {}).get(key, SECTIONS[section][key].default)
            if dotted not in FREE_TO_CHANGE and before != value:
                differences.append(f"{dotted}: {before!r} -> {value!r}")
    return differences


def check_resumable(state: dict[str, Any], current: Config, path: str | Path) -> None:
    differences = recipe_differences(state["recipe"], current)
    if differences:
        raise ConfigError(f"checkpoint {path} is from a different run ({'; '.join(differences)}); "
                          "use another logging.folder or the recipe it was made with")
    check_same_window(state, current, path)


def check_same_window(state: dict[str, Any], current: Config, path: str | Path) -> None:
    """A quasi_random epoch's order depends on its window, half of ``data.cache_mib``: resumed inside
    the epoch with another one, the rest of the epoch would repeat some images and skip others."""
    saved = state["recipe"].get("data", {}).get("cache_mib", SECTIONS["data"]["cache_mib"].default)
    inside_epoch = state.get("samples_in_epoch", 0) > 0
    if inside_epoch and current.data.order == "quasi_random" and saved != current.data.cache_mib:
        raise ConfigError(f"data.cache_mib: {saved} -> {current.data.cache_mib}: checkpoint {path} stopped inside "
                          f"epoch {state['epoch']}, whose quasi_random order the window (cache_mib / 2) sets; "
                          f"resume with data.cache_mib={saved}")


def read_trained_weights(path: str | Path, option: str = "--evaluate") -> tuple[dict[str, torch.Tensor], bool]:
    """(state_dict, is a checkpoint) of a run's checkpoint (last.pt, best.pt: our keys) or an exported
    final_weights.pt (torchvision's keys); ``option`` names where the path came from, in the error line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{option}: {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises assorted types on a truncated or foreign file
        raise ConfigError(f"{option}: {path} is not readable: {type(err).__name__}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):  # last.pt, best.pt: a checkpoint dict
        return state["model"], True
    if not isinstance(state, dict):
        raise ConfigError(f"{option}: {path} holds no state_dict ({type(state).__name__})")
    return state, False


def load_trained_weights(model: nn.Module, path: str | Path, arch: str, option: str = "--evaluate") -> None:
    """A run's checkpoint (last.pt, best.pt) or its exported final_weights.pt, into ``model``."""
    put_trained_weights(model, *read_trained_weights(path, option), path, arch, option)


def put_trained_weights(model: nn.Module, weights: dict[str, torch.Tensor], is_checkpoint: bool, path: str | Path,
                        arch: str, option: str) -> None:
    """Weights already read (``read_trained_weights``) into ``model``; ``path`` and ``option`` name them
    in the error line."""
    try:
        if is_checkpoint:
            model.load_state_dict(weights)
        else:
            load_torchvision_weights(model, weights)
    except (RuntimeError, ValueError, TypeError) as err:
        classes = model.fc.out_features
        raise ConfigError(f"{option}: {path} does not fit model.arch={arch} with {classes} classes: "
                          f"{str(err).splitlines()[0]}") from None


# ---------------------------------------------------------------- best and final weights
def track_best(best: dict[str, dict[str, float]], record: dict[str, Any]) -> list[str]:
    """Which of the model and its EMA beat their best val top-1 so far (each judged on its own), from an
    epoch's ``record``; ``best`` ("model" / "ema" -> {"epoch", "val_top1"}, kept in checkpoints) is updated."""
    improved = []
    for which, top1 in (("model", record.get("val_top1")), ("ema", record.get("ema_val_top1"))):
        if top1 is not None and top1 > best.get(which, {}).get("val_top1", -1.0):
            best[which] = {"epoch": record["epoch"], "val_top1": top1}
            improved.append(which)
    return improved


# The run-folder files that hold the best "model" / "ema", each with what goes in it (a ``Write``'s part).
BEST_FILES: dict[str, list[tuple[str, Callable[[dict[str, Any]], Any] | None]]] = {
    "model": [(str(BEST_CHECKPOINT), None), (BEST_WEIGHTS, lambda state: torchvision_weights(state["model"]))],
    "ema": [(BEST_EMA_WEIGHTS, lambda state: torchvision_weights(state["ema"]["weights"]))],
}


def best_writes(run_folder: Path, improved: list[str]) -> list[Write]:
    """The files an improvement rewrites, each made from the epoch's host copy of the state (an EMA
    improves only in a run that has one: only such a run records ``ema_val_top1``)."""
    return [(run_folder / name, part) for which in improved for name, part in BEST_FILES[which]]


def best_files_named(which: str) -> list[str]:
    """The run-folder files that hold the best ``which`` ("model" or "ema")."""
    return [name for name, _ in BEST_FILES[which]]


def best_job_state(state: dict[str, Any], improved: list[str]) -> dict[str, Any]:
    """What a job that writes only best files (``best_writes``) needs of ``state``: all of it where
    best.pt (a whole checkpoint) is rewritten; for the EMA's best alone, its weights, so that only
    they are copied to the host, not the model, optimizer and EMA together."""
    if "model" in improved:
        return state
    return {"ema": {"weights": state["ema"]["weights"]}}


def write_final_weights(run_folder: Path, models: dict[str, nn.Module]) -> list[Path]:
    """Each of ``models`` (file name -> model) as a plain torchvision state_dict, written atomically."""
    for name, model in models.items():
        save_file(run_folder / name, torchvision_state_dict(model))
    return [run_folder / name for name in models]


def find_resume_point(config: Config, explicit: str | None) -> Path | None:
    """The checkpoint to continue from: ``--resume PATH`` (file or run folder), else the run folder's own."""
    if explicit:
        path = Path(explicit)
        path = last_checkpoint_path(path) if path.is_dir() else path
        if not path.is_file():
            raise ConfigError(f"--resume: {path} does not exist")
        return path
    own = last_checkpoint_path(config.logging.folder)
    if not own.is_file():
        return None
    if not config.logging.resume:
        raise ConfigError(f"logging.folder: {config.logging.folder} already holds a run's checkpoint and "
                          "logging.resume is false; choose another folder (or resume it)")
    return own


def prepare_run_folder(config: Config, explicit_resume: str | None) -> Path | None:
    """Rank 0's part: a writable run folder and the checkpoint to resume from, if any."""
    try:
        check_writable_dir(config.logging.folder)
    except OSError as err:
        raise ConfigError(f"logging.folder: {err}") from None
    return find_resume_point(config, explicit_resume)
