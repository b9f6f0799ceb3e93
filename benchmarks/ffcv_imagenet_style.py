"""An ffcv-imagenet-style training step, and a bare one, timed the way the profile times ours.

ffcv-imagenet's ResNet-50 loop (its train_imagenet.py), rebuilt on our recipe's model: FFCV's stock
``RandomResizedCropRGBImageDecoder`` + ``RandomHorizontalFlip``, ``ToTensor``, ``ToDevice(non_blocking)``,
``ToTorchImage`` (channels-last) and ``NormalizeImage`` to fp16 on the device; per step the LR set on
every group, ``zero_grad``, the forward and label-smoothed loss under autocast, and the GradScaler's
backward, step and update; ``cudnn.benchmark`` on. Model, optimizer and loss come from the recipe
(``build_model``, ``build_optimizer``), so both sides train the same network. The output size is
set per resolution on one loader, as ffcv-imagenet does between epochs; FFCV has no FixRes decoder,
so its rows are all RandomResizedCrop.

FFCV's ``NormalizeImage`` runs on a GPU only through CuPy and pytorch_pfn_extras, which it imports
when the pipeline compiles. On a GPU (``--normalize auto``) that path is tried first; if it fails
(either package missing or broken) the same normalisation to fp16 runs in torch on the device right
after the loader, inside the loader's figure, and the JSON names which one ran and why. On a CPU
(where FFCV's own path expects NumPy arrays), and with ``--normalize torch``, torch's runs directly.
Each timed window starts on a fresh epoch after its warm-up (``profiling.FreshEpochs``).

The bare step: forward, backward and optimizer step (plain SGD over every parameter, same loss,
autocast and scaler) of the same model on one fixed batch, nothing else: what any step must pay.

    python benchmarks/ffcv_imagenet_style.py --config rcfg/rn50_88.yaml --runs fp16:160 fp16:192 bf16:160 \\
        --out theirs.json [--normalize auto|torch] [--warmup-steps 5 --steps 30 --repeats 3] [--section.key=value ...]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from ffcv.fields.basics import IntDecoder
from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
from ffcv.loader import Loader, OrderOption
from ffcv.transforms import NormalizeImage, RandomHorizontalFlip, Squeeze, ToDevice, ToTensor, ToTorchImage
from torch import nn

from ffcv_imagenet.beton_format import load_class_names
from ffcv_imagenet.config import Config
from ffcv_imagenet.recipe_options import split_overrides
from ffcv_imagenet.recipes import load_config
from ffcv_imagenet.distributed import resolve_device
from ffcv_imagenet.model import autocast_for
from ffcv_imagenet.fileio import atomic_write_text
from ffcv_imagenet.loaders import IMAGENET_MEAN_255, IMAGENET_STD_255, normalize, stop_epoch, workers_per_rank
from ffcv_imagenet.model import build_model
from ffcv_imagenet.optimizers import build_optimizer
from ffcv_imagenet.profile_settings import DEFAULT_REPEATS, DEFAULT_STEPS, DEFAULT_WARMUP_STEPS, ProfileSettings
from ffcv_imagenet.profiling import LOADER, MODEL, FreshEpochs, Rate, Window, rates_in_turns

Batch = tuple[torch.Tensor, torch.Tensor]
LR = 0.0  # as in the profile: the same arithmetic as training, weights unchanged, nothing can diverge
FFCV_GPU_NORMALIZE = "FFCV NormalizeImage on the device (CuPy)"
TORCH_NORMALIZE = "torch on the device after the loader"
AUTO, TORCH = "auto", "torch"


def build_loader(config: Config, device: torch.device, in_pipeline_normalize: bool
                 ) -> tuple[Loader, RandomResizedCropRGBImageDecoder]:
    decoder = RandomResizedCropRGBImageDecoder((config.resolution.min_res,) * 2)
    image = [decoder, RandomHorizontalFlip(), ToTensor(), ToDevice(device, non_blocking=True), ToTorchImage()]
    if in_pipeline_normalize:
        image.append(NormalizeImage(np.array(IMAGENET_MEAN_255), np.array(IMAGENET_STD_255), np.float16))
    label = [IntDecoder(), ToTensor(), Squeeze(), ToDevice(device, non_blocking=True)]
    loader = Loader(config.data.train_dataset, batch_size=config.training.batch_size,
                    num_workers=workers_per_rank(config.data.num_workers), order=OrderOption.RANDOM,
                    os_cache=True, drop_last=True, pipelines={"image": image, "label": label})
    return loader, decoder


def epochs_at(loader: Loader, decoder: RandomResizedCropRGBImageDecoder, res: int,
              in_pipeline_normalize: bool) -> FreshEpochs:
    """Normalised fp16 batches at ``res``, an epoch per timed window."""
    decoder.output_size = (res, res)  # what ffcv-imagenet's loop does at each epoch

    def open_epoch(_: int) -> Iterator[Batch]:
        epoch = iter(loader)
        try:
            for images, labels in epoch:
                yield (images if in_pipeline_normalize else normalize(images, torch.float16)), labels
        finally:
            stop_epoch(epoch)  # teardown only: not part of what is timed

    return FreshEpochs(open_epoch)


def their_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               criterion: nn.Module, precision: str) -> Callable[[torch.Tensor, torch.Tensor], None]:
    device = next(model.parameters()).device
    # fp32 (smoke runs on a CPU): no autocast to take the fp16 inputs to the weights' type
    input_dtype = torch.float32 if precision == "fp32" else None

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        images = images.to(input_dtype) if input_dtype is not None else images
        for group in optimizer.param_groups:
            group["lr"] = LR
        optimizer.zero_grad(set_to_none=True)
        with autocast_for(device, precision):
            loss = criterion(model(images), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return step


def measure_with(config: Config, runs: list[tuple[str, int]], settings: ProfileSettings, device: torch.device,
                 in_pipeline: bool) -> list[dict]:
    loader, decoder = build_loader(config, device, in_pipeline)
    settings.check_fits(len(loader))
    model = build_model(config.model, num_classes=len(load_class_names(config.data.train_dataset))).to(device)
    model = model.to(memory_format=torch.channels_last).train()
    criterion = nn.CrossEntropyLoss(label_smoothing=config.training.label_smoothing)
    bare_optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=config.training.momentum,
                                     weight_decay=config.training.weight_decay)
    rows = []
    for precision, res in runs:
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        theirs = their_step(model, build_optimizer(config, model), scaler, criterion, precision)
        bare = their_step(model, bare_optimizer, torch.amp.GradScaler(device.type, enabled=precision == "fp16"),
                          criterion, precision)
        batches = epochs_at(loader, decoder, res, in_pipeline)
        try:
            batches.restart()
            images, labels = batches.next()  # numba (and CuPy) compile on the first batch: never timed
            fixed = (images.clone(memory_format=torch.channels_last), labels.clone())  # FFCV reuses its buffers
            batches.close()
            windows = {"loader_device": Window(batches.next, batches), "model": Window(lambda: theirs(*fixed)),
                       "end_to_end": Window(lambda: theirs(*batches.next()), batches),
                       "bare_step": Window(lambda: bare(*fixed))}
            rates = rates_in_turns(windows, settings, device, config.training.batch_size)
        finally:
            batches.close()
        rows.append(row_dict(precision, res, list(fixed[0].shape), rates))
    return rows


def measure(config: Config, runs: list[tuple[str, int]], settings: ProfileSettings, device: torch.device,
            normalize: str = AUTO) -> tuple[list[dict], str]:
    """The rows, and how the batches were normalised: FFCV's CuPy path on a GPU, unless asked not to
    or it fails, then torch's (the baseline is never lost to CuPy)."""
    if normalize == AUTO and device.type == "cuda":
        try:
            return measure_with(config, runs, settings, device, in_pipeline=True), FFCV_GPU_NORMALIZE
        except Exception as err:  # CuPy or pytorch_pfn_extras missing or broken: any of their errors
            reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            print(f"FFCV's NormalizeImage on the device failed ({reason}); normalising in torch", file=sys.stderr)
            rows = measure_with(config, runs, settings, device, in_pipeline=False)
            return rows, f"{TORCH_NORMALIZE} (FFCV's CuPy path failed: {reason})"
    return measure_with(config, runs, settings, device, in_pipeline=False), TORCH_NORMALIZE


def row_dict(precision: str, res: int, shape: list[int], rates: dict[str, Rate]) -> dict:
    loader, model = rates["loader_device"].median, rates["model"].median
    return {"res": res, "crop_mode": "rrc", "precision": precision, "batch_shape": shape,
            **{name: dataclasses.asdict(rate) for name, rate in rates.items()},
            "ratio": rates["end_to_end"].median / min(loader, model),
            "bottleneck": LOADER if loader <= model else MODEL}


def parse_run(text: str) -> tuple[str, int]:
    precision, _, res = text.partition(":")
    if precision not in ("fp32", "bf16", "fp16") or not res.isdigit():
        raise argparse.ArgumentTypeError(f"expected PRECISION:RES such as fp16:160, got {text!r}")
    return precision, int(res)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="recipe: model, optimizer, loss, batch, data, workers")
    parser.add_argument("--runs", type=parse_run, nargs="+", required=True, metavar="PRECISION:RES")
    parser.add_argument("--warmup-steps", type=int, default=DEFAULT_WARMUP_STEPS)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    parser.add_argument("--normalize", choices=(AUTO, TORCH), default=AUTO,
                        help="auto: FFCV's NormalizeImage (CuPy) on a GPU, torch's if it fails or on a CPU; "
                             "torch: torch's only")
    parser.add_argument("--out", type=Path, required=True, metavar="PATH.json")
    args, overrides = split_overrides(parser, sys.argv[1:] if argv is None else argv)
    config = load_config(args.config, overrides)
    device = resolve_device(config.dist, local_rank=0)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # ffcv-imagenet sets it
    settings = ProfileSettings(args.warmup_steps, args.steps, args.repeats)
    settings.check()
    rows, normalisation = measure(config, args.runs, settings, device, args.normalize)
    setup = {"device": str(device), "arch": config.model.arch, "batch_size": config.training.batch_size,
             "num_workers": workers_per_rank(config.data.num_workers), "normalize": normalisation,
             "pipeline": "RandomResizedCropRGBImageDecoder, RandomHorizontalFlip, ToTensor, ToDevice, "
                         "ToTorchImage, NormalizeImage(fp16)"}
    atomic_write_text(args.out, json.dumps({"setup": setup, "settings": dataclasses.asdict(settings),
                                            "rows": rows}, indent=2) + "\n")
    for row in rows:
        print(f"{row['precision']} {row['res']}: loader {row['loader_device']['median']:.1f}, model "
              f"{row['model']['median']:.1f}, end to end {row['end_to_end']['median']:.1f}, bare step "
              f"{row['bare_step']['median']:.1f} img/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
