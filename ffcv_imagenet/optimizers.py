"""The optimizer and its parameter groups: which weights decay, and which a FixRes phase may hold still.

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
