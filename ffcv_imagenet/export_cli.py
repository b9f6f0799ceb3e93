"""``python -m ffcv_imagenet.export``: the command over ``exporting`` (write the arrays) and
``export_files`` (--evaluate-saved).

    python -m ffcv_imagenet.export --config R --weights W --dataset val.beton --res 224 288 --out DIR
    torchrun --nproc_per_node=8 -m ffcv_imagenet.export ...      (each rank writes its own rows)
    python -m ffcv_imagenet.export --evaluate-saved DIR

A mistake is one line and exit code 2; Ctrl-C one line and 130, with no file left at a final name.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from .cli import (EXIT_ERROR, EXIT_IO_ERROR, OneLineParser, fail, interrupt_outside_native_callbacks, interrupted,
                  os_error_message, world_from_env)
from .config import ConfigError
from .remote import dataset_argument
from .export_files import evaluate_saved
from .recipe_options import add_recipe_options, answer_recipe_questions, split_overrides
from .recipes import load_config
from .schedule import check_resolutions

PROG = "python -m ffcv_imagenet.export"


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description="Write softmax probabilities, embeddings (and logits) of every "
                           "image of a .beton as .npy files, or recompute top-1/top-5 from such an export. "
                           "Recipe keys can be overridden as --section.key=value.")
    add_recipe_options(parser)
    parser.add_argument("--weights", type=Path, help="final_weights.pt, or a checkpoint (checkpoints/last.pt, "
                        "best.pt)")
    parser.add_argument("--dataset", type=dataset_argument, help=".beton to export (val or train), or an s3:// "
                        "gs:// az:// URL of one")
    parser.add_argument("--res", type=int, nargs="+", metavar="RES",
                        help="test resolutions (default: validation.resolution)")
    parser.add_argument("--out", type=Path, help="output folder; one res<R> folder per resolution")
    parser.add_argument("--logits", action="store_true", help="also write logits.npy")
    parser.add_argument("--float16", action="store_true", help="probabilities, embeddings, logits as float16")
    parser.add_argument("--evaluate-saved", type=Path, metavar="DIR",
                        help="no model: top-1/top-5 from an export's probs.npy and labels.npy")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, overrides = split_overrides(parser, sys.argv[1:] if argv is None else argv)
    interrupt_outside_native_callbacks()
    speaks = True  # under torchrun, rank 0 alone says what every rank found
    try:
        if answer_recipe_questions(args, overrides):
            return 0
        if args.evaluate_saved:  # numpy only: no torch, no model
            evaluate_saved(args.evaluate_saved)
            return 0
        speaks = world_from_env()[0] == 0
        missing = [option for option, value in (("--config", args.config), ("--weights", args.weights),
                                                ("--dataset", args.dataset), ("--out", args.out)) if not value]
        if missing:
            parser.error(f"{', '.join(missing)} required (or --evaluate-saved DIR)")
        check_resolutions("--res", args.res or [])
        config = load_config(args.config, overrides)
        # Imported only now: a mistake above is answered without the seconds torch and FFCV take to load.
        from .exporting import export

        export(config, args.weights, args.dataset, args.res or [config.validation.resolution], args.out,
               logits=args.logits, float16=args.float16)
    except ConfigError as err:
        return fail(PROG, str(err), EXIT_ERROR, speaks)
    except KeyboardInterrupt:
        return interrupted(PROG, "interrupted; no partial file was left at the final names", speaks)
    except OSError as err:
        return fail(PROG, os_error_message(err), EXIT_IO_ERROR)
    return 0
