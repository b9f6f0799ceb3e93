"""Regularizers from the ResNet literature, each a recipe switch, off by default.

Batch-level ones run on the device after the loader (mixup/CutMix, RandAugment),
so the FFCV pipeline and its speed are untouched; model-level ones are hooks on
the torchvision ResNet (stochastic depth, classifier dropout) that leave its
parameter names alone, so exported weights still load into torchvision.
The trainer turns the batch-level ones off in the FixRes phase, and seeds their
draws per (seed, rank, epoch, step) with ``seed_step_draws``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.utils import ModelEmaV3
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import StochasticDepth
from torchvision.transforms import v2

from . import schedule
from .config import AugmentConfig, Config, EMAConfig, ModelConfig


# ---------------------------------------------------------------- batch level, on the device
class BatchMixer:
    """Mixup or CutMix per batch (torchvision's v2 transforms); targets become class probabilities.

    A mixed batch's targets still sum to one per image; CrossEntropyLoss's label
    smoothing then mixes them with the uniform distribution, as for hard labels.
    """

    def __init__(self, cfg: AugmentConfig, num_classes: int):
        choices, shares = [], []
        if cfg.mixup_alpha > 0:
            choices.append(v2.MixUp(alpha=cfg.mixup_alpha, num_classes=num_classes))
            shares.append(1.0 - cfg.cutmix_share if cfg.cutmix_alpha > 0 else 1.0)
        if cfg.cutmix_alpha > 0:
            choices.append(v2.CutMix(alpha=cfg.cutmix_alpha, num_classes=num_classes))
            shares.append(cfg.cutmix_share if cfg.mixup_alpha > 0 else 1.0)
        self.mix = v2.RandomChoice(choices, p=shares) if choices else None
        self.mix_prob = cfg.mix_prob

    @property
    def enabled(self) -> bool:
        return self.mix is not None

    def __call__(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mix is None or torch.rand(()) >= self.mix_prob:
            return inputs, labels
        mixed, targets = self.mix(inputs, labels)
        # MixUp's roll returns NCHW: a channels-last model would convert every layer's input.
        return mixed.contiguous(memory_format=_memory_format(inputs)), targets


class GroupRandAugment:
    """RandAugment on uint8 batches on the device, one draw of operations per group of images.

    torchvision's RandAugment applies one draw to a whole tensor; groups trade a
    little per-image diversity for a few kernel launches per group instead of per image.
    """

    def __init__(self, cfg: AugmentConfig):
        self.augment = v2.RandAugment(num_ops=cfg.randaugment_ops, magnitude=cfg.randaugment_magnitude)
        self.group = cfg.randaugment_group
        self.enabled = cfg.randaugment_ops > 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return images
        groups = [self.augment(chunk) for chunk in images.split(self.group)]
        return torch.cat(groups).contiguous(memory_format=_memory_format(images))


def _memory_format(images: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if images.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


STEP_SEED_MASK = 2 ** 64 - 1  # SeedSequence takes non-negative entropy; a negative seed wraps


def seed_step_draws(seed: int, rank: int, epoch: int, step: int, device: torch.device) -> None:
    """Seed one training step's draws: mixup/CutMix and RandAugment (the host generator),
    stochastic depth and dropout (the generator of ``device``, this rank's own).

    Per rank, so each rank mixes and drops differently and a global batch has the variety of
    all its ranks; per step, so a resumed run draws what the uninterrupted one drew at the same
    step, with no generator state to carry across a change of rank or GPU count. (Crops are
    seeded per image by the decoders, independently of ranks.)
    """
    entropy = [seed & STEP_SEED_MASK, rank, epoch, step]
    step_seed = int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])
    torch.default_generator.manual_seed(step_seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(step_seed)  # the current device, which distributed set-up made the rank's


# ---------------------------------------------------------------- model level, as hooks
def residual_blocks(model: nn.Module) -> list[nn.Module]:
    return [module for module in model.modules() if isinstance(module, (BasicBlock, Bottleneck))]


def add_drop_path(model: nn.Module, rate: float) -> list[float]:
    """Stochastic depth (Huang et al. 2016): block i of n drops its residual branch with
    probability rate * i / (n - 1); returns the rates. The branch ends in its last BatchNorm,
    so the drop is a hook on that BatchNorm's output, before the addition of the shortcut."""
    blocks = residual_blocks(model)
    rates = [rate * index / max(1, len(blocks) - 1) for index in range(len(blocks))]
    for block, block_rate in zip(blocks, rates):
        last_norm = block.bn3 if isinstance(block, Bottleneck) else block.bn2
        # A child of the BatchNorm itself, so copies of the model (the EMA) carry their own;
        # it has no parameters, so the state_dict keeps torchvision's names.
        last_norm.drop_path = StochasticDepth(block_rate, mode="row")
        last_norm.register_forward_hook(_drop_residual_branch)
    return rates


def _drop_residual_branch(norm: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
    return norm.drop_path(out)


def add_classifier_dropout(model: nn.Module, rate: float) -> None:
    """Dropout on the pooled features, as a pre-hook so ``fc.weight`` keeps its torchvision name."""
    def drop_features(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor]:
        return (F.dropout(args[0], rate, module.training),)

    model.fc.register_forward_pre_hook(drop_features)


def apply_model_regularizers(model: nn.Module, cfg: ModelConfig) -> None:
    if cfg.drop_path_rate > 0:
        add_drop_path(model, cfg.drop_path_rate)
    if cfg.dropout > 0:
        add_classifier_dropout(model, cfg.dropout)


# ---------------------------------------------------------------- weight averaging
class WeightAverage:
    """EMA of the weights (and BatchNorm statistics) with timm's ModelEmaV3, updated every ``every`` steps."""

    def __init__(self, model: nn.Module, cfg: EMAConfig):
        self.every = cfg.every
        self.ema = ModelEmaV3(model, decay=cfg.decay, use_warmup=cfg.warmup)
        self.steps = 0
        self.updates = 0

    @property
    def module(self) -> nn.Module:
        return self.ema.module

    def after_step(self, model: nn.Module) -> None:
        self.steps += 1
        if self.steps % self.every == 0:
            self.ema.update(model, step=self.updates)
            self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.ema.module.state_dict(), "steps": self.steps, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema.module.load_state_dict(state["weights"])
        self.steps, self.updates = state["steps"], state["updates"]


def regularizer_summary(config: Config) -> dict[str, Any]:
    """The options that are on, as the start of the run prints and logs them."""
    augment, training = config.augment, config.training
    candidates = {
        "optimizer": training.optimizer, "lr schedule": config.lr.schedule,
        "mixup alpha": augment.mixup_alpha, "cutmix alpha": augment.cutmix_alpha,
        "randaugment": f"{augment.randaugment_ops} ops x M{augment.randaugment_magnitude}"
        if augment.randaugment_ops else 0,
        "ema decay": config.ema.decay, "drop path": config.model.drop_path_rate, "dropout": config.model.dropout,
        "grad clip": training.grad_clip_norm, "label smoothing": training.label_smoothing,
        "fixres trains": config.resolution.fixres_train if schedule.fixres_epochs(
            config.resolution, training.epochs) else 0,
        "loss": training.loss, "flip": "on" if augment.flip else "off",
        "rrc scale": augment.rrc_scale, "rrc ratio": [round(end, 4) for end in augment.rrc_ratio],
    }
    return {name: value for name, value in candidates.items() if value}
