"""Top-1 / top-5 over the whole validation set, every image counted exactly once across ranks."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn

from .distributed import DistContext, all_reduce_sum
from .loaders import normalize

TOP_K = (1, 5)


@dataclass(frozen=True)
class EvalResult:
    top1: float
    top5: float
    loss: float
    count: int  # images evaluated over all ranks


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision as the recipe asks: fp16 or bf16 autocast, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def sync_buffers(ctx: DistContext, model: nn.Module) -> None:
    """Every rank evaluates rank 0's BatchNorm statistics, the ones its checkpoint holds."""
    if ctx.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], ctx: DistContext, *,
             precision: str, flip_tta: bool) -> EvalResult:
    """``model`` must be the bare module (not DDP-wrapped): ranks may run different batch counts."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=ctx.device)  # top-1 hits, top-5 hits, loss, count
    for images, labels in batches:
        labels = labels.view(-1)
        inputs = normalize(images)
        with autocast_for(ctx.device, precision):
            logits = model(inputs).float()
            if flip_tta:
                logits = logits + model(inputs.flip(3)).float()
        k = min(max(TOP_K), logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top == labels[:, None]
        sums[0] += hits[:, :1].sum()
        sums[1] += hits.sum()
        sums[2] += nn.functional.cross_entropy(logits / (2 if flip_tta else 1), labels, reduction="sum")
        sums[3] += labels.numel()
    top1_hits, top5_hits, loss_sum, count = all_reduce_sum(ctx, sums).tolist()
    count = int(count)
    if count == 0:
        raise RuntimeError("the validation set is empty")
    return EvalResult(top1=top1_hits / count, top5=top5_hits / count, loss=loss_sum / count, count=count)


def resolution_table(rows: list[dict[str, float]], trained_at: int) -> str:
    """The train/test resolution effect: accuracy at each test resolution of a model trained at one."""
    lines = [f"test res | top-1   | top-5    (last trained at {trained_at} px)", "---------+---------+--------"]
    for row in rows:
        lines.append(f"{row['res']:>8} | {100 * row['top1']:6.2f}% | {100 * row['top5']:6.2f}%")
    return "\n".join(lines)
