"""What every command of the package shares: the parser, the error line, the exit codes, Ctrl-C.

A mistake is one line on stderr, ``PROG: error: <key or path>: ...``, and exit
code 2, before any work; no usage dump, no table. This module imports neither
torch, FFCV nor the recipe machinery (the conversion's command uses it too), so a
wrong argument is answered at once. Recipe options are ``recipe_options``'.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import weakref
from types import FrameType
from typing import Any, NoReturn

# Exit codes, for every command.
EXIT_OK = 0
EXIT_IO_ERROR = 1  # a full disk or a vanished folder while writing
EXIT_ERROR = 2  # bad input: recipe, arguments, datasets
EXIT_DIVERGED = 3  # training stopped on non-finite losses
EXIT_INTERRUPTED = 130  # the shell's code for a Ctrl-C
EXIT_PREEMPTED = 143  # 128 + SIGTERM, what a scheduler expects from a job it signalled


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes are one line on stderr, exit code 2. A subcommand's parser gets ``root_prog``
    (the command's name) so its line reads ``write_datasets.py: error: convert: ...``."""

    def __init__(self, *args: Any, root_prog: str | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.root_prog = root_prog or self.prog

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix(self.root_prog).strip()
        where = f"{command}: " if command else ""
        self.exit(EXIT_ERROR, f"{self.root_prog}: error: {where}{message} (see {self.prog} -h)\n")


def world_from_env() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) as torchrun set them; (0, 0, 1) for a plain ``python`` run."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")),
            int(os.environ.get("WORLD_SIZE", "1")))


def fail(prog: str, message: str, code: int = EXIT_ERROR, show: bool = True) -> int:
    """The one error line (``show`` False on ranks that leave it to rank 0); returns the exit code."""
    if show:
        print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    return code


def interrupted(prog: str, message: str, show: bool = True) -> int:
    """The one line for a Ctrl-C, then quiet: objects the interrupt left half-built (numba's compiler
    stopped mid-pass, say) would each print an "Exception ignored" traceback as they are collected."""
    sys.unraisablehook = lambda _: None
    return fail(prog, message, EXIT_INTERRUPTED, show)


INTERRUPT_RETRY_SECONDS = 0.05
NATIVE_CALLBACK_MODULES = f"{os.sep}llvmlite{os.sep}"  # numba's LLVM binding, which C code calls back into
FINALIZER_FILE = weakref.__file__  # weakref.finalize callbacks, run by the garbage collector
FINALIZER_NAME = "__del__"


def interrupt_outside_native_callbacks() -> None:
    """Ctrl-C raises KeyboardInterrupt only where Python can pass it on.

    Numba compiles through llvmlite, whose C code calls back into Python (its object cache, its
    diagnostics). A KeyboardInterrupt raised inside such a callback is printed as "Exception ignored"
    and lost: an export interrupted 0.2 s into its compile ran on to its end. The same happens inside
    a ``__del__`` or a ``weakref.finalize`` callback that the garbage collector runs (numba's
    dispatchers have one). A Ctrl-C that lands in either is sent again a moment later, after it has
    returned. A process started with SIGINT ignored (a background job) keeps ignoring it.
    """
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupt)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    if _where_exceptions_are_dropped(frame):
        retry = threading.Timer(INTERRUPT_RETRY_SECONDS, os.kill, (os.getpid(), signum))
        retry.daemon = True
        retry.start()
        return
    raise KeyboardInterrupt


def _where_exceptions_are_dropped(frame: FrameType | None) -> bool:
    while frame is not None:
        code = frame.f_code
        if (NATIVE_CALLBACK_MODULES in code.co_filename or code.co_filename == FINALIZER_FILE
                or code.co_name == FINALIZER_NAME):
            return True
        frame = frame.f_back
    return False


def os_error_message(err: OSError) -> str:
    where = f"{err.filename}: " if err.filename else ""
    return f"{where}{err.strerror or err}"
