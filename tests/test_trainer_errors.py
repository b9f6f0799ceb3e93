"""A wrong recipe or launch fails before any work, with one line naming the key, and a dead rank ends the run."""
from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from helpers import REPO, cpu_env, epoch_records, run, tiny_overrides, torchrun_command, train_command

EXIT_ERROR = 2


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == EXIT_ERROR, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train_imagenet.py: error: "), result.stderr
    return lines[0]


def foreign_beton(tmp_path: Path) -> Path:
    path = tmp_path / "foreign.beton"
    path.write_bytes(b"not a beton at all" * 100)
    return path


CASES = {
    "unknown key": ({"training.epochz": 3}, "training.epochz"),
    "wrong type": ({"training.batch_size": "eight"}, "training.batch_size"),
    "bad choice": ({"training.precision": "fp8"}, "training.precision"),
    "missing dataset": ({"data.train_dataset": "/nonexistent/train.beton"}, "data.train_dataset"),
    "foreign file": ({"data.val_dataset": "FOREIGN"}, "data.val_dataset"),
    "fp16 on cpu": ({"training.precision": "fp16"}, "fp16 needs a GPU"),
    "batch larger than the shard": ({"training.batch_size": 1000}, "no full batch per rank"),
    "ramp end before start": ({"resolution.start_ramp": 2, "resolution.end_ramp": 1}, "resolution."),
    "fixres longer than training": ({"resolution.fixres_epochs": 9}, "fixres_epochs"),
    "unwritable run folder": ({"logging.folder": "/proc/run"}, "logging.folder"),
    "tensorboard every 0 steps": ({"logging.tensorboard": True, "logging.tensorboard_every": 0},
                                  "logging.tensorboard_every"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_recipe_is_one_line_naming_the_key(case: str, demo_betons: dict, tmp_path: Path) -> None:
    changes, expected = CASES[case]
    changes = {key: foreign_beton(tmp_path) if value == "FOREIGN" else value for key, value in changes.items()}
    result = run(train_command(tiny_overrides(demo_betons, tmp_path / "run", **changes)))
    assert expected in one_error_line(result)
    assert not (tmp_path / "run" / "log.jsonl").exists()  # nothing started


def test_missing_recipe_and_stray_argument(tmp_path: Path) -> None:
    assert "does not exist" in one_error_line(run(train_command([]) [:2] + ["--config", str(tmp_path / "x.yaml")]))
    assert "unrecognised argument" in one_error_line(run(train_command(["oops"])))


def test_val_with_other_classes_is_refused(demo_betons: dict, tmp_path: Path) -> None:
    from ffcv_imagenet.convert.conversion import ConversionSettings, convert_imagefolder
    from ffcv_imagenet.convert.demo_data import make_demo_imagefolder

    other = make_demo_imagefolder(tmp_path / "other", num_classes=3, train_per_class=2, val_per_class=2, seed=1)
    val = tmp_path / "val.beton"
    convert_imagefolder(other / "val", val, ConversionSettings(num_workers=1), progress=False)
    result = run(train_command(tiny_overrides(demo_betons, tmp_path / "run", **{"data.val_dataset": val})))
    assert "classes differ" in one_error_line(result)


def test_a_dead_rank_ends_the_run_instead_of_hanging(demo_betons: dict, tmp_path: Path) -> None:
    args = tiny_overrides(demo_betons, tmp_path, **{"training.epochs": 30, "resolution.fixres_epochs": 0,
                                                     "dist.timeout_s": 60})
    launcher = subprocess.Popen(torchrun_command(args, nproc=2), cwd=REPO, env=cpu_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not ((tmp_path / "log.jsonl").is_file() and epoch_records(tmp_path)):
        assert launcher.poll() is None and time.monotonic() < deadline, "the run did not reach its first epoch"
        time.sleep(0.1)
    workers = psutil.Process(launcher.pid).children()
    assert len(workers) == 2
    workers[1].send_signal(signal.SIGKILL)
    started = time.monotonic()
    launcher.communicate(timeout=180)
    assert launcher.returncode != 0
    assert time.monotonic() - started < 120
    assert all(not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE for worker in workers)


def test_print_schedule_prints_the_table_alone() -> None:
    from ffcv_imagenet.recipes import load_config
    from ffcv_imagenet.schedule import format_table, full_schedule

    result = run([*train_command([])[:2], "--config", str(REPO / "rcfg" / "rn50_88.yaml"), "--print-schedule"])
    config = load_config(REPO / "rcfg" / "rn50_88.yaml")
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.strip() == format_table(full_schedule(config.resolution, config.training.epochs))
    assert "79-87     | 224 | fixres" in result.stdout
