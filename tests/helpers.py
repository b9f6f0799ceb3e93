"""Launching the real commands from tests: train_imagenet.py, alone or under torchrun."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

# Numba compiles each FFCV pipeline afresh in every process the tests start: most of the suite's
# time. At LLVM optimisation level 0 that compile is about a third shorter, and what the compiled
# code computes is the same (nothing here uses fastmath). A NUMBA_OPT the caller set is kept; the
# README demo test runs at numba's default level, as a user's run does. Set before numba loads
# (conftest imports this module first).
USERS_NUMBA_OPT = os.environ.get("NUMBA_OPT")
os.environ.setdefault("NUMBA_OPT", "0")

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "train_imagenet.py"
DEMO_RECIPE = REPO / "rcfg" / "demo.yaml"


def tiny_overrides(betons: dict[str, Path], folder: Path, **extra: object) -> list[str]:
    """The demo recipe shrunk for the test set: 32 -> 64 px ramp, FixRes at 64, batch 8, one worker."""
    settings = {"data.train_dataset": betons["train"], "data.val_dataset": betons["val"], "data.num_workers": 1,
                "resolution.min_res": 32, "resolution.max_res": 64, "resolution.start_ramp": 0,
                "resolution.end_ramp": 1, "resolution.fixres_epochs": 1, "resolution.fixres_res": 64,
                "training.epochs": 3, "training.batch_size": 8, "validation.batch_size": 8,
                "validation.resolution": 64, "logging.folder": folder, "logging.progress": False, **extra}
    return [f"--{key}={value}" for key, value in settings.items()]


def cpu_env(threads: int = 1, users_numba: bool = False) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    if users_numba:  # the optimisation level the caller had, not the tests' lower one
        env.pop("NUMBA_OPT")
        if USERS_NUMBA_OPT is not None:
            env["NUMBA_OPT"] = USERS_NUMBA_OPT
    return env


@contextlib.contextmanager
def sigint_not_ignored() -> Iterator[None]:
    """Processes started inside get SIGINT as a terminal gives it. A shell runs background jobs (``cmd &``
    in a script, as CI runners may) with SIGINT ignored, and an ignored signal stays ignored across
    exec, so a Ctrl-C test's command would finish untouched; a handled one is reset to the default."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def train_command(args: list[str]) -> list[str]:
    return [sys.executable, str(TRAIN), "--config", str(DEMO_RECIPE), *args]


def torchrun_command(args: list[str], *, nproc: int, nnodes: int = 1, node_rank: int = 0,
                     port: int | None = None, module: str | None = None, max_restarts: int = 0) -> list[str]:
    """train_imagenet.py (or ``module``, e.g. ffcv_imagenet.export, given its own arguments) under torchrun."""
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                f"--max-restarts={max_restarts}"]
    if nnodes == 1:
        launcher += ["--standalone"]
    else:
        launcher += [f"--nnodes={nnodes}", f"--node_rank={node_rank}", "--master_addr=127.0.0.1",
                     f"--master_port={port}"]
    if module is not None:
        return [*launcher, "-m", module, *args]
    return [*launcher, str(TRAIN), "--config", str(DEMO_RECIPE), *args]


def export_command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "ffcv_imagenet.export", *args]


def run(command: list[str], timeout: float = 600,
        extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**cpu_env(), **(extra_env or {})})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def epoch_records(folder: Path) -> list[dict]:
    lines = (folder / "log.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record["kind"] == "epoch"]


def explain(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"


def wait_for_epochs(folder: Path, count: int, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (folder / "log.jsonl").is_file() and len(epoch_records(folder)) >= count:
            return
        assert process.poll() is None, "the run ended before it was signalled"
        time.sleep(0.05)
    raise TimeoutError(f"no epoch record {count} in {folder}")


def interrupt_after_epochs(command: list[str], folder: Path, count: int = 1) -> subprocess.CompletedProcess:
    """Run ``command`` (a training launch) and send it SIGTERM once ``count`` epoch records are in
    ``folder``'s log: the signal lands inside the next epoch (torchrun passes it on to every rank)."""
    process = subprocess.Popen(command, cwd=REPO, env=cpu_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    wait_for_epochs(folder, count, process)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
