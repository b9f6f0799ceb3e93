"""Process group set-up from torchrun's environment (or a single process without it).

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE and runs the
rendezvous (also across nodes); we only pick the backend and the device:
NCCL and one GPU per process on GPUs, gloo on CPUs. A rank that dies makes the
others' next collective fail after ``timeout_s`` instead of hanging forever.

Under ``torchrun --max-restarts=N`` a lost rank makes torchrun stop the others and start the
group again. Every attempt meets through the same store (torchrun's own, which outlives the
attempts), where the killed attempt's keys (gloo's peer addresses, NCCL's unique id) are still
set: read back by the next attempt, they point at dead processes ("connectFullMesh failed ...
Connection refused") or make it wait. Each attempt therefore keys its process group under a
prefix of its own (``TORCHELASTIC_RESTART_COUNT``), for gloo and NCCL alike.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .cli import world_from_env
from .config import ConfigError, DistConfig


@dataclass(frozen=True)
class DistContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    attempt: int = 0  # torchrun's restart count: 0, then 1, 2, ... after a lost rank (--max-restarts)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(cfg: DistConfig, local_rank: int) -> torch.device:
    wants_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if not wants_cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("dist.device: cuda was asked for but no GPU is visible")
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(f"dist.device: local rank {local_rank} has no GPU "
                          f"({torch.cuda.device_count()} visible); use --nproc_per_node <= that")
    return torch.device("cuda", local_rank)


def resolve_backend(cfg: DistConfig, device: torch.device) -> str:
    backend = cfg.backend if cfg.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError("dist.backend: nccl needs GPUs; use gloo (or auto) on CPU")
    return backend


def job_cores() -> int:
    """The cores this process may run on (SLURM and container CPU limits), not the machine's count."""
    return len(os.sched_getaffinity(0))


def ranks_on_node() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # set by torchrun


def restart_attempt() -> int:
    """Which start of the group this is: 0, or how many times torchrun restarted it."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def attempt_store(world_size: int, timeout: datetime.timedelta) -> dist.Store | None:
    """torchrun's store with this attempt's own key prefix (see the module docstring); None outside
    torchrun's agent store, where ``init_process_group`` builds its own store as before."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != str(True):
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                          is_master=False, timeout=timeout)  # torchrun's agent serves it
    return dist.PrefixStore(f"ffcv_imagenet/attempt{restart_attempt()}/", store)


def init_distributed(cfg: DistConfig) -> DistContext:
    rank, local_rank, world_size = world_from_env()
    device = resolve_device(cfg, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        # Ranks sharing a CPU node would each start one thread per core and thrash.
        torch.set_num_threads(max(1, job_cores() // ranks_on_node()))
    if world_size > 1:
        timeout = datetime.timedelta(seconds=cfg.timeout_s)
        store = attempt_store(world_size, timeout)
        where = {} if store is None else {"store": store, "rank": rank, "world_size": world_size}
        dist.init_process_group(backend=resolve_backend(cfg, device), timeout=timeout,
                                device_id=device if device.type == "cuda" else None, **where)
    return DistContext(rank=rank, local_rank=local_rank, world_size=world_size, device=device,
                       attempt=restart_attempt())


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def all_reduce_sum(ctx: DistContext, values: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place, returned for chaining; a no-op on one process."""
    if ctx.distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_reduce_max(ctx: DistContext, values: torch.Tensor) -> torch.Tensor:
    if ctx.distributed:
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


def broadcast_object(ctx: DistContext, obj: object) -> object:
    """Rank 0's ``obj`` on every rank (e.g. a decision only rank 0 can make)."""
    if not ctx.distributed:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
