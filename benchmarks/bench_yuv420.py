"""yuv420 records (issue 27), one run, side by side on the same real-like sources:
- yuv420: ``--write-mode yuv420``, read by our decoders;
- theirs: ffcv-imagenet-style records (FFCV's DatasetWriter, proportion 0.5, quality 90), read by FFCV's
  stock decoders (RandomResizedCropRGBImageDecoder + flip, CenterCropRGBImageDecoder; FixRes: FFCV's
  full-size decode path with our window, as in bench_decode);
- rgb raw: ``--write-mode raw`` (FFCV's RGB raw), read by the same stock decoders.
Per-core img/s (one FFCV worker thread, no tensor conversion, median of ``--rounds`` epochs after a
compile epoch, readers taking turns), bytes per image, and the PSNR against the stored source pixels
(the RGB raw records) on the same crops (our decoders, same seeds: center 224 and RRC 160): yuv420 records against quality-90 JPEG records
(``--write-mode jpg``, pass-through off) of the same images.

Then the formats table of the README at RRC 160, our decoder on each: jpg (quality 90), rgb raw, yuv420
and the rn50 mix (the default conversion), with bytes per image and an ImageNet-scale file's size.

    python benchmarks/bench_yuv420.py [--images 400] [--rounds 3] [--folder DIR] [--sources real-like]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
from ffcv.fields.basics import IntDecoder
from ffcv.loader import Loader, OrderOption

sys.path.insert(0, str(Path(__file__).parent))
from bench_conversion import ffcv_imagenet_way  # noqa: E402
from bench_decode import CASES, THEIRS, pipeline  # noqa: E402
from real_like_sources import add_sources_option, prepare_sources  # noqa: E402

from ffcv_imagenet.beton_format import stored_bytes  # noqa: E402
from ffcv_imagenet.convert.conversion import ConversionSettings, convert_imagefolder  # noqa: E402
from ffcv_imagenet.convert.inspection import open_beton  # noqa: E402
from ffcv_imagenet.decoders import CenterCropDecoder, RandomResizedCropDecoder  # noqa: E402
from ffcv_imagenet.decode_rate import median_epoch_rates  # noqa: E402

BATCH_SIZE = 64
YUV, RGB_RAW = "yuv420+ours", "rgb raw+stock"
STOCK = "+stock"  # a reader name ending so is read by FFCV's stock decoders, else by ours
IMAGENET_TRAIN_IMAGES = 1_281_167


def psnr(decoded: np.ndarray, reference: np.ndarray) -> float:
    """PSNR over all pixels of all images (one mean squared error)."""
    mse = float(np.mean((decoded.astype(np.float64) - reference.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0 ** 2 / mse)


def crops(path: Path, decoder: object) -> np.ndarray:
    """Every record's crop through our decoder, seeded: the same windows and flips whatever the record kind."""
    loader = Loader(str(path), batch_size=BATCH_SIZE, num_workers=1, order=OrderOption.SEQUENTIAL,
                    pipelines={"image": [decoder], "label": [IntDecoder()]})
    if hasattr(decoder, "set_epoch"):
        decoder.set_epoch(run_seed=0, epoch=0)
    return np.concatenate([images.copy() for images, _ in loader])


def crop_psnr(files: dict[str, Path], make_decoder: Callable[[], object]) -> dict[str, float]:
    """PSNR of each file's crops against the same crops of the RGB raw records (the stored source pixels)."""
    source = crops(files[RGB_RAW], make_decoder())
    return {name: psnr(crops(path, make_decoder()), source) for name, path in files.items() if name != RGB_RAW}


def rates(files: dict[str, Path], mode: str, res: int, rounds: int) -> dict[str, float]:
    loaders = {name: Loader(str(path), batch_size=BATCH_SIZE, num_workers=1, order=OrderOption.RANDOM,
                            os_cache=True, seed=0,
                            pipelines={"image": pipeline(THEIRS if name.endswith(STOCK) else "ours", mode, res),
                                       "label": [IntDecoder()]})
               for name, path in files.items()}
    return median_epoch_rates(loaders, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    add_sources_option(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root, tmp = prepare_sources(args, Path(tmp)), Path(tmp)
        files = {YUV: tmp / "yuv420.beton", THEIRS: tmp / "theirs.beton", RGB_RAW: tmp / "raw.beton"}
        convert_imagefolder(root, files[YUV], ConversionSettings(write_mode="yuv420"), progress=False)
        ffcv_imagenet_way(root, files[THEIRS], ConversionSettings())
        convert_imagefolder(root, files[RGB_RAW], ConversionSettings(write_mode="raw"), progress=False)
        jpeg = tmp / "jpg.beton"
        convert_imagefolder(root, jpeg, ConversionSettings(write_mode="jpg", jpeg_passthrough="never"), progress=False)
        count = int(open_beton(files[YUV]).num_samples)
        sizes = {name: stored_bytes(path) / count for name, path in {**files, "jpg q90": jpeg}.items()}
        print("KiB per image: " + ", ".join(f"{name.split('+')[0]} {size / 1024:.1f}" for name, size in sizes.items())
              + f"; yuv420 / rgb raw {sizes[YUV] / sizes[RGB_RAW]:.2f}x, yuv420 / theirs {sizes[YUV] / sizes[THEIRS]:.2f}x")
        quality = {RGB_RAW: files[RGB_RAW], "yuv420": files[YUV], "jpg q90": jpeg}
        for name, make_decoder in (("center 224", lambda: CenterCropDecoder((224, 224))),
                                   ("rrc 160", lambda: RandomResizedCropDecoder((160, 160)))):
            print(f"PSNR against the stored source pixels (RGB raw), {name} crops: " + ", ".join(
                f"{kind} {value:.2f} dB" for kind, value in crop_psnr(quality, make_decoder).items()), flush=True)
        print(f"per-core img/s (1 worker, median of {args.rounds} epochs, {count} images):")
        for mode, res in CASES:
            rate = rates(files, mode, res, args.rounds)
            print(f"  {mode:6s} {res}: " + "  ".join(f"{name} {value:6.0f}" for name, value in rate.items())
                  + f"  |  yuv420/theirs {rate[YUV] / rate[THEIRS]:.2f}x  yuv420/rgb raw {rate[YUV] / rate[RGB_RAW]:.2f}x",
                  flush=True)
        formats = {"jpg q90+ours": jpeg, "rgb raw+ours": files[RGB_RAW], YUV: files[YUV], "rn50 mix+ours": tmp / "mix.beton",
                   THEIRS: files[THEIRS]}
        convert_imagefolder(root, formats["rn50 mix+ours"], ConversionSettings(), progress=False)
        rate = rates(formats, "rrc", 160, args.rounds)
        print("formats with our decoder at RRC 160 (per-core img/s; KiB per image; GiB for ImageNet's 1.28M):")
        for name, path in formats.items():
            size = stored_bytes(path) / count
            print(f"  {name:16s} {rate[name]:6.0f} img/s ({rate[name] / rate[THEIRS]:.2f}x theirs+stock)  "
                  f"{size / 1024:6.1f} KiB  {size * IMAGENET_TRAIN_IMAGES / 2 ** 30:6.0f} GiB", flush=True)


if __name__ == "__main__":
    main()
