"""Pixel fidelity of our fast decoder (data.decoder: fast, method REGION) on real-like sources.

The same seeded windows of every record are decoded three ways: by our fast method, by FFCV's path
(``decoders.FULL``: full-size TurboJPEG decode, INTER_AREA resize), and by a high-quality reference
(the record decoded at full size by PIL, accurate IDCT, then the window resized with PIL's
antialiased Lanczos filter). PSNR of each fast/FFCV output against FFCV's and against the reference:
pooled (from the mean squared error over all images), median, share of images under 30 dB, worst.
Crops: RRC160 (torchvision's RandomResizedCrop window), FixRes224 and center224 (ratio 224/256). No flip.

    python benchmarks/bench_fidelity.py [--images 800] [--sources real-like|synthetic] [--folder DIR]
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

import numba
import numpy as np
from ffcv.fields.basics import IntDecoder
from ffcv.fields.rgb_image import get_center_crop, get_random_crop
from ffcv.loader import Loader, OrderOption
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from real_like_sources import add_sources_option, prepare_sources  # noqa: E402

from ffcv_imagenet.beton_format import JPEG_MODE  # noqa: E402
from ffcv_imagenet.convert.conversion import ConversionSettings, convert_imagefolder  # noqa: E402
from ffcv_imagenet.decoders import (FIXRES_CROP_RATIO, FULL, REGION, RRC_RATIO, RRC_SCALE,  # noqa: E402
                                    VAL_CROP_RATIO, CenterCropDecoder, FixResCropDecoder, RandomResizedCropDecoder,
                                    epoch_seed, fixres_crop_window, sample_seed)
from ffcv_imagenet.convert.inspection import image_metadata, open_beton, read_image, record_bytes  # noqa: E402

RUN_SEED, EPOCH = 0, 0
LOW_PSNR_DB = 30.0
BATCH = 50
CASES = {"RRC160": (RandomResizedCropDecoder, 160, get_random_crop, (RRC_SCALE, RRC_RATIO)),
         "FixRes224": (FixResCropDecoder, 224, fixres_crop_window, (None, FIXRES_CROP_RATIO)),
         "center224": (CenterCropDecoder, 224, get_center_crop, (None, VAL_CROP_RATIO))}


def decoded(beton: Path, decoder: object) -> np.ndarray:
    decoder.set_epoch(RUN_SEED, EPOCH)
    loader = Loader(str(beton), batch_size=BATCH, num_workers=1, order=OrderOption.SEQUENTIAL,
                    pipelines={"image": [decoder], "label": [IntDecoder()]})
    return np.concatenate([np.array(images) for images, _ in loader])


def windows(beton: Path, crop: object, scale: object, ratio: object) -> list[tuple[int, int, int, int]]:
    """Each record's window, drawn as the seeded decoders draw it (numba's generator, seeded per sample)."""
    draw = numba.njit(crop)

    @numba.njit
    def seeded(seed: int, height: int, width: int, scale: object, ratio: object) -> tuple[int, int, int, int]:
        np.random.seed(seed)
        return draw(height, width, scale, ratio)

    meta = image_metadata(open_beton(beton))
    seed = epoch_seed(RUN_SEED, EPOCH)
    scale = np.array(scale) if isinstance(scale, tuple) else scale
    ratio = np.array(ratio) if isinstance(ratio, tuple) else ratio
    return [seeded(sample_seed(seed, index), int(row["height"]), int(row["width"]), scale, ratio)
            for index, row in enumerate(meta)]


def reference(beton: Path, boxes: list[tuple[int, int, int, int]], res: int) -> np.ndarray:
    """Full-size accurate decode (PIL) of each record, its window resized with Lanczos (antialiased)."""
    reader = open_beton(beton)
    modes = image_metadata(reader)["mode"]
    out = []
    for index, (top, left, height, width) in enumerate(boxes):
        if modes[index] == JPEG_MODE:
            image = Image.open(io.BytesIO(record_bytes(reader, index).tobytes())).convert("RGB")
        else:
            image = Image.fromarray(read_image(reader, index))
        out.append(np.asarray(image.crop((left, top, left + width, top + height)).resize((res, res), Image.LANCZOS)))
    return np.stack(out)


def squared_errors(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean squared error of each image pair."""
    return ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(axis=1)


def describe(mse: np.ndarray) -> str:
    each = 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-12))
    pooled = 10 * np.log10(255.0 ** 2 / mse.mean())
    return (f"pooled {pooled:5.1f} dB, median {np.median(each):5.1f}, under {LOW_PSNR_DB:.0f} dB "
            f"{np.mean(each < LOW_PSNR_DB):5.1%}, worst {each.min():5.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=800)
    add_sources_option(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = prepare_sources(args, Path(tmp))
        beton = Path(tmp) / "records.beton"
        convert_imagefolder(root, beton, ConversionSettings(), progress=False)  # rn50 data settings
        modes = image_metadata(open_beton(beton))["mode"]
        print(f"{len(modes)} records, {np.mean(modes == JPEG_MODE):.0%} JPEG (default conversion); "
              f"PSNR per image, then: pooled / median / share under {LOW_PSNR_DB:.0f} dB / worst")
        for name, (decoder_class, res, crop, (scale, ratio)) in CASES.items():
            kwargs = {} if decoder_class is CenterCropDecoder else {"flip": False}
            ours = decoded(beton, decoder_class((res, res), method=REGION, **kwargs))
            ffcv = decoded(beton, decoder_class((res, res), method=FULL, **kwargs))
            best = reference(beton, windows(beton, crop, scale, ratio), res)
            for kind, chosen in (("JPEG", modes == JPEG_MODE), ("raw", modes != JPEG_MODE), ("all", modes >= 0)):
                if not chosen.any():
                    continue
                print(f"{name:9s} {kind:4s} fast vs FFCV: {describe(squared_errors(ours[chosen], ffcv[chosen]))} | "
                      f"vs Lanczos: fast {describe(squared_errors(ours[chosen], best[chosen]))}; "
                      f"FFCV {describe(squared_errors(ffcv[chosen], best[chosen]))}", flush=True)


if __name__ == "__main__":
    main()
