"""The optimizer and its parameter groups: which weights decay, and which a FixRes phase may hold still;
and the step that applies an update's gradients (``apply_gradients``).

SGD and AdamW come from torch; LAMB and LARS (layer-wise trust ratios, for very
large batches) from timm. Every optimizer gets the same three groups.
"""
from __future__ import annotations

from typing import Any

import torch
from timm.optim import Lamb, Lars
from torch import nn

from . import schedule
from .config import Config


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """SGD groups: weight decay on conv and linear weights only, none on BatchNorm and biases
    (ffcv-imagenet); ``backbone`` marks the conv weights a ``bn_fc`` FixRes phase holds still."""
    classifier = {id(param) for param in model.fc.parameters()}
    backbone, classifier_weights, no_decay = [], [], []
    for param in model.parameters():
        if param.ndim <= 1:
            no_decay.append(param)
        elif id(param) in classifier:
            classifier_weights.append(param)
        else:
            backbone.append(param)
    return [{"params": backbone, "weight_decay": weight_decay, "backbone": True},
            {"params": classifier_weights, "weight_decay": weight_decay, "backbone": False},
            {"params": no_decay, "weight_decay": 0.0, "backbone": False}]


def build_optimizer(config: Config, model: nn.Module, fused: bool | None = None) -> torch.optim.Optimizer:
    """The recipe's optimizer; its LR is set every step by the trainer (from lr_schedule).
    ``fused`` (SGD): None is fused on a GPU only."""
    training = config.training
    groups = parameter_groups(model, training.weight_decay)
    betas = tuple(training.betas)
    if training.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=0.0, betas=betas)
    if training.optimizer == "lamb":
        return Lamb(groups, lr=0.0, betas=betas)
    if training.optimizer == "lars":
        return Lars(groups, lr=0.0, momentum=training.momentum)
    # Fused on a GPU: one kernel, and it skips a step on a flag that stays on the device (the trainer's
    # non-finite skip, the fp16 scaler's), so no step waits for the host. The CPU keeps torch's default
    # implementation: the same arithmetic as ever, so CPU results do not change.
    if fused is None:
        fused = next(model.parameters()).device.type == "cuda"
    optimizer = torch.optim.SGD(groups, lr=0.0, momentum=training.momentum, nesterov=training.nesterov,
                                fused=True if fused else None)  # None: torch's own choice
    if fused and training.momentum > 0:
        zero_momentum(optimizer)
    return optimizer


def zero_momentum(optimizer: torch.optim.SGD) -> None:
    """Momentum buffers of zeros before the first step. Torch's fused SGD allocates them uninitialised
    at its first step and fills them only if the step is not skipped: a skipped first step (a
    non-finite loss, the fp16 scaler's first overflow) would leave garbage (NaN) that the next
    step uses. With zeros, the first step's ``0 * momentum + grad`` is exactly torch's ``grad``."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            optimizer.state[param]["momentum_buffer"] = torch.zeros_like(param)


def backbone_frozen(config: Config, plan: schedule.EpochPlan) -> bool:
    """FixRes fine-tuning (Touvron et al. 2019): only BatchNorm and the classifier adapt to the new resolution."""
    return plan.crop_mode == schedule.FIXRES and config.resolution.fixres_train == "bn_fc"


def apply_gradients(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, model: nn.Module,
                    clip_norm: float, ema: Any = None, skip: torch.Tensor | None = None) -> None:
    """The optimizer step after an update's backward passes: fp16 unscaling and gradient clipping where
    asked, the step, the EMA's follow-up. ``skip``, a bool on the device (fused optimizers only: torch's
    GradScaler protocol), leaves every weight and optimizer state as it was when true, without the host
    reading it."""
    if skip is not None:
        _skip_on_device(optimizer, scaler, model, skip)
    if clip_norm > 0:
        scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
        nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    scaler.step(optimizer)
    if skip is not None and not scaler.is_enabled():
        del optimizer.found_inf
    scaler.update()
    if ema is not None:
        ema.after_step(model)  # a step skipped on the device still counts here


def _skip_on_device(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, model: nn.Module,
                    skip: torch.Tensor) -> None:
    if scaler.is_enabled():
        # The fp16 scaler checks the gradients on the device and hands the fused step its own skip
        # flag: one NaN in one (contiguous, 1-D) gradient makes it skip, and lower its scale.
        grad = next(p.grad for p in model.parameters() if p.grad is not None and p.grad.dim() == 1)
        grad[:1].add_(torch.where(skip, float("nan"), 0.0))
    else:
        optimizer.found_inf = skip.float().reshape(1)  # read by the fused kernel (torch's GradScaler protocol)
