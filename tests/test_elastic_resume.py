"""A run stopped on 2 ranks and resumed on 3 or on 1: every sample of the interrupted epoch is
trained exactly once (real torchrun, gloo, CPU; a .beton whose labels are the sample ids)."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from ffcv_imagenet.checkpointing import last_checkpoint_path, load_checkpoint
from ffcv_imagenet.convert.conversion import ConversionSettings, convert_imagefolder
from ffcv_imagenet.run_log import SAMPLE_LOG_ENV
from ffcv_imagenet.traversal import RandomOrder
from helpers import REPO, cpu_env, epoch_records, explain, run, tiny_overrides, torchrun_command, train_command

TRAIN_IMAGES = 144  # conftest's demo train set
VAL_IMAGES = 6
BATCH = 5  # global batches of 5, 10 and 15 all leave a remainder of 144
SEED = 0  # tiny_overrides keeps the demo recipe's training.seed


@pytest.fixture(scope="module")
def id_betons(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo train images, one class folder each, written in folder order (class, name), so a
    sample's label is its id. Val holds the first few of them (any val set would do)."""
    folder = tmp_path_factory.mktemp("id_images")
    images = sorted((demo_root / "train").glob("*/*.JPEG"))
    assert len(images) == TRAIN_IMAGES
    for split, chosen in (("train", images), ("val", images[:VAL_IMAGES])):
        for index, image in enumerate(chosen):
            (folder / split / f"id{index:03d}").mkdir(parents=True)
            shutil.copy(image, folder / split / f"id{index:03d}" / image.name)
    out = tmp_path_factory.mktemp("id_betons")
    settings = ConversionSettings(max_resolution=128, num_workers=2, record_order="folder")
    convert_imagefolder(folder / "train", out / "train.beton", settings, progress=False)
    convert_imagefolder(folder / "val", out / "val.beton", settings, class_map=out / "train.beton", progress=False)
    return {"train": out / "train.beton", "val": out / "val.beton"}


def trained_steps(folder: Path) -> dict[int, list[list[int]]]:
    """Per rank, the sample ids of each step it trained (the trainer's sample log)."""
    steps = {}
    for path in sorted((folder / "samples").glob("rank*.txt")):
        lines = [list(map(int, line.split())) for line in path.read_text().splitlines()]
        steps[int(path.stem.removeprefix("rank"))] = [line[1:] for line in lines if line[0] == 0]  # epoch 0
    return steps


def stop_on_two_ranks(args: list[str], folder: Path) -> None:
    """torchrun with 2 ranks, SIGTERM once the first step is trained: a checkpoint inside epoch 0."""
    (folder / "samples").mkdir(parents=True)
    launcher = subprocess.Popen(torchrun_command(args, nproc=2), cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env={**cpu_env(), SAMPLE_LOG_ENV: str(folder / "samples")})
    first = folder / "samples" / "rank0.txt"
    deadline = time.monotonic() + 300
    while not (first.is_file() and first.read_text().strip()):
        assert launcher.poll() is None and time.monotonic() < deadline, "the run ended before it was signalled"
        time.sleep(0.05)
    launcher.send_signal(signal.SIGTERM)  # torchrun passes it on to both ranks
    stdout, stderr = launcher.communicate(timeout=300)
    assert launcher.returncode != 0, f"{stdout[-2000:]}\n{stderr[-2000:]}"  # torchrun's own code; the ranks' is 143
    assert "checkpoint saved" in stderr, stderr[-2000:]


def resumed_event(folder: Path) -> dict:
    records = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "event" and r["event"] == "resumed"][-1]


@pytest.mark.parametrize("order", ["random", "quasi_random"])
def test_stopped_on_two_ranks_resumed_on_three_and_on_one_trains_each_sample_once(
        order: str, id_betons: dict, tmp_path: Path) -> None:
    data = {"data.order": order, "data.in_memory": order == "random", "data.cache_mib": 16,
            "training.epochs": 1, "resolution.fixres_epochs": 0, "training.batch_size": BATCH}
    interrupted = tmp_path / "interrupted"
    stop_on_two_ranks(tiny_overrides(id_betons, interrupted, **data), interrupted)
    stopped = load_checkpoint(last_checkpoint_path(interrupted))
    before = trained_steps(interrupted)
    assert sorted(before) == [0, 1] and len(before[0]) == len(before[1])
    position = len(before[0]) * 2 * BATCH  # global samples trained before the stop
    assert stopped["epoch"] == 0 and stopped["samples_in_epoch"] == position and 0 < position < TRAIN_IMAGES

    for ranks in (3, 1):
        folder = tmp_path / f"on{ranks}"
        shutil.copytree(interrupted, folder)  # the same checkpoint and sample log, resumed two ways
        args = tiny_overrides(id_betons, folder, **data)
        command = torchrun_command(args, nproc=ranks) if ranks > 1 else train_command(args)
        result = run(command, extra_env={SAMPLE_LOG_ENV: str(folder / "samples")})
        assert result.returncode == 0, explain(result)
        event = resumed_event(folder)
        assert (event["saved_world_size"], event["world_size"], event["samples_in_epoch"]) == (2, ranks, position)
        assert f"saved with 2 ranks, now {ranks}" in result.stdout

        steps = trained_steps(folder)
        assert sorted(steps) == list(range(max(2, ranks)))
        after = [sample for rank in range(ranks) for step in steps[rank][len(before.get(rank, [])):]
                 for sample in step]
        trained = [sample for rank in (0, 1) for step in before[rank] for sample in step] + after
        assert len(trained) == len(set(trained))  # no sample twice
        left_out = TRAIN_IMAGES - len(trained)
        assert event["samples_left_out"] == left_out == (TRAIN_IMAGES - position) % (ranks * BATCH)
        assert 0 <= left_out < ranks * BATCH  # at most the final remainder, less than one global batch
        if order == "random":  # the epoch's own global order, whatever the rank count
            assert set(trained) == set(RandomOrder(np.arange(TRAIN_IMAGES), seed=SEED).sample_order(0)[:len(trained)])


def wait_for_event(folder: Path, launcher: subprocess.Popen, **wanted: object) -> None:
    deadline = time.monotonic() + 300
    log = folder / "log.jsonl"
    while not (log.is_file() and any(all(record.get(key) == value for key, value in wanted.items())
                                     for record in map(json.loads, log.read_text().splitlines()))):
        assert launcher.poll() is None and time.monotonic() < deadline, f"no {wanted} before the run ended"
        time.sleep(0.05)


def test_a_rank_killed_under_max_restarts_is_restarted_and_the_run_finishes(demo_betons: dict,
                                                                           tmp_path: Path) -> None:
    """torchrun --max-restarts=1, rank 1 SIGKILLed in epoch 1 after a checkpoint inside it: torchrun
    restarts both ranks, which meet again (a store prefix per attempt), resume inside epoch 1 and
    finish; every epoch is logged once."""
    args = tiny_overrides(demo_betons, tmp_path, **{"training.epochs": 2, "resolution.fixres_epochs": 0,
                                                     "logging.checkpoint_minutes": 0.002, "dist.timeout_s": 60,
                                                     "validation.resolutions": "[]"})
    launcher = subprocess.Popen(torchrun_command(args, nproc=2, max_restarts=1), cwd=REPO, env=cpu_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_event(tmp_path, launcher, kind="event", event="checkpoint", epoch=1)
    ranks = [child for child in psutil.Process(launcher.pid).children(recursive=True)
             if child.environ().get("RANK") == "1"]
    assert len(ranks) == 1
    ranks[0].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    output, _ = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, output[-4000:]
    assert [record["epoch"] for record in epoch_records(tmp_path)] == [0, 1]
    event = resumed_event(tmp_path)
    assert event["attempt"] == 1 and event["epoch"] == 1 and event["samples_in_epoch"] > 0
    assert "torchrun restart 1" in output
    assert time.monotonic() - killed < 240
