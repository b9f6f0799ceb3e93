"""Command line of ``train_imagenet.py``: parse, then hand over to the trainer.

    python train_imagenet.py --config rcfg/demo.yaml [--section.key=value ...]
    torchrun --nproc_per_node=8 train_imagenet.py --config rcfg/rn50_88.yaml
"""
from __future__ import annotations

import argparse
import sys
from typing import NoReturn, Sequence

from . import schedule
from .config import ConfigError, describe, load_config

PROG = "train_imagenet.py"
EXIT_ERROR = 2
EXIT_IO_ERROR = 1


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes are one line on stderr (no usage dump), exit code 2; shared by the package's commands."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="Train a ResNet on FFCV .beton files from a recipe in rcfg/. "
                           "Any recipe key can be overridden as --section.key=value, e.g. --training.epochs=16.")
    parser.add_argument("--config", metavar="RECIPE", help="YAML recipe, e.g. rcfg/rn50_88.yaml")
    parser.add_argument("--print-schedule", action="store_true",
                        help="print the per-epoch resolution schedule and exit")
    parser.add_argument("--help-config", action="store_true", help="list every recipe key with its help and exit")
    parser.add_argument("--resume", metavar="PATH",
                        help="checkpoint file or run folder to continue from (default: the run folder's own)")
    parser.add_argument("--evaluate", metavar="WEIGHTS",
                        help="do not train: evaluate a checkpoint (last.pt) or final_weights.pt at --eval-res")
    parser.add_argument("--eval-res", metavar="RES", type=int, nargs="+",
                        help="test resolutions for --evaluate (default: validation.resolutions, "
                             "else validation.resolution)")
    return parser


def split_overrides(parser: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    args, rest = parser.parse_known_args(argv)
    for arg in rest:
        if not arg.startswith("--") or "=" not in arg:
            parser.error(f"unrecognised argument {arg!r} (recipe overrides look like --training.epochs=16)")
    return args, rest


def _fail(message: str, code: int, show: bool) -> int:
    if show:
        print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, overrides = split_overrides(parser, sys.argv[1:] if argv is None else argv)
    if args.help_config:
        print(describe())
        return 0
    if not args.config:
        parser.error("--config RECIPE is required")

    # Imported here so that --help and recipe mistakes answer without loading torch.
    from .distributed import init_distributed, shutdown, world_from_env
    from .decoders import CorruptRecordError
    from .trainer import TrainingStopped, evaluate_saved, train

    rank, _, world_size = world_from_env()
    speaks = rank == 0  # every rank checks the same recipe: one copy of an error is enough
    try:
        config = load_config(args.config, overrides)
        schedule.validate(config.resolution, config.training.epochs)
        if args.print_schedule:
            print(schedule.format_table(schedule.full_schedule(config.resolution, config.training.epochs)))
            return 0
        ctx = init_distributed(config.dist)
    except ConfigError as err:
        return _fail(str(err), EXIT_ERROR, speaks or world_size == 1)
    try:
        if args.evaluate:
            resolutions = args.eval_res or config.validation.resolutions or [config.validation.resolution]
            evaluate_saved(config, ctx, args.evaluate, resolutions)
        else:
            train(config, ctx, resume=args.resume)
    except ConfigError as err:
        return _fail(str(err), EXIT_ERROR, speaks)
    except CorruptRecordError as err:  # the dataset, not the run: every rank that meets it says so
        return _fail(str(err), EXIT_ERROR, True)
    except TrainingStopped as stop:
        return _fail(str(stop), stop.exit_code, speaks)
    except OSError as err:  # a full disk or a vanished folder while writing a checkpoint or log
        return _fail(f"{err.filename or ''}: {err.strerror or err}", EXIT_IO_ERROR, True)
    finally:
        shutdown(ctx)
    return 0
