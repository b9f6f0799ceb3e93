"""A checkpoint records the identity of its training set (dataset_identity): a resume on a changed
one is refused in one line, before any work; a copy of the same file elsewhere has the same identity;
a checkpoint from before identities resumes as it always did. Built on conftest's finished tiny run: no training
here, each command below stops, or finds the run finished, before its first batch."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from helpers import explain, run, train_command

from ffcv_imagenet.beton_header import HEADER_DTYPE, read_field_descriptors, read_layout
from ffcv_imagenet.checkpointing import last_checkpoint_path, save_file
from ffcv_imagenet.cli import EXIT_ERROR
from ffcv_imagenet.dataset_identity import dataset_identity, identity_change

LABEL = "label"


def copy_dataset(beton: Path, folder: Path) -> Path:
    """``beton`` and the files beside it (sidecar, index) copied to ``folder``: new inode, new times."""
    folder.mkdir(parents=True, exist_ok=True)
    for file in [beton, *beton.parent.glob(beton.name + ".*")]:
        shutil.copyfile(file, folder / file.name)
    return folder / beton.name


def relabel_first_record(beton: Path) -> None:
    """Give record 0 the next of the file's labels, in place: same size, still a sound dataset."""
    layout = read_layout(beton)
    labels = layout.column(LABEL)
    column_offset = layout.metadata.dtype.fields[f"f{layout.field_names.index(LABEL)}"][1]
    with open(beton, "r+b") as handle:
        handle.seek(HEADER_DTYPE.itemsize + read_field_descriptors(beton).nbytes + column_offset)
        handle.write(np.int64((labels[0] + 1) % (labels.max() + 1)).tobytes())


def resume_command(tiny_run: tuple[Path, list[str]], folder: Path, train: Path) -> list[str]:
    """The tiny run's own command, on a copy of its run folder and another training file path."""
    original, overrides = tiny_run
    shutil.copytree(original, folder)
    kept = [arg for arg in overrides if not arg.startswith(("--logging.folder=", "--data.train_dataset="))]
    return train_command([*kept, f"--logging.folder={folder}", f"--data.train_dataset={train}"])


def test_identity_survives_a_copy_and_tells_what_changed(demo_betons: dict, tmp_path: Path) -> None:
    original = dataset_identity(demo_betons["train"])
    copy = copy_dataset(demo_betons["train"], tmp_path / "other-disk")
    assert dataset_identity(copy) == original
    relabel_first_record(copy)
    assert identity_change(original, dataset_identity(copy)) == (
        "same size, but its metadata table (labels, image sizes, record places) differs")
    other = dataset_identity(demo_betons["val"])
    assert identity_change(original, other).startswith("its size changed: ")


def test_a_changed_training_set_is_refused_in_one_line_and_an_older_checkpoint_resumes_on_it(
        tiny_run: tuple[Path, list[str]], demo_betons: dict, tmp_path: Path) -> None:
    """(A resume on the same file, or a copy, goes on: every resume test does it; dataset_identity is
    the same for a copy, above.)"""
    train = copy_dataset(demo_betons["train"], tmp_path / "data")
    relabel_first_record(train)  # re-converted: same size, one label moved
    command = resume_command(tiny_run, tmp_path / "run", train)
    checkpoint = last_checkpoint_path(tmp_path / "run")
    saved = checkpoint.read_bytes()
    refused = run(command)
    assert refused.returncode == EXIT_ERROR, explain(refused)
    assert refused.stderr.count("\n") == 1, explain(refused)
    assert f"data.train_dataset: {train} is not the training set checkpoint {checkpoint}" in refused.stderr
    assert "metadata table" in refused.stderr
    assert checkpoint.read_bytes() == saved  # nothing lost, nothing written

    state = torch.load(checkpoint, weights_only=True)
    del state["train_dataset"]  # as checkpoints written before the record
    save_file(checkpoint, state)
    resumed = run(command)
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout, explain(resumed)
