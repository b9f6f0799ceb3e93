"""Conversion on real files: dirty inputs, round trip, class maps, errors, interruption."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ffcv.fields.basics import IntDecoder
from ffcv.fields.rgb_image import SimpleRGBImageDecoder
from ffcv.loader import Loader, OrderOption
from PIL import Image

from ffcv_imagenet.conversion import (ConversionError, ConversionSettings, convert_imagefolder, load_class_names,
                                      load_rgb, sidecar_path, skipped_report_path)
from ffcv_imagenet.inspection import labels, open_beton

REPO = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth colour field with grain: compresses like a photograph, not like noise."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    return np.clip(np.asarray(coarse) + rng.normal(0, 6, (height, width, 3)), 0, 255).astype(np.uint8)


def save(path: Path, image: Image.Image, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


# name -> (expected in .beton?, builder(path))
def build_dirty_tree(root: Path) -> dict[str, bool]:
    a, b = root / "class_a", root / "class_b"
    good = save(a / "good_upper.JPEG", Image.fromarray(photo(60, 80, 1)), quality=90)
    save(a / "cmyk.jpg", Image.fromarray(photo(50, 70, 2)).convert("CMYK"), quality=90)
    save(a / "gray.jpg", Image.fromarray(photo(40, 40, 3)).convert("L"), quality=90)
    data = good.read_bytes()
    (a / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (a / "empty.jpg").write_bytes(b"")
    (a / "garbage.jpg").write_bytes(RNG.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    (a / "README.txt").write_text("not an image")
    (a / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    save(a / ".hidden.jpg", Image.fromarray(photo(30, 30, 4)), quality=90)
    save(a / "palette.png", Image.fromarray(photo(32, 48, 5)).convert("P", palette=Image.ADAPTIVE))
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)
    rgba[:10, :, :] = (255, 0, 0, 255)  # top half opaque red, bottom half fully transparent
    save(a / "rgba.png", Image.fromarray(rgba, "RGBA"))
    grey16 = np.full((16, 16), 65535, dtype=np.uint16)
    grey16[8:] = 32768
    save(a / "grey16.png", Image.fromarray(grey16))
    save(b / "one_pixel.png", Image.fromarray(np.full((1, 1, 3), 200, dtype=np.uint8)))
    save(b / "large.jpg", Image.fromarray(photo(3000, 4000, 6)), quality=85)
    save(b / "bitmap.bmp", Image.fromarray(photo(30, 40, 7)))
    save(b / "web.webp", Image.fromarray(photo(30, 40, 8)))
    outside = save(root.parent / "elsewhere" / "target.jpg", Image.fromarray(photo(30, 40, 9)), quality=90)
    os.symlink(outside, b / "linked.jpg")
    os.symlink(root.parent / "elsewhere" / "missing.jpg", b / "dangling.jpg")
    return {"good_upper.JPEG": True, "cmyk.jpg": True, "gray.jpg": True, "truncated.jpg": False,
            "empty.jpg": False, "garbage.jpg": False, "README.txt": False, ".DS_Store": False,
            ".hidden.jpg": False, "palette.png": True, "rgba.png": True, "grey16.png": True,
            "one_pixel.png": True, "large.jpg": True, "bitmap.bmp": True, "web.webp": True,
            "linked.jpg": True, "dangling.jpg": False}


@pytest.fixture(scope="module")
def dirty(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("dirty")
    root = base / "tree"
    expected = build_dirty_tree(root)
    out = base / "out" / "dirty.beton"
    summary = convert_imagefolder(root, out, ConversionSettings(max_resolution=500, num_workers=2), progress=False)
    return {"root": root, "expected": expected, "out": out, "summary": summary}


def test_dirty_files_are_skipped_and_reported(dirty: dict) -> None:
    report = skipped_report_path(dirty["out"]).read_text().splitlines()
    skipped_names = {Path(line.split("\t")[0]).name: line.split("\t")[1] for line in report}
    bad = {name for name, ok in dirty["expected"].items() if not ok}
    assert set(skipped_names) == bad
    assert "truncated" in skipped_names["truncated.jpg"]
    assert skipped_names["empty.jpg"] == "empty file"
    assert "unreadable" in skipped_names["garbage.jpg"]
    assert skipped_names[".hidden.jpg"] == "hidden file"
    assert "extension" in skipped_names["README.txt"]
    assert "symbolic link" in skipped_names["dangling.jpg"]
    assert dirty["summary"].skipped == len(bad)


def test_good_files_become_records_with_their_labels(dirty: dict) -> None:
    reader = open_beton(dirty["out"])
    good_per_class = {"class_a": 0, "class_b": 0}
    for name, ok in dirty["expected"].items():
        if ok:
            folder = "class_a" if (dirty["root"] / "class_a" / name).exists() else "class_b"
            good_per_class[folder] += 1
    assert reader.num_samples == dirty["summary"].images == sum(good_per_class.values())
    assert np.bincount(labels(reader)).tolist() == [good_per_class["class_a"], good_per_class["class_b"]]
    meta = json.loads(sidecar_path(dirty["out"]).read_text())
    assert meta["classes"] == ["class_a", "class_b"] and meta["num_images"] == reader.num_samples
    assert meta["settings"]["max_resolution"] == 500


def test_large_photo_is_stored_at_max_resolution(dirty: dict) -> None:
    reader = open_beton(dirty["out"])
    meta = reader.metadata["f0"]
    assert max(int(meta["width"].max()), int(meta["height"].max())) == 500


def test_odd_modes_decode_to_sensible_rgb(dirty: dict) -> None:
    a = dirty["root"] / "class_a"
    rgba = load_rgb(str(a / "rgba.png"), 500)
    assert rgba.shape == (20, 20, 3) and rgba.dtype == np.uint8
    assert (rgba[:10] == (255, 0, 0)).all() and (rgba[10:] == 255).all()  # transparent -> white
    grey16 = load_rgb(str(a / "grey16.png"), 500)
    assert (grey16[:8] == 255).all() and (np.abs(grey16[8:].astype(int) - 127) <= 1).all()
    gray = load_rgb(str(a / "gray.jpg"), 500)
    assert gray.shape == (40, 40, 3) and (gray[..., 0] == gray[..., 2]).all()
    cmyk = load_rgb(str(a / "cmyk.jpg"), 500)
    original = np.asarray(Image.open(a / "good_upper.JPEG"))  # different image, so only check range/shape
    assert cmyk.shape == (50, 70, 3) and original.ndim == 3 and 20 < cmyk.mean() < 235
    palette = load_rgb(str(a / "palette.png"), 500)
    assert palette.shape == (32, 48, 3)


def test_round_trip_pixels_and_labels(tmp_path: Path) -> None:
    """Raw records: every pixel and label read back through FFCV's Loader equals the source."""
    sources = {}
    for label, name in enumerate(("cat", "dog", "emu")):
        for k in range(4):
            pixels = photo(24, 32, seed=10 * label + k)
            path = save(tmp_path / "tree" / name / f"{k}.png", Image.fromarray(pixels))
            sources[(label, k)] = (path, pixels)
    out = tmp_path / "rt.beton"
    convert_imagefolder(tmp_path / "tree", out, ConversionSettings(write_mode="raw", num_workers=2), progress=False)
    loader = Loader(str(out), batch_size=12, num_workers=1, order=OrderOption.SEQUENTIAL,
                    pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]})
    images, label_batch = next(iter(loader))
    expected = [sources[key] for key in sorted(sources)]  # class order, then file name order
    assert label_batch[:, 0].tolist() == [key[0] for key in sorted(sources)]
    for image, (_, pixels) in zip(images, expected):
        np.testing.assert_array_equal(image, pixels)


def test_val_follows_train_class_map(demo_betons: dict, demo_root: Path) -> None:
    assert load_class_names(demo_betons["val"]) == load_class_names(demo_betons["train"])
    assert load_class_names(demo_betons["train"]) == sorted(p.name for p in (demo_root / "train").iterdir())


def test_val_class_missing_from_train_is_refused(tmp_path: Path, demo_betons: dict) -> None:
    save(tmp_path / "val" / "n99999999" / "x.jpg", Image.fromarray(photo(20, 20)), quality=90)
    with pytest.raises(ConversionError, match="n99999999"):
        convert_imagefolder(tmp_path / "val", tmp_path / "v.beton", class_map=demo_betons["train"], progress=False)


def test_cap_and_subset_are_deterministic(demo_root: Path, tmp_path: Path) -> None:
    capped = convert_imagefolder(demo_root / "train", tmp_path / "cap.beton",
                                 ConversionSettings(max_per_class=3, num_workers=2), progress=False)
    assert capped.images == 3 * len(load_class_names(tmp_path / "cap.beton"))
    first = convert_imagefolder(demo_root / "train", tmp_path / "s1.beton",
                                ConversionSettings(subset=10, seed=5, num_workers=2), progress=False)
    second = convert_imagefolder(demo_root / "train", tmp_path / "s2.beton",
                                 ConversionSettings(subset=10, seed=5, num_workers=2), progress=False)
    assert first.images == second.images == 10
    assert labels(open_beton(tmp_path / "s1.beton")).tolist() == labels(open_beton(tmp_path / "s2.beton")).tolist()


def run_cli(*args: str, **kwargs: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "write_datasets.py"), *args],
                          capture_output=True, text=True, **kwargs)


@pytest.mark.parametrize("case", ["missing_root", "no_class_folders", "class_without_images", "unwritable_output",
                                  "bad_option"])
def test_errors_before_work_are_one_line(case: str, tmp_path: Path) -> None:
    root, out = tmp_path / "root", tmp_path / "out" / "x.beton"
    if case == "no_class_folders":
        save(root / "loose.jpg", Image.fromarray(photo(20, 20)), quality=90)
    if case in ("class_without_images", "unwritable_output", "bad_option"):
        save(root / "good" / "a.jpg", Image.fromarray(photo(20, 20)), quality=90)
    if case == "class_without_images":
        (root / "empty_class").mkdir()
        (root / "empty_class" / "notes.txt").write_text("x")
    if case == "unwritable_output":
        (tmp_path / "a_file").write_text("x")
        out = tmp_path / "a_file" / "x.beton"
    extra = ["--jpeg-quality", "0"] if case == "bad_option" else []
    result = run_cli("convert", str(root), str(out), "--workers", "1", *extra)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("write_datasets.py: error:"), result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_inspect_prints_counts_histogram_and_decodes(demo_betons: dict) -> None:
    result = run_cli("inspect", str(demo_betons["train"]))
    assert result.returncode == 0, result.stderr
    assert "records" in result.stdout and "label histogram" in result.stdout and "decoded the first" in result.stdout
    count = open_beton(demo_betons["train"]).num_samples
    assert f"{count} records" in result.stdout


def test_interrupted_conversion_leaves_nothing_behind(tmp_path: Path) -> None:
    for k in range(240):
        save(tmp_path / "tree" / f"c{k % 3}" / f"{k}.jpg", Image.fromarray(photo(700, 900, seed=k)), quality=90)
    out = tmp_path / "out" / "train.beton"
    out.parent.mkdir()
    out.write_bytes(b"previous good file")
    process = subprocess.Popen([sys.executable, str(REPO / "write_datasets.py"), "convert", str(tmp_path / "tree"),
                                str(out), "--workers", "1", "--chunk-size", "4", "--write-mode", "jpg"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 60
    while not list(out.parent.glob(".train.beton.*.tmp")) and time.time() < deadline:
        time.sleep(0.05)
    assert list(out.parent.glob(".train.beton.*.tmp")), "conversion never started writing"
    time.sleep(0.5)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    process.wait(timeout=60)
    assert process.returncode != 0
    assert out.read_bytes() == b"previous good file"
    assert not list(out.parent.glob("*.tmp")) and not sidecar_path(out).exists()
