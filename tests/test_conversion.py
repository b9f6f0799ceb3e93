"""Conversion on real files: round trip through FFCV's Loader, class maps, selection, write modes,
and the command line (errors before work, a full disk, Ctrl-C, inspect, imagenet, demo)."""
from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from ffcv.fields.basics import IntDecoder
from ffcv.fields.rgb_image import SimpleRGBImageDecoder
from ffcv.loader import Loader, OrderOption
from PIL import Image

from ffcv_imagenet.convert.conversion import (ConversionError, ConversionSettings, convert_imagefolder, load_class_names,
                                      sidecar_path, skipped_report_path)
from ffcv_imagenet.convert.inspection import image_metadata, labels, open_beton

from helpers import sigint_not_ignored

REPO = Path(__file__).resolve().parents[1]
JPEG_TOLERANCE = 4.0  # mean absolute difference after one JPEG round trip at quality 90
EXIT_ERROR, EXIT_INTERRUPTED = 2, 130
WRITING = re.compile(r"write train\.beton: +\d+%\|[^|]*\| *[1-9]\d*/")  # the write bar, past its first image


def photo(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth colour field with a little grain: compresses like a photograph."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (3, 3, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    return np.clip(np.asarray(coarse) + rng.normal(0, 2, (height, width, 3)), 0, 255).astype(np.uint8)


def save(path: Path, pixels: np.ndarray, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **kwargs)
    return path


def make_tree(root: Path, classes: dict[str, int], size: tuple[int, int] = (24, 32)) -> dict[tuple[str, int], np.ndarray]:
    """PNG ImageFolder: {class name: image count}; returns the pixels of every file."""
    pixels = {}
    for index, (name, count) in enumerate(sorted(classes.items())):
        for k in range(count):
            pixels[name, k] = photo(*size, seed=100 * index + k)
            save(root / name / f"{k:03d}.png", pixels[name, k])
    return pixels


def load_all(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every record, in order, through FFCV's Loader (images of one size)."""
    count = open_beton(path).num_samples
    loader = Loader(str(path), batch_size=count, num_workers=1, order=OrderOption.SEQUENTIAL,
                    pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]})
    images, label_batch = next(iter(loader))
    return np.asarray(images), np.asarray(label_batch[:, 0])


def test_round_trip_raw_is_exact_and_jpg_is_close(tmp_path: Path) -> None:
    sources = make_tree(tmp_path / "tree", {"cat": 4, "dog": 4, "emu": 4})
    expected_labels = [["cat", "dog", "emu"].index(name) for name, _ in sorted(sources)]
    expected = [sources[key] for key in sorted(sources)]  # class order, then file name order
    for mode in ("raw", "jpg"):
        out = tmp_path / f"{mode}.beton"
        convert_imagefolder(tmp_path / "tree", out, ConversionSettings(write_mode=mode, num_workers=2,
                                                                       record_order="folder"), progress=False)
        images, label_values = load_all(out)
        assert label_values.tolist() == expected_labels
        for image, pixels in zip(images, expected):
            if mode == "raw":
                np.testing.assert_array_equal(image, pixels)
            else:
                assert np.abs(image.astype(int) - pixels).mean() <= JPEG_TOLERANCE


def test_val_follows_train_class_map(demo_betons: dict, demo_root: Path) -> None:
    assert load_class_names(demo_betons["val"]) == load_class_names(demo_betons["train"])
    assert load_class_names(demo_betons["train"]) == sorted(p.name for p in (demo_root / "train").iterdir())


def test_val_lacking_a_class_keeps_train_indices(tmp_path: Path) -> None:
    make_tree(tmp_path / "train", {"cat": 2, "dog": 2, "emu": 2})
    make_tree(tmp_path / "val", {"dog": 2, "emu": 1})
    settings = ConversionSettings(num_workers=1)
    convert_imagefolder(tmp_path / "train", tmp_path / "train.beton", settings, progress=False)
    # the class map may name the .beton or its sidecar
    for class_map in (tmp_path / "train.beton", sidecar_path(tmp_path / "train.beton")):
        convert_imagefolder(tmp_path / "val", tmp_path / "val.beton", settings, class_map=class_map, progress=False)
        assert labels(open_beton(tmp_path / "val.beton")).tolist() == [1, 1, 2]
        assert load_class_names(tmp_path / "val.beton") == ["cat", "dog", "emu"]


def test_val_class_missing_from_train_is_refused(tmp_path: Path, demo_betons: dict) -> None:
    save(tmp_path / "val" / "n99999999" / "x.jpg", photo(20, 20, 0), quality=90)
    with pytest.raises(ConversionError, match="n99999999"):
        convert_imagefolder(tmp_path / "val", tmp_path / "v.beton", class_map=demo_betons["train"], progress=False)
    assert not (tmp_path / "v.beton").exists()


def test_sidecar_must_match_its_beton(tmp_path: Path, demo_betons: dict) -> None:
    copy = tmp_path / "train.beton"
    shutil.copy(demo_betons["train"], copy)
    with pytest.raises(ConversionError, match="is missing"):
        load_class_names(copy)
    shutil.copy(sidecar_path(demo_betons["val"]), sidecar_path(copy))  # another conversion's sidecar
    with pytest.raises(ConversionError, match="different conversions"):
        load_class_names(copy)


def test_cap_probes_only_the_files_it_keeps(tmp_path: Path) -> None:
    make_tree(tmp_path / "tree", {"a": 5, "b": 5})
    for name in ("a", "b"):
        (tmp_path / "tree" / name / "zzz_garbage.png").write_bytes(b"not a png at all")
    (tmp_path / "tree" / "a" / "001.png").write_bytes(b"")  # within the cap: skipped, next file taken
    out = tmp_path / "cap.beton"
    summary = convert_imagefolder(tmp_path / "tree", out,
                                  ConversionSettings(max_per_class=3, num_workers=2, record_order="folder"),
                                  progress=False)
    assert summary.images == 6 and labels(open_beton(out)).tolist() == [0, 0, 0, 1, 1, 1]
    report = skipped_report_path(out).read_text()
    assert "001.png\tempty file" in report and "zzz_garbage" not in report  # never opened


def test_subset_is_exact_seeded_and_probes_lazily(tmp_path: Path) -> None:
    make_tree(tmp_path / "tree", {"a": 10, "b": 10, "c": 10})
    (tmp_path / "tree" / "c" / "005.png").write_bytes(b"")
    chosen = {}
    for name, seed in (("first", 5), ("again", 5), ("other", 6)):
        out = tmp_path / f"{name}.beton"
        summary = convert_imagefolder(tmp_path / "tree", out, ConversionSettings(subset=12, seed=seed, num_workers=2,
                                                                                 record_order="folder"),
                                      progress=False)
        assert summary.images == 12
        meta = image_metadata(open_beton(out))
        chosen[name] = (labels(open_beton(out)).tolist(), meta["mode"].tolist(), meta["width"].tolist())
    assert chosen["first"] == chosen["again"]  # same subset, same JPEG-or-raw choice per record
    assert chosen["first"] != chosen["other"]
    assert chosen["first"][0] == sorted(chosen["first"][0])  # written in class order


def test_smart_mode_needs_a_threshold_and_follows_it(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="smart threshold"):
        ConversionSettings(write_mode="smart")
    save(tmp_path / "tree" / "x" / "small.png", photo(20, 20, 1))
    save(tmp_path / "tree" / "x" / "large.png", photo(200, 200, 2))
    out = tmp_path / "smart.beton"
    settings = ConversionSettings(write_mode="smart", smart_threshold=20 * 20 * 3 + 1, num_workers=1,
                                  record_order="folder")
    convert_imagefolder(tmp_path / "tree", out, settings, progress=False)
    assert image_metadata(open_beton(out))["mode"].tolist() == [0, 1]  # large.png as JPEG, small.png raw


# ---------------------------------------------------------------- command line
def run_cli(*args: str, **kwargs: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "write_datasets.py"), *args], capture_output=True, text=True,
                          **kwargs)


def assert_one_error_line(result: subprocess.CompletedProcess, code: int = EXIT_ERROR) -> str:
    assert result.returncode == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and "img/s" not in line]
    assert len(lines) == 1 and lines[0].startswith("write_datasets.py:"), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def leftovers(folder: Path) -> list[Path]:
    return [path for path in folder.iterdir() if path.name.endswith(".tmp")] if folder.is_dir() else []


ERROR_CASES = {
    "missing_root": "does not exist",
    "no_class_folders": "no class folders",
    "class_without_image_files": "holds no image file",
    "class_without_readable_images": "holds no readable image",
    "output_parent_is_a_file": "cannot write",
    "output_is_a_folder": "is a folder",
    "bad_option_value": "JPEG quality",
    "unknown_option": "unrecognized arguments",
    "class_map_without_sidecar": "is missing",
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors_before_work_are_one_line(case: str, tmp_path: Path) -> None:
    root, out = tmp_path / "root", tmp_path / "out" / "x.beton"
    extra: list[str] = []
    if case != "missing_root":
        save(root / ("loose.jpg" if case == "no_class_folders" else "good/a.jpg"), photo(20, 20, 0), quality=90)
    if case == "class_without_image_files":
        (root / "empty_class").mkdir()
        (root / "empty_class" / "notes.txt").write_text("x")
    if case == "class_without_readable_images":
        (root / "broken_class").mkdir()
        (root / "broken_class" / "a.jpg").write_bytes(b"")
        (root / "broken_class" / "b.png").write_bytes(b"garbage")
    if case == "output_parent_is_a_file":
        (tmp_path / "a_file").write_text("x")
        out = tmp_path / "a_file" / "x.beton"
    if case == "output_is_a_folder":
        out.mkdir(parents=True)
    extra = {"bad_option_value": ["--jpeg-quality", "0"], "unknown_option": ["--nope"],
             "class_map_without_sidecar": ["--class-map", str(tmp_path / "train.beton")]}.get(case, [])
    line = assert_one_error_line(run_cli("convert", str(root), str(out), "--workers", "1", *extra))
    assert ERROR_CASES[case] in line
    assert not out.is_file() and not leftovers(out.parent)


def test_full_disk_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    """A file-size limit makes every write past 1 MiB fail as a full disk would (EFBIG instead of ENOSPC)."""
    make_tree(tmp_path / "tree", {"a": 3, "b": 3})
    out = tmp_path / "out" / "x.beton"
    limit = 1 << 20

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = run_cli("convert", str(tmp_path / "tree"), str(out), "--workers", "2", preexec_fn=limit_file_size,
                     timeout=120)
    assert "File too large" in assert_one_error_line(result)
    assert not out.exists() and not leftovers(out.parent)


def test_ctrl_c_leaves_nothing_and_keeps_the_previous_file(tmp_path: Path) -> None:
    # 1,200 files (hard links to a few photos): seconds of work on one worker
    for k in range(8):
        save(tmp_path / "seed" / f"{k}.jpg", photo(700, 900, seed=k), quality=90)
    for k in range(1200):
        folder = tmp_path / "tree" / f"c{k % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        os.link(tmp_path / "seed" / f"{k % 8}.jpg", folder / f"{k:04d}.jpg")
    out = tmp_path / "out" / "train.beton"
    out.parent.mkdir()
    out.write_bytes(b"previous good file")
    with sigint_not_ignored():
        process = subprocess.Popen([sys.executable, str(REPO / "write_datasets.py"), "convert",
                                    str(tmp_path / "tree"), str(out), "--workers", "1", "--chunk-size", "4",
                                    "--write-mode", "jpg"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    stderr = bytearray()

    def drain() -> None:  # keep the pipe flowing and the bar readable while we wait
        while chunk := os.read(process.stderr.fileno(), 4096):
            stderr.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    deadline = time.time() + 120
    while not WRITING.search(stderr.decode(errors="replace")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    assert process.poll() is None and leftovers(out.parent), f"never caught writing: {stderr.decode()[-300:]}"
    tree = psutil.Process(process.pid)
    workers = tree.children(recursive=True)
    shared = {m.path for p in [tree, *workers] for m in p.memory_maps() if m.path.startswith("/dev/shm/")}
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    process.wait(timeout=60)
    reader.join(timeout=10)
    result = subprocess.CompletedProcess([], process.returncode, "", stderr.decode(errors="replace"))
    assert "interrupted" in assert_one_error_line(result, EXIT_INTERRUPTED)
    assert out.read_bytes() == b"previous good file"
    assert not leftovers(out.parent) and not sidecar_path(out).exists()
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, "writer processes outlived the conversion"
    assert shared and not [path for path in shared if os.path.exists(path)], "shared memory left behind"


def test_inspect_prints_counts_histogram_sizes_and_decodes(demo_betons: dict) -> None:
    result = run_cli("inspect", str(demo_betons["train"]))
    assert result.returncode == 0, result.stderr
    reader = open_beton(demo_betons["train"])
    counts = np.bincount(labels(reader))
    heights = image_metadata(reader)["height"]
    assert f"{reader.num_samples} records" in result.stdout
    assert f"classes: {len(counts)}" in result.stdout
    for name, count in zip(load_class_names(demo_betons["train"]), counts):
        assert f"{name} {count:8d}" in result.stdout  # one histogram row per class
    assert f"stored height: min {heights.min()} / mean {heights.mean():.0f} / max {heights.max()}" in result.stdout
    assert "through FFCV's reader" in result.stdout and "through FFCV's Loader" in result.stdout


def test_inspect_of_a_foreign_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "x.beton").write_bytes(b"\x00" * 100)
    assert "not a readable .beton" in assert_one_error_line(run_cli("inspect", str(tmp_path / "x.beton")))


def test_imagenet_command_converts_train_then_val_with_its_class_map(demo_root: Path, tmp_path: Path) -> None:
    result = run_cli("imagenet", str(demo_root), str(tmp_path / "out"), "--max-per-class", "2", "--workers", "2",
                     "--record-order", "shuffled", "--no-jpeg-passthrough")
    assert result.returncode == 0, result.stderr
    summaries = [line for line in result.stdout.splitlines() if line.startswith("wrote")]
    assert len(summaries) == 2 and all("classes" in line and "img/s" in line and "KiB per image" in line
                                       for line in summaries)
    train, val = tmp_path / "out" / "train.beton", tmp_path / "out" / "val.beton"
    assert load_class_names(val) == load_class_names(train)
    assert json.loads(sidecar_path(val).read_text())["settings"]["max_per_class"] == 2
    assert json.loads(sidecar_path(train).read_text())["settings"]["jpeg_passthrough"] == "never"
    # train in a seeded random order, val in folder order (evaluation reads it all) even when shuffled is asked
    assert [json.loads(sidecar_path(path).read_text())["record_order"] for path in (train, val)] == ["shuffled",
                                                                                                    "folder"]
    assert labels(open_beton(val)).tolist() == sorted(labels(open_beton(val)).tolist())


def test_imagenet_command_checks_val_classes_before_converting_train(tmp_path: Path) -> None:
    make_tree(tmp_path / "imagenet" / "train", {"cat": 1, "dog": 1})
    make_tree(tmp_path / "imagenet" / "val", {"cat": 1, "zebra": 1})
    line = assert_one_error_line(run_cli("imagenet", str(tmp_path / "imagenet"), str(tmp_path / "out")))
    assert "zebra" in line and not (tmp_path / "out" / "train.beton").exists()


def test_demo_command_makes_and_converts_the_demo_folder(tmp_path: Path) -> None:
    result = run_cli("demo", str(tmp_path), "--classes", "2", "--train-per-class", "3", "--val-per-class", "2")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["train", "val"]
    for split, count in (("train", 6), ("val", 4)):
        sidecar = json.loads(sidecar_path(tmp_path / f"{split}.beton").read_text())
        assert sidecar["num_images"] == count and sidecar["settings"]["max_resolution"] == 256
