"""torchvision ResNets, optionally with BlurPool, and their export as plain torchvision weights; the
recipe's network on a rank's device (``prepare_model``) and the precision it runs in (``autocast_for``),
for training, evaluation and export alike."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torchvision import models

from .config import Config, ModelConfig
from .distributed import DistContext
from .regularizers import apply_model_regularizers

BLUR_KERNEL_1D = (1.0, 2.0, 1.0)  # binomial filter of Zhang, "Making CNNs shift-invariant again" (2019)
BLUR_MIN_IN_CHANNELS = 16  # ffcv-imagenet leaves the 3-channel stem convolution alone
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # added by DistributedDataParallel and torch.compile


class BlurPoolConv2d(nn.Module):
    """Low-pass filter the input, then run the wrapped strided convolution: less aliasing."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        kernel_1d = torch.tensor(BLUR_KERNEL_1D)
        kernel = torch.outer(kernel_1d, kernel_1d)
        kernel = kernel / kernel.sum()  # sums to one: a flat image stays flat
        self.conv = conv
        self.register_buffer("blur_filter", kernel.expand(conv.in_channels, 1, 3, 3).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blurred = F.conv2d(x, self.blur_filter, padding=1, groups=self.conv.in_channels)
        return self.conv(blurred)


def apply_blurpool(module: nn.Module) -> int:
    """Wrap every strided convolution with enough input channels; returns how many."""
    wrapped = 0
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d) and max(child.stride) > 1 and child.in_channels >= BLUR_MIN_IN_CHANNELS:
            setattr(module, name, BlurPoolConv2d(child))
            wrapped += 1
        else:
            wrapped += apply_blurpool(child)
    return wrapped


def build_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """A freshly initialised torchvision ResNet (no pretrained weights)."""
    model = getattr(models, cfg.arch)(weights=None, num_classes=num_classes)
    if cfg.use_blurpool:
        apply_blurpool(model)
    return model


def plain_key(key: str) -> str | None:
    """Our state_dict key -> torchvision's (None for a fixed blur filter, which torchvision lacks)."""
    for prefix in WRAPPER_PREFIXES:
        key = key.replace(prefix, "")
    if key.endswith("blur_filter"):
        return None
    return key.replace(".conv.", ".")


def torchvision_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Weights that ``torchvision.models.<arch>(num_classes=...).load_state_dict`` accepts.

    Blur filters are fixed, not learned, so dropping them loses nothing; a user
    who wants BlurPool at inference wraps the convolutions again with apply_blurpool.
    """
    return {name: value.detach().cpu().clone() for name, value in torchvision_weights(model.state_dict()).items()}


def torchvision_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state_dict of ours (a checkpoint's ``model``) under torchvision's keys; the tensors are shared."""
    return {name: value for key, value in state.items() if (name := plain_key(key)) is not None}


def load_torchvision_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """The inverse of torchvision_state_dict: exported weights back into a model from build_model."""
    ours = model.state_dict()
    mapped = {key: weights[name] for key in ours if (name := plain_key(key)) is not None and name in weights}
    missing = sorted(plain_key(key) for key in ours if plain_key(key) is not None and key not in mapped)
    extra = sorted(set(weights) - {plain_key(key) for key in ours})
    if missing or extra:
        raise ValueError(f"weights do not fit {type(model).__name__}: missing {missing[:3]}, unexpected {extra[:3]}")
    model.load_state_dict({**ours, **mapped})


def prepare_model(config: Config, ctx: DistContext, num_classes: int) -> nn.Module:
    """The recipe's network on this rank's device, regularizers and memory format applied (not DDP-wrapped)."""
    if ctx.device.type == "cuda":
        # Shapes stay fixed for an epoch (full batches), so cuDNN times its algorithms once per
        # shape and keeps the fastest, as ffcv-imagenet does (GPU runs are not bit-reproducible anyway).
        torch.backends.cudnn.benchmark = True
    model = build_model(config.model, num_classes=num_classes).to(ctx.device)
    apply_model_regularizers(model, config.model)
    if config.training.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def wrap_for_training(model: nn.Module, ctx: DistContext,
                      compile_model: bool) -> tuple[nn.Module, DistributedDataParallel | None]:
    """(the module training calls, its DDP wrapper if any): DDP across ranks, then torch.compile if asked."""
    wrapped, ddp = model, None
    if ctx.distributed:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        wrapped = ddp = DistributedDataParallel(model, device_ids=device_ids)
    if compile_model:
        wrapped = torch.compile(wrapped)
    return wrapped, ddp


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision as the recipe asks: fp16 or bf16 autocast, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)
