"""Model construction, BlurPool, and export as plain torchvision weights."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision import models

from ffcv_imagenet.config import ModelConfig
from ffcv_imagenet.model import BlurPoolConv2d, build_model, torchvision_state_dict


def strided_convs(model: nn.Module, min_in: int) -> int:
    return sum(1 for m in model.modules()
               if isinstance(m, nn.Conv2d) and max(m.stride) > 1 and m.in_channels >= min_in)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_blurpool_wraps_every_strided_conv_but_the_stem(arch: str) -> None:
    plain = getattr(models, arch)(weights=None)
    model = build_model(ModelConfig(arch=arch, use_blurpool=True), num_classes=10)
    wrapped = [m for m in model.modules() if isinstance(m, BlurPoolConv2d)]
    assert len(wrapped) == strided_convs(plain, 16) > 0
    assert not isinstance(model.conv1, BlurPoolConv2d)  # 3 input channels: left alone


def test_blur_keeps_a_flat_image_flat() -> None:
    conv = nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=False)
    blur = BlurPoolConv2d(conv)
    flat = torch.full((1, 16, 12, 12), 0.7)
    blurred = nn.functional.conv2d(flat, blur.blur_filter, padding=1, groups=16)
    assert torch.allclose(blurred[..., 1:-1, 1:-1], flat[..., 1:-1, 1:-1])


@pytest.mark.parametrize("use_blurpool", [True, False])
def test_exported_weights_load_into_torchvision(use_blurpool: bool) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="resnet18", use_blurpool=use_blurpool), num_classes=7)
    exported = torchvision_state_dict(model)
    reference = models.resnet18(num_classes=7)
    reference.load_state_dict(exported)  # strict: every key present, none extra
    # ResNet-18's strided 3x3 convolution is each stage's first conv1
    assert torch.equal(reference.layer2[0].conv1.weight, model.state_dict()[
        "layer2.0.conv1.conv.weight" if use_blurpool else "layer2.0.conv1.weight"])
    if not use_blurpool:
        model.eval()
        reference.eval()
        x = torch.randn(2, 3, 64, 64)
        assert torch.allclose(model(x), reference(x))


def test_compiled_and_ddp_prefixes_are_stripped() -> None:
    model = build_model(ModelConfig(arch="resnet18", use_blurpool=True), num_classes=3)
    prefixed = nn.Module()
    prefixed.module = model  # the shape DDP gives the state dict: "module.<key>"
    exported = torchvision_state_dict(prefixed)
    models.resnet18(num_classes=3).load_state_dict(exported)
