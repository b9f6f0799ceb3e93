"""``python -m ffcv_imagenet.plot RUN_DIR [--compare RUN_DIR ...] [--out DIR]``: PNGs of a run."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .cli import OneLineParser, fail, os_error_message
from .plots import PlotError, load_run, write_figures

PROG = "python -m ffcv_imagenet.plot"


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineParser(prog=PROG, description="Plot a run's loss, accuracy, LR and resolution, and img/s "
                           "per epoch (FixRes epochs shaded) as PNGs.")
    parser.add_argument("run", type=Path, help="run folder (the recipe's logging.folder)")
    parser.add_argument("--compare", type=Path, nargs="+", default=[], metavar="RUN_DIR",
                        help="overlay these runs on the same figures")
    parser.add_argument("--out", type=Path, help="folder for the PNGs (default: RUN/plots)")
    args = parser.parse_args(argv)
    try:
        runs = [load_run(folder) for folder in [args.run, *args.compare]]
        written = write_figures(runs, args.out or args.run / "plots")
    except PlotError as err:
        return fail(PROG, str(err))
    except OSError as err:  # an unwritable --out, a full disk, an unreadable log: bad input here
        return fail(PROG, os_error_message(err))
    for path in written:
        print(path)
    return 0

