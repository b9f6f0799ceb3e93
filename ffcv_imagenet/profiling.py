"""Throughput profile: the loader alone, the model alone, both together, and which one limits.

For each distinct (resolution, crop mode) of a recipe's schedule (or for given
resolutions) it times, with the recipe's own parts:

- loader img/s: ``TrainLoader`` batches consumed as fast as they come, with the
  transfer to the training device (the figure training sees) and, on a GPU,
  also without it (batches left on the host);
- model img/s: ``Trainer.train_step`` (forward, backward, optimizer step, same
  model, precision, memory format, batch size and optimizer) on one batch
  already on the device;
- end-to-end img/s: ``TrainLoader.epoch`` feeding ``Trainer.train_step``, as in training;
- end to end / min(loader, model), and the name of the smaller one: the bottleneck.

Every figure is the median over ``repeats`` windows of ``steps`` batches, with
the min-max spread. The first batch of each (res, crop mode) is never timed
(numba compiles a crop mode's pipeline there, once: one loader per crop mode
serves every resolution and figure). Each loader window starts on a fresh epoch
and follows ``warmup_steps`` untimed steps, which absorb the epoch's start
(FFCV's buffers, its empty prefetch queue of 3 batches); the window ends inside
that epoch. Unless given, ``steps`` is as many as fit in an epoch after the
warm-up (at most 50; fewer, at least 10, where one window per figure would read
more images than the recipe's whole run) and ``repeats`` 3 (fewer, at least 1,
where 3 would): the profile of a small recipe does not take longer than its
training.

The learning rate stays 0 (the optimizer's initial value): every step does the
same arithmetic as in training, but the weights stay put, so all repeats time
the same work and nothing can diverge. The run-time projection multiplies the
schedule's images by the measured end-to-end rates; evaluation and checkpoints
are not included. It runs as one process (one GPU, refused under torchrun): a
multi-GPU run goes at most the GPU count times as fast.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import itertools
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from tqdm import tqdm

from . import schedule
from .config import Config, ConfigError
from .distributed import DistContext, job_cores
from .fileio import atomic_write_text
from .loaders import Batch, TrainLoader, build_train_loader
from .preflight import Datasets, preflight
from .profile_settings import ProfileSettings, check_out
from .trainer import Trainer

LOADER, MODEL = "loader", "model"
RATIO_TARGET = 0.95  # issue 5: end to end should reach this share of min(loader, model)
FIGURES_WITHOUT_TRANSFER = ("loader_device", "model", "end_to_end")
FIGURES_WITH_TRANSFER = (*FIGURES_WITHOUT_TRANSFER, "loader_host")
SECONDS_PER_HOUR = 3600


def figures_on(device: torch.device) -> tuple[str, ...]:
    """What is timed: on a CPU the loader's output is already on the device, one loader figure."""
    return FIGURES_WITHOUT_TRANSFER if device.type == "cpu" else FIGURES_WITH_TRANSFER


@dataclass(frozen=True)
class Rate:
    """Images per second over repeated windows: the median and the spread (min-max)."""

    median: float
    low: float
    high: float
    runs: tuple[float, ...]

    @classmethod
    def from_seconds(cls, seconds: Sequence[float], images_per_window: int) -> "Rate":
        runs = tuple(images_per_window / s for s in seconds)
        return cls(statistics.median(runs), min(runs), max(runs), runs)

    def cell(self) -> str:
        return f"{self.median:.1f} ({self.low:.1f}-{self.high:.1f})"


@dataclass(frozen=True)
class Row:
    res: int
    crop_mode: str
    loader_host: Rate  # batches left on the host (the same measurement as loader_device on a CPU)
    loader_device: Rate  # batches on the training device: what training is fed
    model: Rate
    end_to_end: Rate

    @property
    def bottleneck(self) -> str:
        return LOADER if self.loader_device.median <= self.model.median else MODEL

    @property
    def ratio(self) -> float:
        """End to end over the slower side: 1.0 when loading and compute overlap perfectly."""
        return self.end_to_end.median / min(self.loader_device.median, self.model.median)


@dataclass(frozen=True)
class Phase:
    first_epoch: int
    last_epoch: int
    res: int
    crop_mode: str
    images: int
    rate: float  # measured end-to-end img/s
    seconds: float


@dataclass(frozen=True)
class Projection:
    """The run's training time from the measured rates; ``missing`` lists unmeasured phases."""

    epochs: int
    images_per_epoch: int
    phases: tuple[Phase, ...]
    missing: tuple[tuple[int, str], ...]

    @property
    def total_seconds(self) -> float | None:
        return None if self.missing else sum(phase.seconds for phase in self.phases)


@dataclass(frozen=True)
class Report:
    setup: dict[str, Any]
    settings: ProfileSettings
    rows: tuple[Row, ...]
    projection: Projection


# ---------------------------------------------------------------- what to measure
def targets(config: Config, resolutions: Sequence[int]) -> list[tuple[int, str]]:
    """Each distinct (res, crop mode) of the schedule, in schedule order; or ``resolutions`` with rrc."""
    if resolutions:
        return list(dict.fromkeys((res, schedule.RRC) for res in resolutions))
    plans = schedule.full_schedule(config.resolution, config.training.epochs)
    return list(dict.fromkeys((res, mode) for _, _, res, mode in schedule.phases(plans)))


def images_per_epoch(train_size: int, global_batch: int) -> int:
    """The loader drops the last partial batch."""
    return int(train_size) // global_batch * global_batch  # FFCV counts samples in numpy integers


def project(config: Config, rows: Sequence[Row], epoch_images: int) -> Projection:
    rates = {(row.res, row.crop_mode): row.end_to_end.median for row in rows}
    plans = schedule.full_schedule(config.resolution, config.training.epochs)
    phases, missing = [], []
    for first, last, res, mode in schedule.phases(plans):
        if (res, mode) not in rates:
            missing.append((res, mode))
            continue
        images = (last - first + 1) * epoch_images
        phases.append(Phase(first, last, res, mode, images, rates[(res, mode)], images / rates[(res, mode)]))
    return Projection(config.training.epochs, epoch_images, tuple(phases), tuple(dict.fromkeys(missing)))


# ---------------------------------------------------------------- timing
def synchronize(device: torch.device) -> None:
    """Queued GPU work finishes before the clock is read."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class FreshEpochs:
    """Batches for timed windows, each window on an epoch of its own.

    FFCV's ``EpochIterator`` allocates (on a GPU: pins) the epoch's batch buffers
    when it starts, about 1.1 GB at batch 256, and its prefetch queue starts
    empty: a window that crosses an epoch start loses 20-40%. So each window
    opens the next epoch (``restart``), its untimed warm-up absorbs that start,
    and the window ends inside the epoch (``ProfileSettings.sized_for`` keeps it there);
    ``close`` stops the decode thread, so no other window shares the cores with it.
    """

    def __init__(self, open_epoch: Callable[[int], Iterator[Batch]]):
        self._open_epoch = open_epoch
        self._epochs = itertools.count()
        self._batches: Iterator[Batch] | None = None

    def restart(self) -> None:
        self.close()
        self._batches = self._open_epoch(next(self._epochs))

    def next(self) -> Batch:
        assert self._batches is not None, "restart() opens an epoch first"
        return next(self._batches)

    def close(self) -> None:
        if self._batches is not None:
            self._batches.close()  # a generator: its finally stops FFCV's thread
            self._batches = None


@dataclass(frozen=True)
class Window:
    """One figure's step, and the batches it draws from (None: a fixed batch, no loader)."""

    step: Callable[[], object]
    batches: FreshEpochs | None = None


def timed_window(window: Window, settings: ProfileSettings, device: torch.device) -> float:
    """Seconds for ``settings.steps`` calls of the step, after ``settings.warmup_steps`` untimed ones,
    on a fresh epoch when the step reads batches."""
    if window.batches is not None:
        window.batches.restart()
    try:
        for _ in range(settings.warmup_steps):
            window.step()
        synchronize(device)
        started = time.perf_counter()
        for _ in range(settings.steps):
            window.step()
        synchronize(device)
        return time.perf_counter() - started
    finally:
        if window.batches is not None:
            window.batches.close()


def rates_in_turns(windows: dict[str, Window], settings: ProfileSettings, device: torch.device,
                   images_per_step: int, on_window: Callable[[str], None] = lambda name: None) -> dict[str, Rate]:
    """Each figure's img/s over ``settings.repeats`` windows, the figures taking turns (a busy spell
    slows them alike); ``on_window`` is told each window's name before it runs."""
    seconds: dict[str, list[float]] = {name: [] for name in windows}
    for _ in range(settings.repeats):
        for name, window in windows.items():
            on_window(name)
            seconds[name].append(timed_window(window, settings, device))
    return {name: Rate.from_seconds(runs, settings.steps * images_per_step) for name, runs in seconds.items()}


def train_epochs(loader: TrainLoader, res: int, crop_mode: str) -> FreshEpochs:
    """The loader's epochs at (res, crop mode), numbered from 0 (each its own random order)."""
    return FreshEpochs(lambda epoch: loader.epoch(schedule.EpochPlan(epoch, res, crop_mode)))


class Profiler:
    """Times one (res, crop mode) after another with one trainer's model, optimizer and loader.

    The figures of a (res, crop mode) are measured in turns (loader, model, end
    to end, loader, ...), so a busy spell of the machine slows them alike; each
    loader window starts on a fresh epoch (``FreshEpochs``) and the untimed steps
    before it absorb the epoch's start (buffers, the empty prefetch queue), the
    model's before it other shapes for its kernels. One loader per crop mode,
    compiled once, serves every resolution and figure.
    """

    def __init__(self, trainer: Trainer, settings: ProfileSettings, progress: tqdm):
        self.trainer = trainer
        self.settings = settings
        self.progress = progress
        self.device = trainer.ctx.device
        self.transfer_measured = self.device.type != "cpu"  # on a CPU the loader's output is already there
        self._host_loader: TrainLoader | None = None

    def _on_window(self, res: int, crop_mode: str) -> Callable[[str], None]:
        def show(name: str) -> None:
            self.progress.set_postfix_str(f"{res} {crop_mode}: {name.replace('_', ' ')}", refresh=False)
            self.progress.update(self.settings.warmup_steps + self.settings.steps)
        return show

    def _host_loader_for_gpu(self) -> TrainLoader:
        """The trainer's own loader, its batches left on the host (built once: numba compiles it)."""
        if self._host_loader is None:
            host = dataclasses.replace(self.trainer.loader_settings, device=torch.device("cpu"))
            trainer = self.trainer
            self._host_loader = build_train_loader(trainer.config, host, trainer.datasets,
                                                   distributed=trainer.ctx.distributed)
        return self._host_loader

    def measure(self, res: int, crop_mode: str) -> Row:
        # Queued, not settled: training reads each update's loss one update late, so a timed step
        # must not wait for the device's answer either (the window's closing synchronize waits once).
        train_step = self.trainer.queue_step
        self.trainer.enter_phase(schedule.EpochPlan(0, res, crop_mode))  # batch augmentation as training has it
        on_device = train_epochs(self.trainer.train_loader, res, crop_mode)
        windows = {"loader_device": Window(on_device.next, on_device)}
        try:
            # The model's batch, on the device; numba compiles here, untimed. A copy: the loader's
            # buffer slot it came in is refilled by later batches.
            on_device.restart()
            fixed = tuple(tensor.clone() for tensor in on_device.next())
            on_device.close()
            windows["model"] = Window(lambda: train_step(*fixed))
            windows["end_to_end"] = Window(lambda: train_step(*on_device.next()), on_device)
            if self.transfer_measured:
                on_host = train_epochs(self._host_loader_for_gpu(), res, crop_mode)
                on_host.restart()
                on_host.next()  # compiled outside the timed windows too
                on_host.close()
                windows["loader_host"] = Window(on_host.next, on_host)
            rates = rates_in_turns(windows, self.settings, self.device, self.trainer.loader_settings.batch_size,
                                   self._on_window(res, crop_mode))
        finally:
            for window in windows.values():
                if window.batches is not None:
                    window.batches.close()
        return Row(res, crop_mode, loader_host=rates.get("loader_host", rates["loader_device"]),
                   loader_device=rates["loader_device"], model=rates["model"], end_to_end=rates["end_to_end"])

    def total_steps(self, targets_count: int) -> int:
        """For the progress bar."""
        figures = len(figures_on(self.device))
        per_window = self.settings.warmup_steps + self.settings.steps
        return targets_count * figures * self.settings.repeats * per_window


# ---------------------------------------------------------------- the whole profile
def describe_setup(config: Config, trainer: Trainer) -> dict[str, Any]:
    device = trainer.ctx.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {job_cores()} cores"
    training = config.training
    return {"arch": config.model.arch, "precision": training.precision, "channels_last": training.channels_last,
            "compile": training.compile, "batch_size": training.batch_size,
            "num_workers": trainer.loader_settings.num_workers, "device": str(device), "device_name": name,
            "transfer_measured": device.type != "cpu", "host_buffers_mib": trainer.host_buffer_mib(),
            "torch": torch.__version__,
            "ffcv": importlib.metadata.version("ffcv")}  # ffcv.__version__ is stale in 1.0.2


def run_profile(config: Config, ctx: DistContext, settings: ProfileSettings, out: Path | None = None,
                datasets: Datasets | None = None) -> Report:
    """Check everything, measure every target, project the run, write ``out`` (JSON) if given; ``datasets``:
    those ``preflight.check_before_torch`` already read, if any."""
    settings.check()
    if ctx.distributed:
        raise ConfigError("the profile runs as one process (one GPU): run it with python, not torchrun")
    check_out(out)
    datasets = preflight(config, ctx, datasets)
    trainer = Trainer(config, ctx, datasets)
    todo = targets(config, settings.resolutions)
    epoch_images = images_per_epoch(datasets.train_size, trainer.global_batch)
    batch = trainer.loader_settings.batch_size
    settings = settings.sized_for(int(datasets.train_size) // batch, epoch_images * config.training.epochs,
                                  len(todo) * len(figures_on(ctx.device)), batch)
    with tqdm(unit="step", desc="profile", leave=False, dynamic_ncols=True,
              disable=not (ctx.is_main and config.logging.progress)) as progress:
        profiler = Profiler(trainer, settings, progress)
        progress.reset(total=profiler.total_steps(len(todo)))
        rows = tuple(profiler.measure(res, mode) for res, mode in todo)
    report = Report(describe_setup(config, trainer), settings, rows, project(config, rows, epoch_images))
    if out is not None:
        atomic_write_text(out, to_json(report))
    return report


# ---------------------------------------------------------------- output
def row_dict(row: Row) -> dict[str, Any]:
    return {"res": row.res, "crop_mode": row.crop_mode, "loader_host": dataclasses.asdict(row.loader_host),
            "loader_device": dataclasses.asdict(row.loader_device), "model": dataclasses.asdict(row.model),
            "end_to_end": dataclasses.asdict(row.end_to_end), "ratio": row.ratio, "bottleneck": row.bottleneck}


def projection_dict(projection: Projection) -> dict[str, Any]:
    return {"epochs": projection.epochs, "images_per_epoch": projection.images_per_epoch,
            "phases": [dataclasses.asdict(phase) for phase in projection.phases],
            "missing": [{"res": res, "crop_mode": mode} for res, mode in projection.missing],
            "total_seconds": projection.total_seconds, "includes_evaluation": False}


def to_json(report: Report) -> str:
    return json.dumps({"setup": report.setup, "settings": dataclasses.asdict(report.settings),
                       "ratio_target": RATIO_TARGET, "rows": [row_dict(row) for row in report.rows],
                       "projection": projection_dict(report.projection)}, indent=2) + "\n"


def format_duration(seconds: float) -> str:
    hours, rest = divmod(round(seconds), SECONDS_PER_HOUR)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


RATE_WIDTH = 26  # "12345.6 (12000.0-12500.0)"
TABLE_HEADER = "res | crop   "  # the table's first line starts with this


def format_rows(report: Report) -> str:
    setup, settings = report.setup, report.settings
    device = setup["device"]
    columns = ["loader, host", f"loader, to {device}", "model", "end to end"]
    lines = [f"{setup['arch']}, {setup['precision']}, {'channels_last' if setup['channels_last'] else 'NCHW'}, "
             f"batch {setup['batch_size']}, loader workers {setup['num_workers']}, {device} ({setup['device_name']})",
             f"img/s, median (min-max) of {settings.repeats} windows of {settings.steps} steps, each after "
             f"{settings.warmup_steps} untimed steps",
             f"FFCV batch buffers in host memory (pinned on a GPU): training {setup['host_buffers_mib']['train']:.0f} "
             f"MiB, validation {setup['host_buffers_mib']['val']:.0f} MiB during a val pass",
             TABLE_HEADER + "".join(f"| {name:<{RATE_WIDTH}} " for name in columns) + "| e2e/min | bottleneck"]
    for row in report.rows:
        rates = (row.loader_host, row.loader_device, row.model, row.end_to_end)
        cells = "".join(f"| {rate.cell():<{RATE_WIDTH}} " for rate in rates)
        lines.append(f"{row.res:>3} | {row.crop_mode:<6} {cells}| {row.ratio:>7.3f} | {row.bottleneck}")
    if not setup["transfer_measured"]:
        lines.append("on the CPU the loader's batches are already on the device: both loader columns are one "
                     "measurement")
    lines.append(f"target: end to end >= {RATIO_TARGET} x min(loader, model)")
    return "\n".join(lines)


def format_projection(projection: Projection) -> str:
    if projection.missing:
        absent = ", ".join(f"{res} {mode}" for res, mode in projection.missing)
        return f"no run-time projection: the schedule's {absent} was not measured (drop --res)"
    lines = [f"projected training time, {projection.epochs} epochs of {projection.images_per_epoch} images "
             "(evaluation and checkpoints not included):",
             "epochs    | res | crop   | images       | img/s      | time"]
    for phase in projection.phases:
        span = f"{phase.first_epoch}-{phase.last_epoch}" if phase.last_epoch > phase.first_epoch \
            else f"{phase.first_epoch}"
        lines.append(f"{span:<9} | {phase.res:>3} | {phase.crop_mode:<6} | {phase.images:>12} | "
                     f"{phase.rate:>10.1f} | {format_duration(phase.seconds)}")
    lines.append(f"total: {format_duration(projection.total_seconds or 0.0)}")
    return "\n".join(lines)


def format_report(report: Report) -> str:
    return format_rows(report) + "\n\n" + format_projection(report.projection)
