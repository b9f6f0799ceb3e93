"""Ctrl-C in train_imagenet.py: one line and exit code 130, as export and write_datasets.py give,
also while numba compiles the loader's pipeline (right after the run's start record)."""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from ffcv_imagenet.cli import EXIT_INTERRUPTED
from ffcv_imagenet.run_log import LOG_NAME
from helpers import REPO, cpu_env, sigint_not_ignored, tiny_overrides, train_command

START_TIMEOUT_SECONDS = 300


def started(folder: Path) -> bool:
    log = folder / LOG_NAME
    return log.is_file() and any(json.loads(line)["kind"] == "start" for line in log.read_text().splitlines())


def test_ctrl_c_while_the_loader_compiles_is_one_line(demo_betons: dict, tmp_path: Path) -> None:
    folder = tmp_path / "run"
    with sigint_not_ignored():
        process = subprocess.Popen(train_command(tiny_overrides(demo_betons, folder)), cwd=REPO, env=cpu_env(),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not started(folder):  # the next thing the run does is compile its first epoch's pipeline
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it started"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=START_TIMEOUT_SECONDS)
    assert process.returncode == EXIT_INTERRUPTED, f"exit {process.returncode}\n{stdout}\n{stderr}"
    assert stderr.count("\n") == 1, stderr
    assert stderr.startswith(f"train_imagenet.py: error: interrupted; {folder} keeps its last checkpoint"), stderr
