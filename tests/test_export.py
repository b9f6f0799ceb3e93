"""python -m ffcv_imagenet.export as users run it: alone and under torchrun (gloo, CPU), on a trained tiny run."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import models

from ffcv_imagenet.beton_format import labels as beton_labels
from ffcv_imagenet.beton_format import load_class_names, open_beton
from ffcv_imagenet.cli import EXIT_ERROR, EXIT_INTERRUPTED
from ffcv_imagenet.export_files import MANIFEST, PARTIAL_SUFFIX
from ffcv_imagenet.checkpointing import FINAL_WEIGHTS
from helpers import (DEMO_RECIPE, REPO, cpu_env, epoch_records, explain, export_command, run, sigint_not_ignored,
                     torchrun_command)

ARRAYS = ("probs.npy", "embeddings.npy", "logits.npy", "labels.npy")
RESNET18_EMBEDDING = 512


def export_args(tiny_run: tuple[Path, list[str]], weights: str, dataset: Path, out: Path, *extra: str) -> list[str]:
    folder, overrides = tiny_run
    return ["--config", str(DEMO_RECIPE), *overrides, "--weights", str(folder / weights), "--dataset", str(dataset),
            "--out", str(out), *extra]


@pytest.fixture(scope="module")
def val_export(tiny_run: tuple[Path, list[str]], demo_betons: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One rank, the val set at the logged resolution (64) and at 32, with logits, from checkpoints/last.pt."""
    out = tmp_path_factory.mktemp("val_export")
    result = run(export_command(export_args(tiny_run, "checkpoints/last.pt", demo_betons["val"], out,
                                            "--res", "64", "32", "--logits")))
    assert result.returncode == 0, explain(result)
    return out


def test_rows_are_the_beton_records_in_order(val_export: Path, demo_betons: dict) -> None:
    expected_labels = beton_labels(open_beton(demo_betons["val"]))
    classes = load_class_names(demo_betons["val"])
    for res in (64, 32):
        folder = val_export / f"res{res}"
        assert sorted(p.name for p in folder.iterdir()) == sorted([*ARRAYS, MANIFEST])  # no partial left
        probs, embeddings, logits, labels = (np.load(folder / name) for name in ARRAYS)
        count = len(expected_labels)
        assert probs.shape == logits.shape == (count, len(classes)) and probs.dtype == np.float32
        assert embeddings.shape == (count, RESNET18_EMBEDDING)
        np.testing.assert_array_equal(labels, expected_labels)
        np.testing.assert_allclose(probs, torch.from_numpy(logits).softmax(1).numpy(), rtol=1e-5, atol=1e-7)
        manifest = json.loads((folder / MANIFEST).read_text())
        assert manifest["resolution"] == res and manifest["count"] == count and manifest["classes"] == classes
        assert manifest["flip_tta"] is True and manifest["crop_ratio"] == pytest.approx(224 / 256)
        assert manifest["weights"].endswith("last.pt") and manifest["recipe"]["model"]["arch"] == "resnet18"


def test_embeddings_are_the_classifiers_input(val_export: Path, tiny_run: tuple[Path, list[str]]) -> None:
    """torchvision's own fc applied to the saved embeddings gives the saved logits."""
    model = models.resnet18(num_classes=6)
    model.load_state_dict(torch.load(tiny_run[0] / FINAL_WEIGHTS, weights_only=True))
    embeddings = torch.from_numpy(np.load(val_export / "res64" / "embeddings.npy"))
    with torch.no_grad():
        recomputed = model.fc(embeddings).numpy()
    np.testing.assert_allclose(recomputed, np.load(val_export / "res64" / "logits.npy"), rtol=1e-4, atol=1e-4)


def test_evaluate_saved_equals_the_logged_top1(val_export: Path, tiny_run: tuple[Path, list[str]]) -> None:
    result = run(export_command(["--evaluate-saved", str(val_export)]))
    assert result.returncode == 0, explain(result)
    printed = {int(line.split()[1].rstrip(":")): line for line in result.stdout.splitlines()}
    assert sorted(printed) == [32, 64]
    logged = epoch_records(tiny_run[0])[-1]  # evaluated at validation.resolution = 64, flip TTA on
    hits1, count = map(int, printed[64].split("(")[1].split(")")[0].split("/"))
    hits5 = int(printed[64].split("(")[2].split("/")[0])
    assert count == logged["val_count"]
    assert hits1 / count == pytest.approx(logged["val_top1"]) and hits5 / count == pytest.approx(logged["val_top5"])
    assert "from logits" in printed[64]


def test_evaluate_saved_from_probabilities_alone(val_export: Path, tiny_run: tuple[Path, list[str]],
                                                 tmp_path: Path) -> None:
    """Without logits, from the softmax: top-1 is the logged one (top-5 may differ only by classes whose
    probabilities underflowed to 0 and tie)."""
    folder = tmp_path / "res64"
    shutil.copytree(val_export / "res64", folder)
    (folder / "logits.npy").unlink()
    result = run(export_command(["--evaluate-saved", str(folder)]))  # one resolution's folder
    assert result.returncode == 0, explain(result)
    assert "from probs" in result.stdout
    hits1, count = map(int, result.stdout.split("(")[1].split(")")[0].split("/"))
    assert hits1 / count == pytest.approx(epoch_records(tiny_run[0])[-1]["val_top1"])


def test_two_ranks_write_the_rows_of_one_rank(val_export: Path, tiny_run: tuple[Path, list[str]],
                                               demo_betons: dict, tmp_path: Path) -> None:
    """Rank r writes records r, r+2, ... into the shared files: every row once, identical to one rank's
    export (which read checkpoints/last.pt; this reads final_weights.pt: the same weights)."""
    args = export_args(tiny_run, FINAL_WEIGHTS, demo_betons["val"], tmp_path, "--res", "32", "--logits")
    result = run(torchrun_command(args, nproc=2, module="ffcv_imagenet.export"))
    assert result.returncode == 0, explain(result)
    assert result.stdout.count("42 images") == 1  # rank 0 alone reports
    for name in ARRAYS:
        np.testing.assert_array_equal(np.load(tmp_path / "res32" / name), np.load(val_export / "res32" / name))
    assert json.loads((tmp_path / "res32" / MANIFEST).read_text())["ranks"] == 2


def test_train_set_in_float16(tiny_run: tuple[Path, list[str]], demo_betons: dict, tmp_path: Path) -> None:
    result = run(export_command(export_args(tiny_run, FINAL_WEIGHTS, demo_betons["train"], tmp_path,
                                            "--res", "32", "--float16")))
    assert result.returncode == 0, explain(result)
    folder = tmp_path / "res32"
    assert not (folder / "logits.npy").exists()
    probs, embeddings = np.load(folder / "probs.npy"), np.load(folder / "embeddings.npy")
    expected_labels = beton_labels(open_beton(demo_betons["train"]))
    assert probs.dtype == embeddings.dtype == np.float16 and probs.shape == (len(expected_labels), 6)
    np.testing.assert_allclose(probs.astype(np.float32).sum(axis=1), 1.0, atol=1e-2)
    np.testing.assert_array_equal(np.load(folder / "labels.npy"), expected_labels)


def test_interrupted_export_leaves_no_file_at_the_final_names(tiny_run: tuple[Path, list[str]], demo_betons: dict,
                                                              tmp_path: Path) -> None:
    command = export_command(export_args(tiny_run, FINAL_WEIGHTS, demo_betons["train"], tmp_path, "--res", "32"))
    with sigint_not_ignored():
        process = subprocess.Popen(command, cwd=REPO, env=cpu_env(), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
    folder = tmp_path / "res32"
    deadline = time.monotonic() + 300
    while not (folder.is_dir() and any(p.name.endswith(PARTIAL_SUFFIX) for p in folder.iterdir())):
        assert process.poll() is None and time.monotonic() < deadline, "the export ended before it was interrupted"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=300)
    if process.returncode == 0:  # it finished first; nothing was interrupted
        pytest.fail(f"the export finished before the interrupt reached it\n{stdout}\n{stderr}")
    assert process.returncode == EXIT_INTERRUPTED, f"{stdout}\n{stderr}"
    assert len(stderr.strip().splitlines()) == 1 and "interrupted" in stderr
    assert list(folder.iterdir()) == []  # neither final files nor partial ones


CTRL_C_IN_LLVM_CALLBACK = """
import os, signal, sys, time
import llvmlite.binding as llvm
if sys.argv[1] == "ours":
    from ffcv_imagenet.cli import interrupt_outside_native_callbacks
    interrupt_outside_native_callbacks()
llvm.initialize_native_target()
llvm.initialize_native_asmprinter()
machine = llvm.Target.from_default_triple().create_target_machine()
engine = llvm.create_mcjit_compiler(llvm.parse_assembly("define i32 @one() {\\n ret i32 1\\n}\\n"), machine)
def notify(module, buffer):  # LLVM's C code calls this while it emits the object, as in numba's compiles
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.3)
engine.set_object_cache(notify)
try:
    engine.finalize_object()
    time.sleep(5)
    print("not interrupted")
except KeyboardInterrupt:
    print("interrupted")
"""


CTRL_C_IN_A_FINALIZER = """
import gc, os, signal, sys, time, weakref
if sys.argv[1] == "ours":
    from ffcv_imagenet.cli import interrupt_outside_native_callbacks
    interrupt_outside_native_callbacks()
def ctrl_c():  # a Ctrl-C that lands while the garbage collector runs a clean-up
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.3)
class WithDel:
    def __del__(self):
        ctrl_c()
class Plain:
    pass
try:
    if sys.argv[2] == "__del__":
        WithDel()
    else:
        weakref.finalize(Plain(), ctrl_c)
    gc.collect()
    time.sleep(5)
    print("not interrupted")
except KeyboardInterrupt:
    print("interrupted")
"""
WHERE_PYTHON_DROPS_IT = {"llvm callback": (CTRL_C_IN_LLVM_CALLBACK, []),
                         "__del__": (CTRL_C_IN_A_FINALIZER, ["__del__"]),
                         "weakref.finalize": (CTRL_C_IN_A_FINALIZER, ["finalize"])}


@pytest.mark.parametrize("handler", ["python", "ours"])
@pytest.mark.parametrize("where", list(WHERE_PYTHON_DROPS_IT))
def test_a_ctrl_c_where_python_drops_it_is_not_lost(handler: str, where: str) -> None:
    """Python's own handler raises KeyboardInterrupt inside an llvmlite callback, a ``__del__`` or a
    ``weakref.finalize`` callback, where it is printed and dropped (an export interrupted early in its
    numba compile ran on to its end; numba's dispatchers have such a finalizer); ours delivers it after."""
    script, args = WHERE_PYTHON_DROPS_IT[where]
    with sigint_not_ignored():
        result = subprocess.run([sys.executable, "-c", script, handler, *args], capture_output=True,
                                text=True, cwd=REPO, timeout=60)
    if handler == "python":
        assert result.stdout.strip() == "not interrupted" and "Exception ignored" in result.stderr
    else:
        assert result.stdout.strip() == "interrupted" and result.stderr == "", result.stderr


def test_after_an_interrupt_half_built_objects_stay_quiet() -> None:
    """A Ctrl-C inside numba's compiler leaves objects whose clean-up fails as they are collected
    (llvmlite's PassBuilder): the one line stays the only one."""
    code = ("import sys\nfrom ffcv_imagenet.cli import interrupted\n"
            "class HalfBuilt:\n    def __del__(self):\n        raise AttributeError('no _as_parameter_')\n"
            "left_behind = HalfBuilt()\nsys.exit(interrupted('prog', 'interrupted'))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == EXIT_INTERRUPTED and result.stderr == "prog: error: interrupted\n", result.stderr


@pytest.fixture(scope="module")
def three_class_val(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real .beton with other classes: three of the demo's six."""
    from ffcv_imagenet.convert.conversion import ConversionSettings, convert_imagefolder

    root = tmp_path_factory.mktemp("three_classes")
    for folder in sorted((demo_root / "val").iterdir())[:3]:
        shutil.copytree(folder, root / "val" / folder.name)
    beton = root / "val.beton"
    convert_imagefolder(root / "val", beton, ConversionSettings(max_resolution=64, num_workers=1), progress=False)
    return beton


@pytest.mark.parametrize("case", ["resolution", "arch", "classes", "missing"])
def test_bad_input_is_one_line_and_exit_2(case: str, tiny_run: tuple[Path, list[str]], demo_betons: dict,
                                          request: pytest.FixtureRequest, tmp_path: Path) -> None:
    dataset, weights, extra, expected = demo_betons["val"], FINAL_WEIGHTS, ["--res", "64"], ""
    if case == "resolution":
        extra, expected = ["--res", "64", "0"], "--res: resolutions must be positive, got 0"
    elif case == "arch":  # resnet18 weights into a resnet50
        extra, expected = [*extra, "--model.arch=resnet50"], "--weights: "
    elif case == "classes":
        dataset = request.getfixturevalue("three_class_val")
        expected = "has 3 classes but the weights"
    elif case == "missing":
        weights, expected = "nothing.pt", "does not exist"
    result = run(export_command(export_args(tiny_run, weights, dataset, tmp_path / "out", *extra)))
    assert result.returncode == EXIT_ERROR, explain(result)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("python -m ffcv_imagenet.export: error: ")
    assert expected in result.stderr, result.stderr
    if case == "arch":
        assert "does not fit model.arch=resnet50" in result.stderr
    assert not (tmp_path / "out" / "res64").exists()


def test_evaluate_saved_of_a_folder_without_export(tmp_path: Path) -> None:
    result = run(export_command(["--evaluate-saved", str(tmp_path)]))
    assert result.returncode == EXIT_ERROR and result.stderr.count("\n") == 1
    assert "holds no finished export" in result.stderr
