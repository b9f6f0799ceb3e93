"""``python -m ffcv_imagenet.slurm``: the launcher's command over ``slurm_launch``.

    srun --ntasks-per-node=1 .venv/bin/python -m ffcv_imagenet.slurm -- train_imagenet.py --config R ...

A mistake (no training command, a SLURM variable missing or malformed) is one line and exit code 2;
otherwise the exit code is torchrun's, or 143 when SLURM's warning signal stopped training.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Sequence

from .cli import OneLineParser, fail
from .slurm_launch import DEFAULT_PORT, SlurmEnvError, launch, torchrun_command

PROG = "python -m ffcv_imagenet.slurm"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="Inside a SLURM job (one task per node): start torchrun for "
                           "this node from SLURM's variables, and pass SIGUSR1 on to the training processes.")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="rendezvous port on the first node (change it when jobs share a node)")
    parser.add_argument("--nproc-per-node", type=int, metavar="N",
                        help="processes per node (default: SLURM's GPUs on this node)")
    parser.add_argument("--dry-run", action="store_true", help="print the torchrun command and exit")
    parser.add_argument("script", nargs=argparse.REMAINDER,
                        help="after --: the training command, e.g. -- train_imagenet.py --config RECIPE ...")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    script = args.script[1:] if args.script[:1] == ["--"] else args.script
    if not script:
        parser.error("no training command; give it after --, e.g. -- train_imagenet.py --config RECIPE")
    if args.nproc_per_node is not None and args.nproc_per_node < 1:
        parser.error(f"--nproc-per-node: must be at least 1, got {args.nproc_per_node}")
    try:
        command = torchrun_command(os.environ, script, port=args.port, nproc_per_node=args.nproc_per_node)
    except SlurmEnvError as err:
        return fail(PROG, str(err))
    if args.dry_run:
        print(shlex.join(command))
        return 0
    return launch(command)
