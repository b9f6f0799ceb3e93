"""Command line of ``train_imagenet.py``: parse, then hand over to the trainer.

    python train_imagenet.py --config rcfg/demo.yaml [--section.key=value ...]
    torchrun --nproc_per_node=8 train_imagenet.py --config rcfg/rn50_88.yaml

A mistake is one line and exit code 2 before torch loads (dataset mistakes too: preflight reads the
files' headers without it); Ctrl-C one line and 130 (rank 0 speaks).
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import schedule
from .cli import (EXIT_ERROR, EXIT_IO_ERROR, OneLineParser, fail, interrupt_outside_native_callbacks, interrupted,
                  os_error_message, world_from_env)
from .config import Config, ConfigError
from .preflight import Datasets, check_before_torch, check_lr_range
from .recipe_options import add_recipe_options, answer_recipe_questions, split_overrides
from .recipes import load_config, recipe_text, translation_notes

PROG = "train_imagenet.py"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="Train a ResNet on FFCV .beton files from a recipe in rcfg/. "
                           "Any recipe key can be overridden as --section.key=value, e.g. --training.epochs=16.")
    add_recipe_options(parser)
    parser.add_argument("--print-schedule", action="store_true",
                        help="print the per-epoch resolution schedule and exit")
    parser.add_argument("--resume", metavar="PATH",
                        help="checkpoint file or run folder to continue from (default: the run folder's own)")
    parser.add_argument("--evaluate", metavar="WEIGHTS",
                        help="do not train: evaluate a checkpoint (last.pt, best.pt) or exported weights "
                             "(final_weights.pt, best_weights.pt) at --eval-res")
    parser.add_argument("--eval-res", metavar="RES", type=int, nargs="+",
                        help="test resolutions for --evaluate (default: validation.resolutions, "
                             "else validation.resolution)")
    parser.add_argument("--lr-range-test", action="store_true",
                        help="do not train: run Smith's LR range test (recipe section lr_range) and suggest "
                             "lr.lr_per_256; writes lr_range.png and lr_range.json")
    parser.add_argument("--out", metavar="DIR", help="with --lr-range-test: folder for its PNG and JSON "
                        "(default: logging.folder)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, overrides = split_overrides(parser, sys.argv[1:] if argv is None else argv)
    try:
        if answer_recipe_questions(args, overrides):
            return 0
    except ConfigError as err:
        return fail(PROG, str(err))
    if not args.config:
        parser.error("--config RECIPE is required")
    if args.out and not args.lr_range_test:
        parser.error("--out is for --lr-range-test")

    rank, _, world_size = world_from_env()
    speaks = rank == 0  # every rank checks the same recipe: one copy of an error is enough
    try:
        schedule.check_resolutions("--eval-res", args.eval_res or [])
        config = load_config(args.config, overrides)
        schedule.validate(config.resolution, config.training.epochs)
        if args.print_schedule:
            print(schedule.format_table(schedule.full_schedule(config.resolution, config.training.epochs)))
            return 0
        notes = translation_notes(args.config)
        if notes and speaks:  # an ffcv-imagenet config: say what it became (saved in full as recipe.yaml)
            print(recipe_text(config, notes, full=False), flush=True)
        datasets = check_before_torch(config, world_size)  # the datasets' headers against the recipe, before torch
        if args.lr_range_test:
            check_lr_range(config)
    except ConfigError as err:
        return fail(PROG, str(err), EXIT_ERROR, speaks or world_size == 1)

    interrupt_outside_native_callbacks()
    try:
        return run(args, config, speaks, world_size, datasets)
    except KeyboardInterrupt:  # also during numba's compile (cli.interrupt_outside_native_callbacks)
        kept = "" if args.evaluate or args.lr_range_test else (
            f"; {config.logging.folder} keeps its last checkpoint, if one was written (the same command resumes)")
        return interrupted(PROG, f"interrupted{kept}", speaks)


def run(args: argparse.Namespace, config: Config, speaks: bool, world_size: int,
        datasets: Datasets | None = None) -> int:
    """Training, --evaluate or --lr-range-test on this rank; the exit code. ``datasets``: what
    ``check_before_torch`` read (None for remote ones: ``preflight`` reads them)."""
    # Imported only now: --help and recipe mistakes answer in a fraction of a second, without the
    # seconds that loading torch and FFCV (which compiles numba code at import) take.
    from .distributed import init_distributed, shutdown
    from .decoders import CorruptRecordError
    from .remote import RemoteError
    from .evaluation import evaluate_saved
    from .trainer import TrainingStopped, train

    try:
        ctx = init_distributed(config.dist)
    except ConfigError as err:
        return fail(PROG, str(err), EXIT_ERROR, speaks or world_size == 1)
    try:
        if args.evaluate:
            resolutions = args.eval_res or config.validation.resolutions or [config.validation.resolution]
            evaluate_saved(config, ctx, args.evaluate, resolutions, datasets)
        elif args.lr_range_test:
            from .lr_range import lr_range_test
            lr_range_test(config, ctx, args.out, datasets)
        else:
            train(config, ctx, resume=args.resume, datasets=datasets)
    except ConfigError as err:
        return fail(PROG, str(err), EXIT_ERROR, speaks)
    except CorruptRecordError as err:  # the dataset, not the run: every rank that meets it says so
        return fail(PROG, str(err), EXIT_ERROR)
    except RemoteError as err:  # a remote dataset replaced or unreachable mid-run, a full cache disk
        return fail(PROG, str(err), EXIT_ERROR)
    except TrainingStopped as stop:
        return fail(PROG, str(stop), stop.exit_code, speaks)
    except OSError as err:  # a full disk or a vanished folder while writing a checkpoint or log
        return fail(PROG, os_error_message(err), EXIT_IO_ERROR)
    finally:
        shutdown(ctx)
    return 0
