"""What each batch-level augmentation costs next to the training step it feeds, per resolution.

For rn50_88's resolutions, side by side in one run: the time of the recipe's
training step (forward, backward, SGD, on a fixed batch) and, alone, the time of
each option applied to the same uint8 batch on the same device: normalisation
(always paid), mixup/CutMix, RandAugment. Printed as ms per batch and as the
share of the step. Medians of repeats, first calls excluded.

    python benchmarks/bench_augment.py [--arch resnet50] [--batch 32] [--res 160 192 224] [--device cpu]
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
from torch import nn
from torchvision import models

from ffcv_imagenet.config import AugmentConfig
from ffcv_imagenet.loaders import normalize
from ffcv_imagenet.regularizers import BatchMixer, GroupRandAugment

CLASSES = 1000


def median_ms(work: Callable[[], object], device: torch.device, repeats: int) -> float:
    work()  # first call: allocations, kernel selection
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        work()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - started))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--res", type=int, nargs="+", default=[160, 192, 224])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    model = getattr(models, args.arch)(num_classes=CLASSES).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    mixer = BatchMixer(AugmentConfig(mixup_alpha=0.2, cutmix_alpha=1.0), CLASSES)
    randaugment = GroupRandAugment(AugmentConfig(randaugment_ops=2, randaugment_magnitude=9))
    labels = torch.randint(0, CLASSES, (args.batch,), device=device)

    print(f"{args.arch}, batch {args.batch}, {device}, fp32; ms per batch, and as a share of the training step")
    print("res | train step | normalize       | mixup/CutMix    | RandAugment 2x9")
    for res in args.res:
        images = torch.randint(0, 256, (args.batch, 3, res, res), dtype=torch.uint8, device=device)
        images = images.contiguous(memory_format=torch.channels_last)
        inputs = normalize(images)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(inputs), labels).backward()
            optimizer.step()

        costs = {"step": median_ms(step, device, args.repeats),
                 "normalize": median_ms(lambda: normalize(images), device, args.repeats),
                 "mix": median_ms(lambda: mixer(inputs, labels), device, args.repeats),
                 "randaugment": median_ms(lambda: randaugment(images), device, args.repeats)}
        cells = [f"{costs[k]:7.1f} ({100 * costs[k] / costs['step']:5.1f}%)" for k in ("normalize", "mix",
                                                                                       "randaugment")]
        print(f"{res:>3} | {costs['step']:10.1f} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
