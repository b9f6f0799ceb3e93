"""One command for a bare GPU host: the headline first, a report after every phase, inside a time budget.

    python benchmarks/gpu_check.py --out OUT [--data DIR] [--images 20000] [--budget-s 420] [--skip-tests]
        [--smoke]

Needs what ``bash .gpu-bundle/install.sh && pip install --no-deps --no-build-isolation -e .`` puts on a
host with Python 3.12, torch, torchvision, numba and OpenCV (no network, no plotting stack); installs
nothing itself. A GPU host may be lent for minutes, one command at most 10: the most important figure
comes first, OUT/gpu_check.json and OUT/gpu_check.md are rewritten after every phase (a kill keeps what
finished), and no phase starts once ``--budget-s`` seconds have passed (the report then names what was
skipped; the exit status stays 0). The phases, in order, each a process group of its own that a
timeout kills whole:

1. preflight (about 10 s): CUDA visible, versions, numba's threading layer, the CPU affinity,
   whether ``import cupy`` works. Without CUDA (and without ``--smoke``) it stops here, one line.
2. data: ``--images`` ImageNet-like photos (benchmarks/bench_conversion.py's generator, on the cores
   this process may use: the demo scenes with grain and texture, long side 500 px, short side 333-500
   px, JPEG quality 90), converted with ffcv-imagenet's ResNet-50 settings (proportion mode, at most
   500 px, half JPEG); kept in ``--data`` (outside OUT) and reused by a later run asking for the same
   data. The .beton is then read through once: conversion writes past the page cache, and every timed
   phase should find it where the others did.
3. the headline, fp16 at 160 px: ours (``python -m ffcv_imagenet.profile`` on rcfg/rn50_88.yaml,
   ResNet-50, batch 256), then theirs (benchmarks/ffcv_imagenet_style.py: FFCV's stock decoder and
   pipeline, ffcv-imagenet's step, the same model, and the bare forward/backward/SGD step).
4. tests: ``pytest -m gpu tests/test_gpu.py tests/test_gpu_path.py``.
5. ours and theirs at 192 px and FixRes 224 px (theirs: RandomResizedCrop at 224; FFCV has no FixRes
   decoder), then at 160 px in bf16.

Every timed window starts on a fresh epoch after its warm-up. A phase that fails is recorded and the
next one still runs; the exit status is 1 if any failed. OUT holds three files: gpu_check.json
(everything, each phase's full figures too), gpu_check.md (the tables) and gpu_check.log (every
phase's command and output, in order). ``--smoke`` runs the same phases on the CPU with tiny sizes
(ResNet-18, batch 8, 32/48/64 px, fp32 in place of fp16, which needs a GPU; 300 images, so the
generator's process pool runs), as the test suite does.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import importlib
import importlib.metadata
import json
import math
import multiprocessing
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's package, whatever else the environment has installed
from ffcv_imagenet.fileio import atomic_write_text  # noqa: E402  (light: no torch in this process)

RECIPE = REPO / "rcfg" / "rn50_88.yaml"
OLD_END_TO_END_FIGURE = 1.1  # ours / theirs end to end at 160 px: the old target, stated beside, not a target
END_TO_END_SHARE = 0.95  # of min(loader, model): issue 16's figure, for the record
SHORT_SIDE_FRACTION = (2 / 3, 1.0)  # ImageNet's photos: mostly 500 x 333-500
LANDSCAPE_SHARE = 0.7
JPEG_QUALITY = 90  # the conversion's quality too
IMAGES_PER_TASK = 250  # above this the generator runs in a spawn pool
DEFAULT_DATA = Path(tempfile.gettempdir()) / "ffcv_imagenet_gpu_check"
GENERATION_SEED = 16
DEFAULT_BUDGET_S = 420  # 10-minute commands: leaves the last phase started about 3 minutes
PREFLIGHT_TIMEOUT_S = 120  # it takes about 10 s; importing torch on a cold disk can take longer
READ_CHUNK = 16 << 20
EXIT_FAILED, EXIT_NO_CUDA = 1, 2
REPORT, TABLE, LOG = "gpu_check.json", "gpu_check.md", "gpu_check.log"
PREFLIGHT, DATA, OURS, THEIRS, TESTS = "preflight", "data", "ours", "theirs", "tests"
GPU_TESTS = ["tests/test_gpu.py", "tests/test_gpu_path.py"]


@dataclass(frozen=True)
class Sizes:
    images: int
    stored_side: int
    res: tuple[int, int, int]  # the headline's size, the main phase's larger size, FixRes
    batch: int
    arch: str
    precisions: tuple[str, str]  # the main one (every size), the second one (the headline size)
    warmup_steps: int
    steps: int
    repeats: int
    workers: int  # loader and generation threads; 0 = every core of the CPU affinity
    timeout_s: int  # per phase


GPU = Sizes(images=20000, stored_side=500, res=(160, 192, 224), batch=256, arch="resnet50",
            precisions=("fp16", "bf16"), warmup_steps=5, steps=25, repeats=3, workers=0, timeout_s=300)
SMOKE = Sizes(images=300, stored_side=96, res=(32, 48, 64), batch=8, arch="resnet18",
              precisions=("fp32", "bf16"), warmup_steps=1, steps=2, repeats=1, workers=2, timeout_s=600)


@dataclass(frozen=True)
class Phase:
    name: str
    kind: str  # PREFLIGHT, DATA, OURS, THEIRS or TESTS
    precision: str = ""
    res: tuple[int, ...] = ()  # RandomResizedCrop sizes (theirs: every size)
    fixres: int = 0  # ours: a FixRes size after them (0: none)


def plan_phases(sizes: Sizes) -> list[Phase]:
    """The order of issue 26: the headline (ours, theirs at the first size and precision) before anything else."""
    main, second = sizes.precisions
    low, high, fixres = sizes.res
    return [Phase(PREFLIGHT, PREFLIGHT), Phase(DATA, DATA),
            Phase(f"ours_{main}_{low}", OURS, main, (low,)), Phase(f"theirs_{main}_{low}", THEIRS, main, (low,)),
            Phase(TESTS, TESTS),
            Phase(f"ours_{main}_{high}_{fixres}", OURS, main, (high,), fixres),
            Phase(f"theirs_{main}_{high}_{fixres}", THEIRS, main, (high, fixres)),
            Phase(f"ours_{second}_{low}", OURS, second, (low,)),
            Phase(f"theirs_{second}_{low}", THEIRS, second, (low,))]


def cores() -> int:
    """The cores this process may use (a container's or SLURM's CPU affinity), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# ---------------------------------------------------------------- preflight (run in its own process)
def version_of(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def importable(module: str) -> str:
    """'ok <version>' or the import's error, in one line."""
    try:
        imported = importlib.import_module(module)
    except Exception as err:  # ImportError, or a CUDA library that fails to load
        return f"fails: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return f"ok {getattr(imported, '__version__', '')}".strip()


def numba_threading_layer() -> str:
    """The layer numba's parallel loops run on here (tbb, omp or workqueue): only known after one ran."""
    import numba

    @numba.njit(parallel=True, cache=False)
    def count(n: int) -> int:
        total = 0
        for k in numba.prange(n):
            total += k
        return total

    count(4)
    return numba.threading_layer()


def preflight_facts() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    return {"cuda": cuda, "gpus": torch.cuda.device_count() if cuda else 0,
            "device_name": torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.processor() or 'cpu'})",
            "cores": cores(), "machine_cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if cuda else None,
            **{name: version_of(name) for name in ("torchvision", "ffcv", "numba", "numpy", "opencv-python")},
            "numba_threading_layer": numba_threading_layer(),
            "cupy": importable("cupy"), "pytorch_pfn_extras": importable("pytorch_pfn_extras")}


# ---------------------------------------------------------------- data
def imagenet_sides(rng: np.random.Generator, long_side: int) -> tuple[int, int]:
    """(width, height): the long side fixed, as ImageNet's 500 px photos."""
    short_side = int(long_side * rng.uniform(*SHORT_SIDE_FRACTION))
    return (long_side, short_side) if rng.random() < LANDSCAPE_SHARE else (short_side, long_side)


def _make_part(root: Path, first: int, count: int, long_side: int) -> float:
    from bench_conversion import make_folder

    return make_folder(root, count, seed=(GENERATION_SEED, first), first=first, quality=JPEG_QUALITY,
                       size=functools.partial(imagenet_sides, long_side=long_side))


def make_photos(root: Path, images: int, long_side: int, workers: int) -> int:
    """On every core: fresh processes (spawn), since this one may already run library threads; returns
    how many (0: made here)."""
    parts = [(root, first, min(IMAGES_PER_TASK, images - first), long_side)
             for first in range(0, images, IMAGES_PER_TASK)]
    if len(parts) == 1:  # a few images: starting processes would cost more than the work
        _make_part(*parts[0])
        return 0
    processes = min(workers, len(parts))
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        pool.starmap(_make_part, parts)
    return processes


def prepare_data(data: Path, sizes: Sizes, workers: int) -> dict:
    """The .beton (made once per set of parameters, then reused), and how long each part took."""
    from ffcv_imagenet.convert.conversion import ConversionSettings, convert_imagefolder

    wanted = {"images": sizes.images, "stored_side": sizes.stored_side, "seed": GENERATION_SEED}
    beton, stamp = data / "train.beton", data / "made_with.json"
    if beton.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return {"beton": str(beton), "reused": True, **wanted}
    shutil.rmtree(data, ignore_errors=True)
    started = time.perf_counter()
    processes = make_photos(data / "images", sizes.images, sizes.stored_side, workers)
    generated = time.perf_counter()
    settings = ConversionSettings(num_workers=workers, max_resolution=sizes.stored_side)
    convert_imagefolder(data / "images", beton, settings, progress=False)
    os.sync()  # a freshly written file reads slower while the page cache flushes (PERF-NOTES)
    stamp.write_text(json.dumps(wanted))
    return {"beton": str(beton), "reused": False, **wanted, "generate_seconds": generated - started,
            "convert_seconds": time.perf_counter() - generated, "generator_processes": processes,
            "write_mode": settings.write_mode,
            "compress_probability": settings.compress_probability, "jpeg_quality": settings.jpeg_quality,
            "jpeg_passthrough": settings.jpeg_passthrough}


def read_through(path: Path) -> dict[str, float]:
    """Read the whole file once, so that every timed phase finds it in the page cache."""
    started = time.perf_counter()
    total = 0
    with open(path, "rb", buffering=0) as stream:
        while chunk := stream.read(READ_CHUNK):
            total += len(chunk)
    seconds = time.perf_counter() - started
    return {"read_bytes": total, "read_seconds": seconds, "read_gib_per_s": total / max(seconds, 1e-9) / 2**30}


def data_facts(data: Path, sizes: Sizes) -> dict[str, Any]:
    facts = prepare_data(data, sizes, sizes.workers or cores())
    return {**facts, **read_through(Path(facts["beton"]))}


# ---------------------------------------------------------------- running a phase
def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:  # nothing of the group is left
        pass


def copy_lines(source: IO[str], log: IO[str], lines: list[str]) -> None:
    """The phase's stdout into the log, keeping its last non-empty line (pytest's summary, our result)."""
    for line in source:
        log.write(line)
        log.flush()
        if line.strip():
            lines[:] = [line.strip()]


def run_phase(name: str, command: list[str], log_path: Path, timeout_s: float) -> dict[str, Any]:
    """Run one phase's command in a process group of its own, its output appended to the one log;
    the timeout kills the whole group (a pytest's or torchrun's children too). Never raises for the
    command's failure."""
    started = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    last: list[str] = []
    with open(log_path, "a", buffering=1) as log:
        log.write(f"\n===== {name} (timeout {timeout_s:.0f} s): $ {shlex.join(command)}\n")
        log.flush()
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log, text=True,
                                   start_new_session=True)
        reader = threading.Thread(target=copy_lines, args=(process.stdout, log, last), daemon=True)
        reader.start()
        try:
            code: int | None = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = None
        kill_group(process.pid)  # after a timeout, and any child the phase left behind
        process.wait()
        reader.join(timeout=10)
        if code is None:
            last[:] = [f"timed out after {timeout_s:.0f} s (process group killed)"]
        log.write(f"===== {name}: exit {code}, {time.perf_counter() - started:.1f} s\n")
    return {"name": name, "ok": code == 0, "exit": code, "seconds": time.perf_counter() - started,
            "last_line": (last or [""])[0]}


def recipe_overrides(beton: str, sizes: Sizes, phase: Phase, folder: Path) -> list[str]:
    """rn50_88 on the generated data at the phase's precision; with a FixRes size, a two-epoch schedule
    whose main phase is the phase's size, so that the profile measures exactly those two."""
    settings: dict[str, object] = {
        "data.train_dataset": beton, "data.val_dataset": beton, "data.num_workers": sizes.workers,
        "model.arch": sizes.arch, "training.batch_size": sizes.batch, "training.precision": phase.precision,
        "logging.folder": folder, "logging.progress": False}
    if phase.fixres:
        res = phase.res[0]
        settings.update({"training.epochs": 2, "resolution.min_res": res, "resolution.max_res": res,
                         "resolution.start_ramp": 0, "resolution.end_ramp": 0, "resolution.fixres_epochs": 1,
                         "resolution.fixres_res": phase.fixres})
    return [f"--{key}={value}" for key, value in settings.items()]


def timing_args(sizes: Sizes) -> list[str]:
    return ["--warmup-steps", str(sizes.warmup_steps), "--steps", str(sizes.steps), "--repeats", str(sizes.repeats)]


def phase_command(phase: Phase, args: argparse.Namespace, sizes: Sizes, beton: str, scratch: Path,
                  normalize: str = "auto") -> list[str]:
    """The phase's command; the JSON it writes, if any, is scratch/<name>.json."""
    python, result = sys.executable, scratch / f"{phase.name}.json"
    if phase.kind in (PREFLIGHT, DATA):
        own = [python, str(Path(__file__).resolve()), "--run-phase", phase.kind, "--result", str(result),
               "--out", str(args.out), "--data", str(args.data)]
        return own + (["--smoke"] if args.smoke else []) + (["--images", str(args.images)] if args.images else [])
    if phase.kind == TESTS:
        return [python, "-m", "pytest", "-q", "-rs", "-m", "gpu", "-p", "no:cacheprovider", *GPU_TESTS]
    overrides = recipe_overrides(beton, sizes, phase, scratch / "runs" / phase.name)
    if phase.kind == OURS:
        chosen = [] if phase.fixres else ["--res", *map(str, phase.res)]
        return [python, "-m", "ffcv_imagenet.profile", "--config", str(RECIPE), *overrides, *timing_args(sizes),
                *chosen, "--out", str(result)]
    return [python, str(REPO / "benchmarks" / "ffcv_imagenet_style.py"), "--config", str(RECIPE), *overrides,
            *timing_args(sizes), "--runs", *(f"{phase.precision}:{res}" for res in phase.res),
            "--normalize", normalize, "--out", str(result)]


# ---------------------------------------------------------------- the combined report
def side(row: dict, loader_key: str) -> dict:
    return {"loader": row[loader_key]["median"], "model": row["model"]["median"],
            "end_to_end": row["end_to_end"]["median"], "ratio": row["ratio"], "bottleneck": row["bottleneck"],
            "crop_mode": row["crop_mode"]}


def combine(phases: list[Phase], results: dict[str, dict]) -> list[dict]:
    """One row per (res, precision) measured on our side, in phase order, with theirs and the bare step."""
    theirs: dict[tuple[str, int], tuple[dict, str]] = {}
    for phase in phases:
        if phase.kind == THEIRS and phase.name in results:
            normalize = results[phase.name]["setup"]["normalize"]
            theirs.update({(row["precision"], row["res"]): (row, normalize) for row in results[phase.name]["rows"]})
    rows = []
    for phase in phases:
        if phase.kind != OURS or phase.name not in results:
            continue
        for ours in results[phase.name]["rows"]:
            row: dict[str, Any] = {"res": ours["res"], "precision": phase.precision,
                                   "ours": side(ours, "loader_device"),
                                   "ours_loader_host": ours["loader_host"]["median"]}
            their, normalize = theirs.get((phase.precision, ours["res"]), (None, None))
            if their is not None:
                row.update({"theirs": side(their, "loader_device"), "their_normalize": normalize,
                            "bare_step": their["bare_step"]["median"],
                            "loader_ours_vs_theirs": ours["loader_device"]["median"] / their["loader_device"]["median"],
                            "our_step_vs_bare": ours["model"]["median"] / their["bare_step"]["median"],
                            "ours_vs_theirs": ours["end_to_end"]["median"] / their["end_to_end"]["median"]})
            rows.append(row)
    return rows


HEADLINE_HEADER = ("| res | precision | crop | loader img/s, ours | loader img/s, theirs | loader ours/theirs | "
                   "ours e2e/min | theirs e2e/min | our step / bare step | ours e2e / theirs e2e |")
SIDE_HEADER = ("| res | precision | side | crop | loader img/s | model img/s | end to end img/s | e2e/min | "
               "bottleneck | normalise |")


def cells(values: list[object]) -> str:
    return "| " + " | ".join(str(value) for value in values) + " |"


def figure(row: dict, key: str, digits: int = 3) -> str:
    return f"{row[key]:.{digits}f}" if key in row else "-"


def headline_line(row: dict) -> str:
    theirs = row.get("theirs")
    return cells([row["res"], row["precision"], row["ours"]["crop_mode"], f"{row['ours']['loader']:.0f}",
                  f"{theirs['loader']:.0f}" if theirs else "-", figure(row, "loader_ours_vs_theirs"),
                  f"{row['ours']['ratio']:.3f}", f"{theirs['ratio']:.3f}" if theirs else "-",
                  figure(row, "our_step_vs_bare"), figure(row, "ours_vs_theirs")])


def side_lines(row: dict) -> list[str]:
    lines = []
    for label, key in (("ours", "ours"), ("ffcv-imagenet style", "theirs")):
        if key in row:
            figures = row[key]
            normalise = "torch, on the device" if key == "ours" else row["their_normalize"]
            lines.append(cells([row["res"], row["precision"], label, figures["crop_mode"], f"{figures['loader']:.0f}",
                                f"{figures['model']:.0f}", f"{figures['end_to_end']:.0f}",
                                f"{figures['ratio']:.3f}", figures["bottleneck"], normalise]))
    if "bare_step" in row:
        lines.append(cells([row["res"], row["precision"], "bare step", "-", "-", f"{row['bare_step']:.0f}",
                            "-", "-", "-", "-"]))
    return lines


def setup_line(report: dict) -> str:
    facts, data, sizes = report["preflight"], report.get("data") or {}, report["sizes"]
    if not facts:
        return "preflight did not finish: host unknown"
    images = f"{data['images']} images (long side {data['stored_side']} px)" if data else "no data yet"
    return (f"{facts['device_name']}, {facts['cores']} cores of {facts['machine_cores']} (CPU affinity); torch "
            f"{facts['torch']} (CUDA {facts['torch_cuda']}), ffcv {facts['ffcv']}, numba {facts['numba']} "
            f"({facts['numba_threading_layer']} threads), cupy: {facts['cupy']}; {images}, {sizes['arch']} batch "
            f"{sizes['batch']}, channels-last{' (smoke run)' if report['smoke'] else ''}")


def format_table(report: dict) -> str:
    sizes, rows = report["sizes"], report["rows"]
    lines = [f"# GPU check, {report['date']}", "", setup_line(report),
             f"img/s, median of {sizes['repeats']} windows of {sizes['steps']} steps, each on a fresh epoch after "
             f"{sizes['warmup_steps']} untimed steps", "", "## Headline", "", HEADLINE_HEADER, "|---" * 10 + "|"]
    lines += [headline_line(row) for row in rows]
    lines += ["", "Loader alone: ours against theirs (batches on the device; theirs normalised too). e2e/min: end "
              f"to end over min(loader, model) (issue 16's figure: {END_TO_END_SHARE} or more). Our step against a "
              "bare forward/backward/SGD step: below 1.0 is what our step adds. Ours e2e / theirs e2e is stated "
              f"beside the old {OLD_END_TO_END_FIGURE}x figure, not as a target: where both loaders outrun the "
              "model, both sides run at the model's rate and the ratio sits near 1.0."]
    lines += ["", "## Phases", "", "| phase | ok | seconds | last line |", "|---|---|---|---|"]
    for phase in report["phases"]:
        lines.append(cells([phase["name"], "yes" if phase["ok"] else "NO", f"{phase['seconds']:.0f}",
                            phase["last_line"].replace("|", "/")]))
    for name, reason in report["skipped"].items():
        lines.append(cells([name, "skipped", "-", reason]))
    lines += ["", "## Side by side", "", SIDE_HEADER, "|---" * 10 + "|"]
    for row in rows:
        lines += side_lines(row)
    lines += ["", "Theirs at the FixRes size is RandomResizedCrop (FFCV has no FixRes decoder)."]
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict) -> None:
    """gpu_check.json and gpu_check.md as they stand: called after every phase."""
    atomic_write_text(out / REPORT, json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / TABLE, format_table(report))


# ---------------------------------------------------------------- the run
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for the report, the table and the log")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help=f"folder for the photos and the .beton, kept for reruns (default {DEFAULT_DATA})")
    parser.add_argument("--images", type=int, help=f"images to generate (default {GPU.images}; smoke {SMOKE.images})")
    parser.add_argument("--budget-s", type=float,
                        help=f"no phase starts after this many seconds (default {DEFAULT_BUDGET_S}; none with "
                             "--smoke); the report names the phases skipped")
    parser.add_argument("--skip-tests", action="store_true", help="leave out the gpu tests (e.g. on a rerun)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks the script itself")
    parser.add_argument("--run-phase", choices=(PREFLIGHT, DATA), help=argparse.SUPPRESS)  # the child's side
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.budget_s is None:
        args.budget_s = math.inf if args.smoke else DEFAULT_BUDGET_S  # a smoke run checks every phase
    if args.budget_s < 0 or (args.images is not None and args.images < 1):
        parser.error("--budget-s must be at least 0 and --images at least 1")
    args.out, args.data = args.out.resolve(), args.data.resolve()
    return args


def sizes_for(args: argparse.Namespace) -> Sizes:
    sizes = SMOKE if args.smoke else GPU
    return Sizes(**{**asdict(sizes), "images": args.images}) if args.images else sizes


def run_own_phase(args: argparse.Namespace) -> int:
    """A child's work: preflight's facts or the data, as JSON in --result."""
    sizes = sizes_for(args)
    if args.run_phase == PREFLIGHT:
        facts = preflight_facts()
        print(f"CUDA {'visible: ' + facts['device_name'] if facts['cuda'] else 'not visible'}; torch "
              f"{facts['torch']}; {facts['cores']} cores; numba {facts['numba_threading_layer']}; cupy {facts['cupy']}")
    else:
        facts = data_facts(args.data / ("smoke" if args.smoke else "full"), sizes)
        print(f"{facts['images']} images{' (reused)' if facts['reused'] else ''}: {facts['beton']}, read through "
              f"at {facts['read_gib_per_s']:.2f} GiB/s")
    atomic_write_text(args.result, json.dumps(facts, indent=2) + "\n")
    return 0


def phase_timeout(phase: Phase, sizes: Sizes) -> float:
    return min(PREFLIGHT_TIMEOUT_S, sizes.timeout_s) if phase.kind == PREFLIGHT else sizes.timeout_s


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.run_phase:
        return run_own_phase(args)
    sizes = sizes_for(args)
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / LOG
    log.write_text(f"gpu_check {datetime.datetime.now().isoformat(timespec='seconds')}: {shlex.join(sys.argv)}\n")
    phases = [phase for phase in plan_phases(sizes) if not (args.skip_tests and phase.kind == TESTS)]
    report: dict[str, Any] = {"date": datetime.date.today().isoformat(), "smoke": args.smoke, "sizes": asdict(sizes),
                              "budget_s": None if math.isinf(args.budget_s) else args.budget_s, "preflight": {},
                              "data": {}, "phases": [], "skipped": {}, "results": {}, "rows": [],
                              "old_end_to_end_figure": OLD_END_TO_END_FIGURE}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as scratch_name:
        scratch = Path(scratch_name)
        for index, phase in enumerate(phases):
            elapsed = time.perf_counter() - started
            if phase.kind != PREFLIGHT and elapsed >= args.budget_s:
                report["skipped"] = {later.name: f"budget of {args.budget_s:g} s reached" for later in phases[index:]}
                write_report(args.out, report)
                print(f"gpu_check: budget of {args.budget_s:g} s reached after {elapsed:.0f} s: skipped "
                      f"{', '.join(report['skipped'])} (partial report in {args.out / TABLE})", flush=True)
                return exit_status(report)
            if phase.kind in (OURS, THEIRS) and not report["data"]:
                report["skipped"][phase.name] = "no data (the data phase failed)"
                continue
            outcome = execute(phase, args, sizes, report, scratch, log)
            report["phases"].append(outcome)
            report["rows"] = combine(phases, report["results"])
            report["seconds"] = time.perf_counter() - started
            write_report(args.out, report)
            print(f"gpu_check: {phase.name}: {'ok' if outcome['ok'] else 'FAILED'} in {outcome['seconds']:.0f} s, "
                  f"{outcome['last_line']}", flush=True)
            if phase.kind == PREFLIGHT:
                stop = preflight_stop(outcome, report, args)
                if stop is not None:
                    report["skipped"] = {later.name: stop for later in phases[index + 1:]}
                    write_report(args.out, report)
                    print(f"gpu_check: {stop}", file=sys.stderr)
                    return EXIT_FAILED if not outcome["ok"] else EXIT_NO_CUDA
    print(format_table(report))
    return exit_status(report)


def exit_status(report: dict) -> int:
    return 0 if all(phase["ok"] for phase in report["phases"]) else EXIT_FAILED


def execute(phase: Phase, args: argparse.Namespace, sizes: Sizes, report: dict, scratch: Path, log: Path) -> dict:
    """Run one phase (theirs once more with torch normalisation if its first try failed: never lose the
    baseline) and file what it wrote."""
    beton = report["data"].get("beton", "")
    outcome = run_phase(phase.name, phase_command(phase, args, sizes, beton, scratch), log, phase_timeout(phase, sizes))
    if phase.kind == THEIRS and not outcome["ok"]:
        retry = run_phase(f"{phase.name} (torch normalisation)",
                          phase_command(phase, args, sizes, beton, scratch, normalize="torch"), log,
                          phase_timeout(phase, sizes))
        outcome = {**retry, "name": phase.name, "seconds": outcome["seconds"] + retry["seconds"],
                   "first_try": outcome}
    written = scratch / f"{phase.name}.json"
    if outcome["ok"] and written.is_file():
        result = json.loads(written.read_text())
        key = {PREFLIGHT: "preflight", DATA: "data"}.get(phase.kind)
        if key is not None:
            report[key] = result
        else:
            report["results"][phase.name] = result
    return outcome


def preflight_stop(outcome: dict, report: dict, args: argparse.Namespace) -> str | None:
    """Why the check stops after preflight, in one line; None to go on."""
    if not outcome["ok"]:
        return f"preflight failed ({outcome['last_line']}); see {args.out / LOG}"
    facts = report["preflight"]
    if not facts["cuda"] and not args.smoke:
        return (f"no CUDA device visible (torch {facts['torch']}): nothing to measure here; --smoke checks the "
                "script on the CPU")
    return None


if __name__ == "__main__":
    sys.exit(main())
