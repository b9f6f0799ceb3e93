"""Top-1 / top-5 over the whole validation set, every image counted exactly once across ranks.

``Evaluator`` serves training (after each epoch, at several test resolutions at the end) and
``evaluate_saved`` (``train_imagenet.py --evaluate WEIGHTS``: saved weights, no optimizer or train
loader); ``view_logits`` is the one forward pass, shared with the export."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from . import schedule
from .beton_format import Fields
from .checkpointing import load_trained_weights
from .distributed import DistContext, all_reduce_sum
from .loaders import LoaderSettings, ValLoader, build_val_loader, normalize, workers_per_rank
from .model import autocast_for, prepare_model
from .preflight import Datasets, preflight
from .remote_cache import CacheSettings

if TYPE_CHECKING:
    from .config import Config

TOP_K = (1, 5)


@dataclass(frozen=True)
class EvalResult:
    top1: float
    top5: float
    loss: float
    count: int  # images evaluated over all ranks


def sync_buffers(ctx: DistContext, model: nn.Module) -> None:
    """Every rank evaluates rank 0's BatchNorm statistics, the ones its checkpoint holds."""
    if ctx.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def view_logits(model: nn.Module, images: torch.Tensor, device: torch.device, *, precision: str,
                flip_tta: bool) -> torch.Tensor:
    """float32 logits of a uint8 batch, averaged over the image and its mirror with flip TTA:
    the one forward pass of evaluation, shared with the export of predictions."""
    inputs = normalize(images)
    with autocast_for(device, precision):
        logits = model(inputs).float()
        if flip_tta:
            logits = (logits + model(inputs.flip(3)).float()) / 2
    return logits


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], ctx: DistContext, *,
             precision: str, flip_tta: bool) -> EvalResult:
    """``model`` must be the bare module (not DDP-wrapped): ranks may run different batch counts."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=ctx.device)  # top-1 hits, top-5 hits, loss, count
    for images, labels in batches:
        labels = labels.view(-1)
        logits = view_logits(model, images, ctx.device, precision=precision, flip_tta=flip_tta)
        k = min(max(TOP_K), logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top == labels[:, None]
        sums[0] += hits[:, :1].sum()
        sums[1] += hits.sum()
        sums[2] += nn.functional.cross_entropy(logits, labels, reduction="sum")
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


class Evaluator:
    """The recipe's evaluation of any model: val loaders built on first use at each resolution and kept
    (numba compiles a pipeline once), rank 0's BatchNorm statistics, flip TTA as the recipe says."""

    def __init__(self, config: Config, ctx: DistContext, val_path: Path, val_size: int, fields: Fields):
        self.config, self.ctx = config, ctx
        self.val_path, self.val_size, self.fields = val_path, val_size, fields
        self.loaders: dict[int, ValLoader] = {}

    def loader(self, res: int) -> ValLoader:
        if res not in self.loaders:
            config = self.config
            settings = LoaderSettings(batch_size=config.validation.batch_size,
                                      num_workers=workers_per_rank(config.data.num_workers),
                                      device=self.ctx.device, channels_last=config.training.channels_last)
            self.loaders[res] = build_val_loader(
                self.val_path, settings, res=res, crop_ratio=config.validation.crop_ratio,
                num_samples=self.val_size, rank=self.ctx.rank, world_size=self.ctx.world_size,
                decoder=config.data.decoder, fields=self.fields, remote=CacheSettings.of(config.data))
        return self.loaders[res]

    def evaluate(self, model: nn.Module, res: int | None = None) -> EvalResult:
        sync_buffers(self.ctx, model)
        return evaluate(model, self.loader(res or self.config.validation.resolution), self.ctx,
                        precision=self.config.training.precision, flip_tta=self.config.validation.flip_tta)

    def resolution_rows(self, model: nn.Module, resolutions: Sequence[int]) -> list[dict[str, float]]:
        """Top-1/top-5 at each test resolution (resize + center crop), for the train/test resolution table."""
        rows = []
        for res in resolutions:
            result = self.evaluate(model, res)
            rows.append({"res": res, "top1": result.top1, "top5": result.top5, "count": result.count})
        return rows


def evaluate_saved(config: Config, ctx: DistContext, path: str | Path, resolutions: Sequence[int],
                   datasets: Datasets | None = None) -> list[dict]:
    """The separate evaluation command: saved weights at each test resolution, printed as a table.

    Only the model and the val loaders are built: no optimizer, scaler or train loader. ``datasets``:
    those ``preflight.check_before_torch`` already read, if any.
    """
    schedule.check_resolutions("--eval-res", resolutions)
    datasets = preflight(config, ctx, datasets)
    model = prepare_model(config, ctx, len(datasets.classes))
    load_trained_weights(model, path, config.model.arch)
    evaluator = Evaluator(config, ctx, datasets.val_path, datasets.val_size, datasets.val_fields)
    rows = evaluator.resolution_rows(model, resolutions)
    if ctx.is_main:
        print(resolution_table(rows, schedule.full_schedule(config.resolution, config.training.epochs)[-1].res),
              flush=True)
    return rows
