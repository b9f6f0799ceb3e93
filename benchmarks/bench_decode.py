"""Training decode per core, one run: our default records with our decoder against ffcv-imagenet-style
records with FFCV's stock decoder, on real-like sources (or the earlier synthetic ones).

Three files from the same source folder, per write mode (proportion = the rn50 data, jpg):
- theirs: the ffcv-imagenet way (FFCV's DatasetWriter over torchvision's ImageFolder: every JPEG
  record re-encoded at quality 90), read by FFCV's stock decoder (RandomResizedCropRGBImageDecoder +
  RandomHorizontalFlip; CenterCropRGBImageDecoder; FFCV has no FixRes decoder, so there its decode
  path, our FixRes window with ``method=full``);
- ours: write_datasets' defaults (``--jpeg-passthrough auto``), read by our fast decoder (REGION);
- ours re-encoded: ``--jpeg-passthrough never``, read by our fast decoder: what pass-through costs or
  saves per epoch (the target: ours at least 0.98x of it).
Each reader gets its own FFCV Loader with ONE worker thread (img/s per core), no tensor conversion.
The first epoch of each loader (numba compile) is excluded; the readers take turns, the order
rotating every round; the median epoch rate is reported with the ratios.

    python benchmarks/bench_decode.py [--images 1000] [--rounds 5] [--modes proportion jpg]
                                      [--sources real-like|synthetic] [--folder DIR]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np
from ffcv.fields.basics import IntDecoder
from ffcv.fields.rgb_image import CenterCropRGBImageDecoder, RandomResizedCropRGBImageDecoder
from ffcv.loader import Loader, OrderOption
from ffcv.transforms import RandomHorizontalFlip

sys.path.insert(0, str(Path(__file__).parent))
from bench_conversion import ffcv_imagenet_way  # noqa: E402
from real_like_sources import add_sources_option, prepare_sources  # noqa: E402

from ffcv_imagenet.beton_format import JPEG_MODE, stored_bytes  # noqa: E402
from ffcv_imagenet.convert.conversion import ConversionSettings, convert_imagefolder  # noqa: E402
from ffcv_imagenet.decoders import (FULL, REGION, VAL_CROP_RATIO, CenterCropDecoder,  # noqa: E402
                                    FixResCropDecoder, RandomResizedCropDecoder)
from ffcv_imagenet.convert.inspection import image_metadata, open_beton  # noqa: E402
from ffcv_imagenet.decode_rate import median_epoch_rates  # noqa: E402

BATCH_SIZE = 64
# (crop mode, output resolution): the targets
CASES = (("rrc", 160), ("rrc", 192), ("fixres", 224), ("center", 224))
THEIRS, OURS, OURS_REENCODED = "theirs+stock", "ours+fast", "ours re-encoded+fast"


def pipeline(reader: str, mode: str, res: int) -> list:
    size = (res, res)
    if reader == THEIRS:
        if mode == "rrc":
            return [RandomResizedCropRGBImageDecoder(size), RandomHorizontalFlip()]
        if mode == "center":
            return [CenterCropRGBImageDecoder(size, ratio=VAL_CROP_RATIO)]
        return [FixResCropDecoder(size, method=FULL)]
    decoder = {"rrc": RandomResizedCropDecoder, "fixres": FixResCropDecoder, "center": CenterCropDecoder}[mode]
    return [decoder(size, method=REGION)]


def write_files(root: Path, tmp: Path, write_mode: str) -> dict[str, Path]:
    settings = ConversionSettings(write_mode=write_mode)
    files = {name: tmp / f"{write_mode}-{name}.beton" for name in (THEIRS, OURS, OURS_REENCODED)}
    ffcv_imagenet_way(root, files[THEIRS], settings)
    convert_imagefolder(root, files[OURS], settings, progress=False)
    convert_imagefolder(root, files[OURS_REENCODED], dataclasses.replace(settings, jpeg_passthrough="never"),
                        progress=False)
    return files


def describe(files: dict[str, Path]) -> str:
    parts = []
    for name, path in files.items():
        meta = image_metadata(open_beton(path))
        parts.append(f"{name.split('+')[0]}: {np.mean(meta['mode'] == JPEG_MODE):.0%} JPEG, "
                     f"{stored_bytes(path) / len(meta) / 1024:.1f} KiB/record")
    return "; ".join(parts)


def time_case(files: dict[str, Path], mode: str, res: int, rounds: int) -> dict[str, float]:
    loaders = {name: Loader(str(files[name]), batch_size=BATCH_SIZE, num_workers=1, order=OrderOption.RANDOM,
                            os_cache=True, seed=0,
                            pipelines={"image": pipeline(name, mode, res), "label": [IntDecoder()]})
               for name in files}
    return median_epoch_rates(loaders, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--modes", nargs="+", choices=["proportion", "jpg"], default=["proportion", "jpg"])
    add_sources_option(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = prepare_sources(args, Path(tmp))
        for write_mode in args.modes:
            files = write_files(root, Path(tmp), write_mode)
            print(f"write mode {write_mode}: {describe(files)}; 1 worker, median of {args.rounds} epochs", flush=True)
            for mode, res in CASES:
                rate = time_case(files, mode, res, args.rounds)
                print(f"  {mode:6s} {res}: " + "  ".join(f"{name} {value:6.0f} img/s" for name, value in rate.items())
                      + f"  |  ours/theirs {rate[OURS] / rate[THEIRS]:.2f}x  "
                        f"ours/re-encoded {rate[OURS] / rate[OURS_REENCODED]:.2f}x", flush=True)


if __name__ == "__main__":
    main()
