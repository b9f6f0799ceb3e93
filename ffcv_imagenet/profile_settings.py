"""What the throughput profile is asked to time (``ProfileSettings``), checked without torch, so that
``python -m ffcv_imagenet.profile`` answers a mistake before torch and FFCV load (``profile_cli``)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError
from .fileio import check_writable_dir
from .schedule import check_resolutions

DEFAULT_WARMUP_STEPS = 5  # more than FFCV's 3 prefetched batches
DEFAULT_STEPS = 50  # at most: a window fits in one epoch
DEFAULT_REPEATS = 3  # at most: a small recipe gets fewer
MIN_STEPS = 10  # per window, unless an epoch holds fewer


@dataclass(frozen=True)
class ProfileSettings:
    """``steps`` and ``repeats`` None: picked by the recipe's size (``sized_for``)."""

    warmup_steps: int = DEFAULT_WARMUP_STEPS
    steps: int | None = None
    repeats: int | None = None
    resolutions: tuple[int, ...] = ()  # empty: every (res, crop mode) of the recipe's schedule

    def check(self) -> None:
        """Refuse values that would time nothing, naming the option."""
        for option, value, least in (("--warmup-steps", self.warmup_steps, 0), ("--steps", self.steps, 1),
                                     ("--repeats", self.repeats, 1)):
            if value is not None and value < least:
                raise ConfigError(f"{option} must be at least {least}: {value}")
        check_resolutions("--res", self.resolutions)

    def sized_for(self, epoch_batches: int, run_images: int, windows_per_repeat: int,
                  batch_size: int) -> ProfileSettings:
        """Steps and repeats for a recipe, so that a small recipe is not profiled for longer than it trains:
        each window inside one epoch (``FreshEpochs``) after its warm-up, at most DEFAULT_STEPS steps, and
        fewer (at least MIN_STEPS) where one window per figure would read more images than the whole run;
        DEFAULT_REPEATS windows per figure, fewer (at least one) where that many would."""
        within_run = run_images // (windows_per_repeat * batch_size) - self.warmup_steps
        fitting = max(1, min(DEFAULT_STEPS, epoch_batches - self.warmup_steps, max(MIN_STEPS, within_run)))
        steps = self.steps if self.steps is not None else fitting
        repeats = self.repeats
        if repeats is None:
            images_per_repeat = windows_per_repeat * (self.warmup_steps + steps) * batch_size
            repeats = max(1, min(DEFAULT_REPEATS, run_images // images_per_repeat))
        sized = dataclasses.replace(self, steps=steps, repeats=repeats)
        sized.check_fits(epoch_batches)
        return sized

    def check_fits(self, epoch_batches: int) -> None:
        """Each timed window runs inside one epoch, its warm-up included."""
        if self.warmup_steps + (self.steps or 1) > epoch_batches:
            raise ConfigError(f"--warmup-steps {self.warmup_steps} and --steps {self.steps or 1} do not fit in an "
                              f"epoch of {epoch_batches} batches (each timed window runs inside one epoch)")


def check_out(out: Path | None) -> None:
    """``--out``'s folder can take the JSON report."""
    if out is not None:
        try:
            check_writable_dir(out.parent)
        except OSError as err:
            raise ConfigError(f"--out: {err}") from None
