"""Decoder speed per core, one run: FFCV 1.0.2's stock decoders vs ours with each decode method.

Methods (ffcv_imagenet.decoders): full = FFCV's decode path with our seeded windows; scaled = the
whole JPEG at the IDCT scale that serves (FFCV's imdecode); region = only the window's iMCU region
at that scale (our extension) and the cheaper resize (data.decoder: fast).

Data: ImageNet-like photos (the demo scenes with grain and texture, as in bench_conversion.py),
sides 250-500 px (about 400x350 on average), converted with write_datasets' defaults
(proportion mode: half the records JPEG quality 90, half raw). Each decoder gets its own FFCV
Loader with ONE worker thread (img/s per core), image pipeline = decoder (+ FFCV's
RandomHorizontalFlip for the stock RRC, whose decoder does not flip), no tensor conversion.
The first epoch of each loader (numba compile) is excluded; then the decoders take turns, the
order rotating every round, and the median epoch rate is reported with the ratios.

    python benchmarks/bench_decode.py [--images 600] [--rounds 5] [--jpeg-only] [--cases rrc fixres center]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from ffcv.fields.basics import IntDecoder
from ffcv.fields.rgb_image import CenterCropRGBImageDecoder, RandomResizedCropRGBImageDecoder, get_random_crop
from ffcv.loader import Loader, OrderOption
from ffcv.transforms import RandomHorizontalFlip

sys.path.insert(0, str(Path(__file__).parent))
from bench_conversion import make_folder, uniform_sides  # noqa: E402

from ffcv_imagenet.beton_format import RAW_MODE  # noqa: E402
from ffcv_imagenet.convert.conversion import ConversionSettings, convert_imagefolder  # noqa: E402
from ffcv_imagenet.decoders import (METHODS, REGION, RRC_RATIO, RRC_SCALE, VAL_CROP_RATIO,  # noqa: E402
                                    CenterCropDecoder, FixResCropDecoder, RandomResizedCropDecoder,
                                    dct_denominator)
from ffcv_imagenet.convert.inspection import image_metadata, open_beton  # noqa: E402

SIDE_RANGE = (250, 500)  # stored sides: about 400x350 on average, like ImageNet's originals
BATCH_SIZE = 64
# (crop mode, output resolutions): the targets
CASES = {"rrc": (160, 192), "fixres": (224, 288), "center": (224, 256)}


def decoders(mode: str, res: int) -> dict[str, list]:
    """name -> image pipeline, for one crop mode; 'stock' is FFCV's own where FFCV has one."""
    size = (res, res)
    if mode == "rrc":
        stock, ours = [RandomResizedCropRGBImageDecoder(size), RandomHorizontalFlip()], RandomResizedCropDecoder
    elif mode == "fixres":  # FFCV has no FixRes decoder: our FULL method is FFCV's decode path
        stock, ours = None, FixResCropDecoder
    else:
        stock, ours = [CenterCropRGBImageDecoder(size, ratio=VAL_CROP_RATIO)], CenterCropDecoder
    return {**({"stock": stock} if stock else {}), **{method: [ours(size, method=method)] for method in METHODS}}


def epoch_rate(loader: Loader) -> float:
    started = time.perf_counter()
    count = sum(len(labels) for _, labels in loader)
    return count / (time.perf_counter() - started)


def scale_shares(path: Path, res: int, indices: np.ndarray) -> str:
    """How often RRC windows at ``res`` get each IDCT scale, over the JPEG records (a replay of the draws)."""
    meta = image_metadata(open_beton(path))[indices]
    meta = meta[meta["mode"] != RAW_MODE]
    np.random.seed(0)
    denoms = [dct_denominator.py_func(*get_random_crop(h, w, np.array(RRC_SCALE), np.array(RRC_RATIO))[2:], res, res)
              for h, w in zip(meta["height"].tolist(), meta["width"].tolist())]
    return ", ".join(f"1/{d}: {denoms.count(d) / len(denoms):.0%}" for d in sorted(set(denoms)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--jpeg-only", action="store_true", help="read only the records stored as JPEG")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES), help="crop modes to run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root, beton = Path(tmp) / "photos", Path(tmp) / "photos.beton"
        make_folder(root, args.images, size=uniform_sides(*SIDE_RANGE))
        convert_imagefolder(root, beton, ConversionSettings(), progress=False)
        meta = image_metadata(open_beton(beton))
        keep = meta["mode"] != RAW_MODE if args.jpeg_only else np.ones(len(meta), dtype=bool)
        indices = np.flatnonzero(keep)
        print(f"{len(indices)} records ({np.mean(meta['mode'][indices] != RAW_MODE):.0%} JPEG), mean stored "
              f"{meta['width'][indices].mean():.0f}x{meta['height'][indices].mean():.0f}; 1 worker; "
              f"median of {args.rounds} epochs")
        for mode in args.cases:
            resolutions = CASES[mode]
            pipelines = decoders(mode, resolutions[0])
            first_ops = {name: pipeline[0] for name, pipeline in pipelines.items()}  # Loader empties the lists
            loaders = {name: Loader(str(beton), batch_size=BATCH_SIZE, num_workers=1, order=OrderOption.RANDOM,
                                    os_cache=True, indices=indices, seed=0,
                                    pipelines={"image": pipeline, "label": [IntDecoder()]})
                       for name, pipeline in pipelines.items()}
            for res in resolutions:
                for name, loader in loaders.items():
                    first_ops[name].output_size = (res, res)  # read when an epoch allocates: no recompile
                    epoch_rate(loader)  # warm-up: compile (first res) and page cache
                rates: dict[str, list[float]] = {name: [] for name in loaders}
                names = list(loaders)
                for round_ix in range(args.rounds):
                    shift = round_ix % len(names)
                    for name in names[shift:] + names[:shift]:
                        rates[name].append(epoch_rate(loaders[name]))
                median = {name: statistics.median(values) for name, values in rates.items()}
                cells = "  ".join(f"{name} {rate:7.0f} img/s" for name, rate in median.items())
                ratios = "  ".join(f"{REGION}/{name} {median[REGION] / median[name]:.2f}x"
                                   for name in median if name != REGION)
                extra = f"  [RRC IDCT scales {scale_shares(beton, res, indices)}]" if mode == "rrc" else ""
                print(f"{mode:6s} {res}: {cells}  |  {ratios}{extra}", flush=True)


if __name__ == "__main__":
    main()
