"""What the ranks agree on after each optimizer update, and the signals that ask the run to stop.

Each update all-reduces one small tensor: (loss sum, stop requests, checkpoint due). ``QueuedUpdate``
carries it to the host without making the host wait for the GPU at that step: the trainer reads an
update's values one update later. ``StopRequest`` remembers a SIGTERM/SIGUSR1 until the loop reaches
a step boundary, where that reading acts on it on every rank at once.
"""
from __future__ import annotations

import signal
from typing import Any

import torch

from .distributed import DistContext, all_reduce_sum

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # SIGUSR1: what SLURM's --signal sends before preemption


class QueuedUpdate:
    """An optimizer update's all-reduced (loss sum, stop requests, checkpoint due), on their way to the host.

    On a GPU the values are copied into pinned host memory behind the update's own work, and an
    event marks the copy's end: reading them later waits for that update only, not for work queued
    after it. On the CPU they are already on the host.
    """

    def __init__(self, reduced: torch.Tensor, world_size: int):
        self.world_size = world_size
        self.copied: torch.cuda.Event | None = None
        self.values = reduced
        if reduced.device.type == "cuda":
            self.values = torch.empty(reduced.shape, dtype=reduced.dtype, pin_memory=True)
            self.values.copy_(reduced, non_blocking=True)
            self.copied = torch.cuda.Event()
            self.copied.record()

    def read(self) -> tuple[float, bool, bool]:
        """(loss averaged over the ranks, stop requested on any rank, checkpoint due by rank 0's clock)."""
        if self.copied is not None:
            self.copied.synchronize()
        loss_sum, stops, due = self.values.tolist()
        return loss_sum / self.world_size, stops > 0, due > 0


class StopRequest:
    """Remembers a SIGTERM/SIGUSR1 until the loop reaches a step boundary."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True

    def agreed(self, ctx: DistContext) -> bool:
        """Whether a stop signal reached any rank: one small all-reduce, so all ranks stop together."""
        requested = torch.full((1,), float(self.requested), device=ctx.device)
        return all_reduce_sum(ctx, requested).item() > 0
