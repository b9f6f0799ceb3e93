"""One command for a bare GPU host: data, the GPU tests, and our step against an ffcv-imagenet-style one.

    python benchmarks/gpu_check.py --out OUT [--data DIR] [--images 20000] [--skip-tests] [--smoke]

Needs what ``bash .gpu-bundle/install.sh && pip install --no-deps --no-build-isolation -e .`` puts on a
host with Python 3.12, torch, torchvision, numba and OpenCV (no network, no plotting stack); installs
nothing itself. Budget on one H100/H200 with 16 cores: under 8 minutes. In order, each phase timed:

1. data: ``--images`` ImageNet-like photos (benchmarks/bench_conversion.py's generator, on every core:
   the demo scenes with grain and texture, long side 500 px, short side 333-500 px, JPEG quality 90),
   converted with ffcv-imagenet's ResNet-50 settings (proportion mode, at most 500 px, half JPEG);
   kept in ``--data`` (outside OUT, whose files are fetched back) and reused by a later run asking
   for the same data.
2. tests: ``pytest -m gpu tests/test_gpu.py`` (skipped, saying why, where no GPU is visible).
3. ours: ``python -m ffcv_imagenet.profile`` on rcfg/rn50_88.yaml (ResNet-50, batch 256) at 160 and
   192 px RandomResizedCrop and 224 px FixRes in fp16, and at 160 px in bf16.
4. theirs: benchmarks/ffcv_imagenet_style.py at the same sizes and precisions (FFCV's stock decoder
   and pipeline, ffcv-imagenet's step, the same model), plus the bare forward/backward/SGD step.
A phase that fails is recorded and the next one still runs; the exit status is 1 if any failed.

Writes OUT/gpu_check.json (everything), OUT/gpu_check.md (the table), OUT/logs/<phase>.txt and the
per-run JSON of each measurement. ``--smoke`` runs the same phases on the CPU with tiny sizes
(ResNet-18, batch 8, 32/48/64 px, fp32 in place of fp16, which needs a GPU), as CI does.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import importlib.metadata
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "rcfg" / "rn50_88.yaml"
TARGET_END_TO_END = 0.95  # of min(loader, model), at every size (issue 16, for the record)
TARGET_VS_THEIRS = 1.1  # ours / ffcv-imagenet style end to end at the smallest size, first precision
SHORT_SIDE_FRACTION = (2 / 3, 1.0)  # ImageNet's photos: mostly 500 x 333-500
LANDSCAPE_SHARE = 0.7
JPEG_QUALITY = 90  # the conversion's quality too
IMAGES_PER_TASK = 250
DEFAULT_DATA = Path(tempfile.gettempdir()) / "ffcv_imagenet_gpu_check"
GENERATION_SEED = 16


@dataclass(frozen=True)
class Sizes:
    images: int
    stored_side: int
    res: tuple[int, int, int]  # main phase start, main phase end, FixRes
    batch: int
    arch: str
    precisions: tuple[str, str]  # the main one (every size), the second one (smallest size)
    warmup_steps: int
    steps: int
    repeats: int
    workers: int  # loader and generation threads; 0 = every core
    timeout_s: int  # per phase


GPU = Sizes(images=20000, stored_side=500, res=(160, 192, 224), batch=256, arch="resnet50",
            precisions=("fp16", "bf16"), warmup_steps=5, steps=25, repeats=3, workers=0, timeout_s=300)
SMOKE = Sizes(images=96, stored_side=96, res=(32, 48, 64), batch=8, arch="resnet18",
              precisions=("fp32", "bf16"), warmup_steps=1, steps=2, repeats=1, workers=2, timeout_s=600)


# ---------------------------------------------------------------- data
def imagenet_sides(rng: np.random.Generator, long_side: int) -> tuple[int, int]:
    """(width, height): the long side fixed, as ImageNet's 500 px photos."""
    short_side = int(long_side * rng.uniform(*SHORT_SIDE_FRACTION))
    return (long_side, short_side) if rng.random() < LANDSCAPE_SHARE else (short_side, long_side)


def _make_part(root: Path, first: int, count: int, long_side: int) -> float:
    from bench_conversion import make_folder

    return make_folder(root, count, seed=(GENERATION_SEED, first), first=first, quality=JPEG_QUALITY,
                       size=functools.partial(imagenet_sides, long_side=long_side))


def make_photos(root: Path, images: int, long_side: int, workers: int) -> None:
    """On every core: fresh processes (spawn), since this one may already run library threads."""
    parts = [(root, first, min(IMAGES_PER_TASK, images - first), long_side)
             for first in range(0, images, IMAGES_PER_TASK)]
    if len(parts) == 1:  # a smoke run: starting processes would cost more than the work
        _make_part(*parts[0])
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.starmap(_make_part, parts)


def prepare_data(data: Path, sizes: Sizes, workers: int) -> dict:
    """The .beton (made once per set of parameters, then reused), and how long each part took."""
    from ffcv_imagenet.convert.conversion import ConversionSettings, convert_imagefolder

    wanted = {"images": sizes.images, "stored_side": sizes.stored_side, "seed": GENERATION_SEED}
    beton, stamp = data / "train.beton", data / "made_with.json"
    if beton.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return {"beton": str(beton), "reused": True, **wanted}
    shutil.rmtree(data, ignore_errors=True)
    started = time.perf_counter()
    make_photos(data / "images", sizes.images, sizes.stored_side, workers)
    generated = time.perf_counter()
    settings = ConversionSettings(num_workers=workers, max_resolution=sizes.stored_side)
    convert_imagefolder(data / "images", beton, settings, progress=False)
    os.sync()  # a freshly written file reads slower while the page cache flushes (PERF-NOTES)
    stamp.write_text(json.dumps(wanted))
    return {"beton": str(beton), "reused": False, **wanted, "generate_seconds": generated - started,
            "convert_seconds": time.perf_counter() - generated, "write_mode": settings.write_mode,
            "compress_probability": settings.compress_probability, "jpeg_quality": settings.jpeg_quality,
            "jpeg_passthrough": settings.jpeg_passthrough}


# ---------------------------------------------------------------- phases
def run_phase(name: str, command: list[str], out: Path, timeout_s: int) -> dict:
    """Run one phase's command, its output to OUT/logs/<name>.txt; never raises for the command's failure."""
    log = out / "logs" / f"{name}.txt"
    started = time.perf_counter()
    try:
        # this checkout's package first, whatever else the environment has installed
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout_s,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path})
        code, output = result.returncode, result.stdout + result.stderr
        # a phase that worked says so last on stdout (pytest's summary); warnings on stderr would hide it
        summary = result.stdout if code == 0 and result.stdout.strip() else output
    except subprocess.TimeoutExpired as err:
        code = None
        output = summary = f"{err.stdout or ''}{err.stderr or ''}\ntimed out after {timeout_s} s"
    log.write_text(f"$ {' '.join(command)}\n{output}")
    tail = summary.strip().splitlines()[-1:] or [""]
    return {"name": name, "ok": code == 0, "exit": code, "seconds": time.perf_counter() - started,
            "last_line": tail[0], "log": str(log.relative_to(out))}


def recipe_overrides(beton: str, sizes: Sizes, precision: str, folder: Path) -> list[str]:
    """rn50_88 on the generated data: one epoch per (size, crop mode), so the profile covers all three."""
    low, high, fixres = sizes.res
    settings = {"data.train_dataset": beton, "data.val_dataset": beton, "data.num_workers": sizes.workers,
                "model.arch": sizes.arch, "training.batch_size": sizes.batch, "training.precision": precision,
                "training.epochs": 3, "resolution.min_res": low, "resolution.max_res": high,
                "resolution.start_ramp": 0, "resolution.end_ramp": 1, "resolution.fixres_epochs": 1,
                "resolution.fixres_res": fixres, "logging.folder": folder, "logging.progress": False}
    return [f"--{key}={value}" for key, value in settings.items()]


def timing_args(sizes: Sizes) -> list[str]:
    return ["--warmup-steps", str(sizes.warmup_steps), "--steps", str(sizes.steps), "--repeats", str(sizes.repeats)]


def phase_commands(beton: str, sizes: Sizes, out: Path) -> dict[str, tuple[list[str], Path | None]]:
    """Each phase's command and the JSON it writes."""
    main, second = sizes.precisions
    python = sys.executable
    profile = [python, "-m", "ffcv_imagenet.profile", "--config", str(RECIPE), *timing_args(sizes)]
    runs = [f"{main}:{res}" for res in sizes.res] + [f"{second}:{sizes.res[0]}"]
    return {
        "tests": ([python, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests/test_gpu.py"], None),
        f"ours_{main}": ([*profile, *recipe_overrides(beton, sizes, main, out / "runs" / main),
                          "--out", str(out / f"ours_{main}.json")], out / f"ours_{main}.json"),
        f"ours_{second}": ([*profile, *recipe_overrides(beton, sizes, second, out / "runs" / second),
                            "--res", str(sizes.res[0]), "--out", str(out / f"ours_{second}.json")],
                           out / f"ours_{second}.json"),
        "theirs": ([python, str(REPO / "benchmarks" / "ffcv_imagenet_style.py"), "--config", str(RECIPE),
                    *recipe_overrides(beton, sizes, main, out / "runs" / "theirs"), *timing_args(sizes),
                    "--runs", *runs, "--out", str(out / "theirs.json")], out / "theirs.json"),
    }


# ---------------------------------------------------------------- the combined report
def side(row: dict, loader_key: str) -> dict:
    return {"loader": row[loader_key]["median"], "model": row["model"]["median"],
            "end_to_end": row["end_to_end"]["median"], "ratio": row["ratio"], "bottleneck": row["bottleneck"],
            "crop_mode": row["crop_mode"]}


def combine(reports: dict[str, dict], precisions: tuple[str, ...]) -> list[dict]:
    """One row per (res, precision) measured on our side, with theirs and the bare step beside it."""
    theirs = {(row["precision"], row["res"]): row for row in reports.get("theirs", {}).get("rows", [])}
    rows = []
    for precision in precisions:
        for ours in reports.get(f"ours_{precision}", {}).get("rows", []):
            row = {"res": ours["res"], "precision": precision, "ours": side(ours, "loader_device"),
                   "ours_loader_host": ours["loader_host"]["median"]}
            their = theirs.get((precision, ours["res"]))
            if their is not None:
                row["theirs"] = side(their, "loader_device")
                row["bare_step"] = their["bare_step"]["median"]
                row["ours_vs_theirs"] = ours["end_to_end"]["median"] / their["end_to_end"]["median"]
                row["our_step_vs_bare"] = ours["model"]["median"] / their["bare_step"]["median"]
            rows.append(row)
    return rows


SIDE_HEADER = "| res | precision | side | crop | loader img/s | model img/s | end to end img/s | e2e/min | bottleneck |"
SUMMARY_HEADER = "| res | precision | ours e2e / theirs e2e | ours e2e/min | our step / bare step | bare step img/s |"


def cells(values: list[object]) -> str:
    return "| " + " | ".join(str(value) for value in values) + " |"


def side_lines(row: dict) -> list[str]:
    lines = []
    for label, key in (("ours", "ours"), ("ffcv-imagenet style", "theirs")):
        if key in row:
            figures = row[key]
            lines.append(cells([row["res"], row["precision"], label, figures["crop_mode"], f"{figures['loader']:.0f}",
                                f"{figures['model']:.0f}", f"{figures['end_to_end']:.0f}",
                                f"{figures['ratio']:.3f}", figures["bottleneck"]]))
    if "bare_step" in row:
        lines.append(cells([row["res"], row["precision"], "bare step", "-", "-", f"{row['bare_step']:.0f}",
                            "-", "-", "-"]))
    return lines


def summary_line(row: dict) -> str:
    def ratio(key: str) -> str:
        return f"{row[key]:.3f}" if key in row else "-"
    return cells([row["res"], row["precision"], ratio("ours_vs_theirs"), f"{row['ours']['ratio']:.3f}",
                  ratio("our_step_vs_bare"), f"{row['bare_step']:.0f}" if "bare_step" in row else "-"])


def format_table(report: dict) -> str:
    setup, rows = report["setup"], report["rows"]
    lines = [f"# GPU check, {report['date']}", "",
             f"{setup['device_name']}, {setup['cores']} cores; torch {setup['torch']}, ffcv {setup['ffcv']}; "
             f"{report['data']['images']} images (long side {report['data']['stored_side']} px), "
             f"{setup['arch']} batch {setup['batch']}, channels-last{' (smoke run)' if report['smoke'] else ''}",
             f"img/s, median of {setup['repeats']} windows of {setup['steps']} steps; ffcv-imagenet style "
             f"normalises with {setup.get('their_normalize', '-')}", ""]
    lines += ["## Phases", "", "| phase | ok | seconds | last line |", "|---|---|---|---|"]
    for phase in report["phases"]:
        lines.append(cells([phase["name"], "yes" if phase["ok"] else "NO", f"{phase['seconds']:.0f}",
                            phase["last_line"].replace("|", "/")]))
    lines += ["", "## Side by side", "", SIDE_HEADER, "|---" * 9 + "|"]
    for row in rows:
        lines += side_lines(row)
    lines += ["", "## What our step adds, and the targets", "", SUMMARY_HEADER, "|---" * 6 + "|"]
    lines += [summary_line(row) for row in rows]
    lines += ["", f"Targets (for the record): ours e2e/min >= {TARGET_END_TO_END} at every size; ours e2e / theirs "
              f"e2e >= {TARGET_VS_THEIRS} at {rows[0]['res'] if rows else '-'} px. Theirs at the FixRes size is "
              "RandomResizedCrop (FFCV has no FixRes decoder)."]
    return "\n".join(lines) + "\n"


def describe_host(sizes: Sizes) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return {"device_name": torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.processor() or 'cpu'})",
            "cuda": cuda, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "ffcv": importlib.metadata.version("ffcv"), "arch": sizes.arch, "batch": sizes.batch,
            "steps": sizes.steps, "repeats": sizes.repeats, "warmup_steps": sizes.warmup_steps}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON, the table and the logs")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help=f"folder for the photos and the .beton, kept for reruns (default {DEFAULT_DATA})")
    parser.add_argument("--images", type=int, help=f"images to generate (default {GPU.images}; smoke {SMOKE.images})")
    parser.add_argument("--skip-tests", action="store_true", help="leave out the gpu tests (e.g. on a rerun)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks the script itself")
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else GPU
    if args.images:
        sizes = Sizes(**{**asdict(sizes), "images": args.images})
    out = args.out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    workers = sizes.workers or os.cpu_count() or 1
    started = time.perf_counter()
    data = prepare_data(args.data.resolve() / ("smoke" if args.smoke else "full"), sizes, workers)
    phases = [{"name": "data", "ok": True, "exit": 0, "seconds": time.perf_counter() - started, "log": None,
               "last_line": f"{data['images']} images{' (reused)' if data['reused'] else ''}: {data['beton']}"}]
    reports: dict[str, dict] = {}
    for name, (command, written) in phase_commands(data["beton"], sizes, out).items():
        if name == "tests" and args.skip_tests:
            continue
        phases.append(run_phase(name, command, out, sizes.timeout_s))
        print(f"gpu_check: {name}: {'ok' if phases[-1]['ok'] else 'FAILED'} in {phases[-1]['seconds']:.0f} s, "
              f"{phases[-1]['last_line']}", flush=True)
        if written is not None and written.is_file():
            reports[name] = json.loads(written.read_text())
    setup = {**describe_host(sizes), "their_normalize": reports.get("theirs", {}).get("setup", {}).get("normalize")}
    report = {"date": datetime.date.today().isoformat(), "smoke": args.smoke, "setup": setup, "data": data,
              "phases": phases, "rows": combine(reports, sizes.precisions),
              "targets": {"end_to_end_over_min": TARGET_END_TO_END, "ours_over_theirs": TARGET_VS_THEIRS},
              "seconds": time.perf_counter() - started}
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    table = format_table(report)
    (out / "gpu_check.md").write_text(table)
    print(table)
    return 0 if all(phase["ok"] for phase in phases) else 1


if __name__ == "__main__":
    sys.exit(main())
