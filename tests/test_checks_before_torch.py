"""Checks that answer before torch loads, and the datasets read once: what ``check_before_torch`` read
is what training, --evaluate, the LR range test and the profile go on with (``preflight``)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ffcv_imagenet.cli import EXIT_ERROR

from helpers import DEMO_RECIPE, REPO, TRAIN, cpu_env, tiny_overrides
from test_beton_header import imported_modules

# The real command, with preflight's dataset reader wrapped to count its calls (it still reads the files).
COUNTED_TRAIN = """
import sys
from ffcv_imagenet import preflight, train_cli
reads = []
real_read = preflight.read_dataset
def counted_read(key, value, data):
    reads.append(key)
    return real_read(key, value, data)
preflight.read_dataset = counted_read
code = train_cli.main(sys.argv[1:])
print("reads:", ",".join(reads), "exit:", code)
"""


def test_bad_eval_res_is_one_line_before_torch_loads(demo_betons: dict, tmp_path: Path) -> None:
    command = [sys.executable, "-X", "importtime", str(TRAIN), "--config", str(DEMO_RECIPE),
               *tiny_overrides(demo_betons, tmp_path / "run"), "--evaluate", str(tmp_path / "none.pt"),
               "--eval-res", "64", "0"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO, env=cpu_env())
    modules = imported_modules(result.stderr)
    lines = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert result.returncode == EXIT_ERROR, result.stderr[-3000:]
    assert lines == ["train_imagenet.py: error: --eval-res: resolutions must be positive, got 0"], lines
    assert "ffcv_imagenet.schedule" in modules  # the reader saw the package's imports
    assert not {name for name in modules if name.split(".")[0] in ("torch", "ffcv", "numba")}


def test_evaluate_reads_each_dataset_once(demo_betons: dict, tmp_path: Path) -> None:
    missing = tmp_path / "none.pt"
    command = [sys.executable, "-c", COUNTED_TRAIN, "--config", str(DEMO_RECIPE),
               *tiny_overrides(demo_betons, tmp_path / "run"), "--evaluate", str(missing)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO, env=cpu_env())
    # It got past preflight (torch loaded, the model built) to the weights, which are missing.
    assert str(missing) in result.stderr, result.stderr[-3000:]
    assert f"reads: data.train_dataset,data.val_dataset exit: {EXIT_ERROR}" in result.stdout, result.stdout
