"""The recipe options every training-side command shares: ``--config``, ``--print-config``,
``--help-config`` and ``--section.key=value`` overrides.

A wrong option is the parser's one line (``cli.OneLineParser``); a bad recipe is a ConfigError the
command turns into one line. Imports neither torch nor FFCV.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from .config import describe
from .recipes import load_config, recipe_text, translation_notes


def add_recipe_options(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument("--config", metavar="RECIPE", required=required,
                        help="YAML recipe: one of rcfg/ (only what differs from the base recipe), or an "
                             "ffcv-imagenet config (rn50_88_epochs.yaml, ...), translated")
    parser.add_argument("--print-config", action="store_true",
                        help="print the fully resolved recipe (base < --config < overrides) and exit")
    parser.add_argument("--help-config", action="store_true",
                        help="list every recipe key with its type, default, allowed values and help, and exit")


def split_overrides(parser: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Known options, and the ``--section.key=value`` recipe overrides among the rest."""
    args, rest = parser.parse_known_args(argv)
    for arg in rest:
        if not arg.startswith("--") or "=" not in arg:
            parser.error(f"unrecognised argument {arg!r} (recipe overrides look like --training.epochs=16)")
    return args, rest


def answer_recipe_questions(args: argparse.Namespace, overrides: Sequence[str]) -> bool:
    """--help-config and --print-config: print the answer and say so (the command then exits 0).
    Raises ConfigError for a bad recipe."""
    if args.help_config:
        print(describe())
        return True
    if args.print_config:
        config = load_config(args.config, overrides)
        print(recipe_text(config, translation_notes(args.config), full=True))
        return True
    return False
