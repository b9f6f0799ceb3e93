"""Command line of the throughput profile: parse, then hand over to ``profiling``.

    python -m ffcv_imagenet.profile --config rcfg/rn50_88.yaml [--res 160 192 224 256]
        [--warmup-steps 5] [--steps 50] [--repeats 3] [--out profile.json] [--section.key=value ...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from .cli import EXIT_IO_ERROR, OneLineParser, fail, os_error_message
from .config import ConfigError
from .preflight import check_before_torch
from .profile_settings import DEFAULT_REPEATS, DEFAULT_STEPS, DEFAULT_WARMUP_STEPS, ProfileSettings, check_out
from .recipe_options import add_recipe_options, answer_recipe_questions, split_overrides
from .recipes import load_config

PROG = "python -m ffcv_imagenet.profile"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="Images per second of the recipe's loader alone, model alone "
                           "and both together at each (resolution, crop mode) of its schedule; names the "
                           "bottleneck and projects the run's training time. Any recipe key can be overridden "
                           "as --section.key=value.")
    add_recipe_options(parser, required=True)
    parser.add_argument("--res", type=int, nargs="+", metavar="RES",
                        help="measure these resolutions (crop mode rrc) instead of the recipe's schedule")
    parser.add_argument("--warmup-steps", type=int, default=DEFAULT_WARMUP_STEPS,
                        help="untimed steps before each measurement (numba compiles on the first)")
    parser.add_argument("--steps", type=int,
                        help="steps per timed window (default: as many as fit in one epoch after the warm-up, "
                             f"at most {DEFAULT_STEPS}: each window starts on a fresh epoch)")
    parser.add_argument("--repeats", type=int,
                        help=f"timed windows per figure; the median is shown, with min-max (default {DEFAULT_REPEATS}, "
                             "fewer, at least 1, where that many would read more images than the recipe's whole run)")
    parser.add_argument("--out", type=Path, metavar="PATH.json", help="also write the figures here as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, overrides = split_overrides(parser, sys.argv[1:] if argv is None else argv)

    settings = ProfileSettings(args.warmup_steps, args.steps, args.repeats, tuple(args.res or ()))
    ctx = None
    try:
        if answer_recipe_questions(args, overrides):
            return 0
        config = load_config(args.config, overrides)
        settings.check()
        check_out(args.out)
        datasets = check_before_torch(config, world_size=1)  # the datasets against the recipe, before torch loads
        # Imported only now: a mistake above answers without the seconds torch and FFCV take to load.
        from .distributed import init_distributed
        from .profiling import run_profile
        ctx = init_distributed(config.dist)
        report = run_profile(config, ctx, settings, args.out, datasets)
    except ConfigError as err:
        return fail(PROG, str(err))
    except OSError as err:  # the JSON could not be written after all (full disk, folder removed)
        return fail(PROG, os_error_message(err), EXIT_IO_ERROR)
    finally:
        if ctx is not None:
            from .distributed import shutdown
            shutdown(ctx)
    from .profiling import format_report
    print(format_report(report))
    return 0

