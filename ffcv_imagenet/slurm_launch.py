"""SLURM's environment -> one torchrun per node, and SLURM's warning signal -> the training processes
(the library of ``python -m ffcv_imagenet.slurm``, whose command is ``slurm_cli``).

Each node's task starts torchrun with one process per GPU; the nodes meet in a
c10d rendezvous hosted by the first node of ``SLURM_JOB_NODELIST`` (its
``SLURM_NODEID`` is 0), under the id ``SLURM_JOB_ID``, which a requeued job
keeps. The node list is expanded here from SLURM's compressed form
(``gpu[01-03,07],cpu5``), so no ``scontrol`` is needed on the compute nodes.

Signals. ``sbatch --signal=USR1@T`` sends SIGUSR1 to the job steps' processes;
the trainer answers it by checkpointing at the next step and exiting 143. But
torchrun dies on a SIGUSR1 it does not handle, and then SLURM kills the workers
with it, mid-checkpoint. So this launcher starts torchrun with SIGUSR1
ignored, and passes every SIGUSR1 it gets on to torchrun's workers itself
(they may get it from SLURM as well: a flag set twice). torchrun reports a
worker's 143 as a plain failure (exit 1); this launcher exits 143 when it got
SIGUSR1 and training did not finish, so the batch script knows to requeue.
SIGTERM (scancel, or the time limit itself) reaches torchrun directly, which
forwards it to the workers: the launcher only waits for torchrun to end, and
exits with torchrun's code (a cancelled job is not requeued).
"""
from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
from typing import Mapping, Sequence

from .cli import EXIT_PREEMPTED

DEFAULT_PORT = 29500
WAITED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # torchrun gets these itself and stops its workers
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]  # torchrun of this Python's environment


class SlurmEnvError(ValueError):
    """A missing or malformed SLURM variable; the message starts with its name."""


# ---------------------------------------------------------------- SLURM's compressed host lists
def _split_top_level(text: str) -> list[str]:
    """Split on the commas outside brackets: ``a[1,3],b`` -> ``a[1,3]``, ``b``."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += (char == "[") - (char == "]")
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def _expand_ranges(body: str) -> list[str]:
    """``01-03,07`` -> 01, 02, 03, 07: the width of a range's first bound is kept (zero padding)."""
    values = []
    for item in body.split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if not match:
            raise ValueError(f"[{body}] holds {item!r}, not a number or a range like 01-04")
        low, high = match.group(1), match.group(2) or match.group(1)
        if int(high) < int(low):
            raise ValueError(f"[{body}] has a descending range {item}")
        values += [str(number).zfill(len(low)) for number in range(int(low), int(high) + 1)]
    return values


def _expand_host(pattern: str) -> list[str]:
    """One entry with any number of bracket groups: ``r[1-2]-n[1-2]`` -> r1-n1, r1-n2, r2-n1, r2-n2."""
    pieces = re.split(r"\[([^\[\]]*)\]", pattern)  # literal, group, literal, group, ..., literal
    literals, groups = pieces[0::2], pieces[1::2]
    if not pattern or any(c in literal for literal in literals for c in "[]"):
        raise ValueError(f"{pattern!r} is not a host name or a host[range] pattern")
    choices = [[literal] for literal in literals]
    for position, group in enumerate(groups):
        choices.insert(2 * position + 1, _expand_ranges(group))
    return ["".join(parts) for parts in itertools.product(*choices)]


def expand_nodelist(nodelist: str) -> list[str]:
    """Host names, in SLURM's order, from a list like ``gpu[01-03,07],cpu5`` or ``node[1-2]-ib``."""
    try:
        return [host for entry in _split_top_level(nodelist.strip()) for host in _expand_host(entry)]
    except ValueError as err:
        raise SlurmEnvError(f"SLURM_JOB_NODELIST: {nodelist!r}: {err}") from None


# ---------------------------------------------------------------- variables -> torchrun arguments
def _first(env: Mapping[str, str], names: Sequence[str]) -> tuple[str, str] | None:
    """(name, value) of the first of ``names`` that is set and not empty."""
    return next(((name, env[name]) for name in names if env.get(name, "").strip()), None)


def _count(name: str, value: str, lowest: int) -> int:
    if not re.fullmatch(r"\s*\d+\s*", value) or int(value) < lowest:
        raise SlurmEnvError(f"{name}: {value!r} is not a whole number of at least {lowest}")
    return int(value)


def gpus_on_node(env: Mapping[str, str]) -> int:
    """Processes for this node: SLURM_GPUS_ON_NODE, else SLURM_GPUS_PER_NODE ([type:]count, per type
    listed), else the devices in CUDA_VISIBLE_DEVICES."""
    if found := _first(env, ["SLURM_GPUS_ON_NODE"]):
        return _count(*found, lowest=1)
    if found := _first(env, ["SLURM_GPUS_PER_NODE"]):
        name, value = found
        return sum(_count(name, kind.split(":")[-1], lowest=1) for kind in value.split(","))
    if found := _first(env, ["CUDA_VISIBLE_DEVICES"]):
        return len([device for device in found[1].split(",") if device.strip()])
    raise SlurmEnvError("SLURM_GPUS_ON_NODE: not set (nor SLURM_GPUS_PER_NODE or CUDA_VISIBLE_DEVICES); "
                        "ask sbatch for GPUs (--gpus-per-node=N) or pass --nproc-per-node")


def _required(env: Mapping[str, str], names: Sequence[str]) -> tuple[str, str]:
    found = _first(env, names)
    if found is None:
        raise SlurmEnvError(f"{names[0]}: not set; run this inside a SLURM job (sbatch/srun)")
    return found


def torchrun_command(env: Mapping[str, str], script_args: Sequence[str], port: int = DEFAULT_PORT,
                     nproc_per_node: int | None = None) -> list[str]:
    """The torchrun command line for this node of the job that ``env`` describes."""
    nodelist = _required(env, ["SLURM_JOB_NODELIST", "SLURM_NODELIST"])[1]
    nnodes = _count(*_required(env, ["SLURM_NNODES", "SLURM_JOB_NUM_NODES"]), lowest=1)
    node_id = _count(*_required(env, ["SLURM_NODEID"]), lowest=0)
    job_id = _required(env, ["SLURM_JOB_ID", "SLURM_JOBID"])[1].strip()
    hosts = expand_nodelist(nodelist)
    if len(hosts) != nnodes:
        raise SlurmEnvError(f"SLURM_NNODES: {nnodes}, but SLURM_JOB_NODELIST {nodelist!r} names {len(hosts)} "
                            "nodes; use one task per node (--ntasks-per-node=1)")
    if node_id >= nnodes:
        raise SlurmEnvError(f"SLURM_NODEID: {node_id} is not below SLURM_NNODES {nnodes}")
    if not 0 < port < 2 ** 16:
        raise SlurmEnvError(f"--port: {port} is not a TCP port")
    nproc = nproc_per_node if nproc_per_node is not None else gpus_on_node(env)
    # The first node hosts the rendezvous store. Saying so (is_host) instead of letting torchrun compare
    # host names keeps working when the list names another interface than the hostname (node1-ib).
    is_host = "1" if node_id == 0 else "0"
    return [*TORCHRUN, f"--nnodes={nnodes}", f"--nproc_per_node={nproc}", "--rdzv_backend=c10d",
            f"--rdzv_endpoint={hosts[0]}:{port}", f"--rdzv_id={job_id}", f"--rdzv_conf=is_host={is_host}",
            *script_args]


# ---------------------------------------------------------------- launching, with the signal passed on
def launch(command: Sequence[str]) -> int:
    """Run torchrun; pass SIGUSR1 on to its workers; 143 when SIGUSR1 came and training did not finish."""
    warned = []

    def pass_on(signum: int, frame: object) -> None:
        warned.append(signum)
        for worker in _children(torchrun.pid):
            _send(worker, signal.SIGUSR1)

    def wait_for_torchrun(signum: int, frame: object) -> None:
        pass  # torchrun got the same signal and stops its workers; dying here would let SLURM kill them

    # Ignored from before torchrun starts: torchrun inherits it and so do its workers until the trainer
    # installs its own handler; a SIGUSR1 during their start-up is then dropped instead of killing them.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    torchrun = subprocess.Popen(command)
    signal.signal(signal.SIGUSR1, pass_on)
    for sig in WAITED_SIGNALS:
        signal.signal(sig, wait_for_torchrun)
    code = torchrun.wait()
    code = 128 - code if code < 0 else code  # killed by a signal: report it as a shell would
    return EXIT_PREEMPTED if warned and code != 0 else code


def _children(pid: int) -> list[int]:
    import psutil

    try:
        return [child.pid for child in psutil.Process(pid).children()]
    except psutil.NoSuchProcess:
        return []


def _send(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass  # a worker that already ended
