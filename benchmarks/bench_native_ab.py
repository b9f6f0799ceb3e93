"""Two builds of the compiled library side by side, in one process: the same calls on the same real-like
photos must give the same bytes, and each build's time is the median (and the fastest) of many passes taken in turns.

For a change to csrc/ that must not change any output (a cache, a buffer, a pass fewer). Build the
library before the change, keep a copy, rebuild, then compare:

    git stash && python setup.py -q build_ext --inplace && cp ffcv_imagenet/_jpeg_region*.so /tmp/old.so
    git stash pop && python setup.py -q build_ext --inplace
    python benchmarks/bench_native_ab.py --old /tmp/old.so [--images 60] [--rounds 31] [--res 160]

The cases: the decoders' resize of RRC windows (crop_resize, FAST_RESIZE: box average then the fixed-point
shrink) and of validation centre crops, a yuv420 record's windows (yuv420_crop_resize), and the conversion's
fixed-point shrink of whole photos to a long side of --shrink-to (area_shrink: 3x and more, the long-tap path).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from ctypes import CDLL, c_int32, c_void_p
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from real_like_sources import make_real_like_folder  # noqa: E402

from ffcv_imagenet import _jpeg_region  # noqa: E402
from ffcv_imagenet.jpeg_region import FAST_RESIZE  # noqa: E402
from ffcv_imagenet.yuv420_records import rgb_to_yuv420  # noqa: E402

RRC_SCALE, RRC_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)
CENTRE_RATIO = 224 / 256
Call = Callable[[], None]


def library(path: str) -> CDLL:
    lib = CDLL(path)
    lib.crop_resize.argtypes = [c_void_p, c_int32, c_int32, c_int32, c_int32, c_int32, c_int32, c_void_p, c_int32,
                                c_int32, c_int32]
    lib.crop_resize.restype = None
    lib.yuv420_crop_resize.argtypes = [c_void_p, c_int32, c_int32, c_int32, c_int32, c_int32, c_int32, c_void_p,
                                       c_int32, c_int32]
    lib.area_shrink.argtypes = [c_void_p, c_int32, c_int32, c_void_p, c_int32, c_int32]
    return lib


def rrc_window(rng: np.random.Generator, height: int, width: int) -> tuple[int, int, int, int]:
    """A RandomResizedCrop window (torchvision's draw, its fallback the whole image): top, bottom, left, right."""
    for _ in range(10):
        area = height * width * rng.uniform(*RRC_SCALE)
        ratio = np.exp(rng.uniform(*np.log(RRC_RATIO)))
        w, h = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
        if 0 < w <= width and 0 < h <= height:
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            return top, top + h, left, left + w
    return 0, height, 0, width


def centre_window(height: int, width: int) -> tuple[int, int, int, int]:
    side = int(min(height, width) * CENTRE_RATIO)
    top, left = (height - side) // 2, (width - side) // 2
    return top, top + side, left, left + side


def cases(lib: CDLL, photos: list[np.ndarray], records: list[np.ndarray], res: int, shrink_to: int,
          seed: int) -> dict[str, tuple[list[np.ndarray], Call]]:
    """Per case: its output arrays, and a call that fills them all once."""
    rng = np.random.default_rng(seed)
    rrc = [rrc_window(rng, *photo.shape[:2]) for photo in photos]
    centre = [centre_window(*photo.shape[:2]) for photo in photos]
    shrunk_sides = [tuple(max(1, side * shrink_to // max(photo.shape[:2])) for side in photo.shape[:2])
                    for photo in photos]
    made: dict[str, tuple[list[np.ndarray], Call]] = {}

    def windows(name: str, boxes: list, resize: Callable) -> None:
        outs = [np.zeros((res, res, 3), np.uint8) for _ in boxes]
        made[name] = (outs, lambda: [resize(k, box, out) for k, (box, out) in enumerate(zip(boxes, outs))])

    windows("rgb rrc", rrc, lambda k, b, out: lib.crop_resize(
        photos[k].ctypes.data, *photos[k].shape[:2], *b, out.ctypes.data, res, res, FAST_RESIZE))
    windows("rgb centre", centre, lambda k, b, out: lib.crop_resize(
        photos[k].ctypes.data, *photos[k].shape[:2], *b, out.ctypes.data, res, res, FAST_RESIZE))
    windows("yuv420 rrc", rrc, lambda k, b, out: lib.yuv420_crop_resize(
        records[k].ctypes.data, *photos[k].shape[:2], *b, out.ctypes.data, res, res))
    outs = [np.zeros((h, w, 3), np.uint8) for h, w in shrunk_sides]
    made["area_shrink"] = (outs, lambda: [lib.area_shrink(photo.ctypes.data, *photo.shape[:2], out.ctypes.data,
                                                          *out.shape[:2]) for photo, out in zip(photos, outs)])
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", required=True, help="the library built before the change")
    parser.add_argument("--new", default=_jpeg_region.__file__, help="the library after it (default: the package's)")
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--res", type=int, default=160)
    parser.add_argument("--shrink-to", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stats = make_real_like_folder(Path(tmp), args.images)
        photos = [np.asarray(Image.open(path).convert("RGB")).copy() for path in sorted(Path(tmp).rglob("*.JPEG"))]
    records = [rgb_to_yuv420(photo) for photo in photos]
    print(f"{len(photos)} real-like photos ({stats.chroma}), windows to {args.res} px, {args.rounds} rounds", flush=True)
    builds = {"old": cases(library(args.old), photos, records, args.res, args.shrink_to, 0),
              "new": cases(library(args.new), photos, records, args.res, args.shrink_to, 0)}
    for name in builds["old"]:
        timings: dict[str, list[float]] = {"old": [], "new": []}
        for build in builds.values():
            build[name][1]()  # warm-up: caches, page faults
        for round_ix in range(args.rounds):
            for which in (("old", "new") if round_ix % 2 == 0 else ("new", "old")):
                started = time.perf_counter()
                builds[which][name][1]()
                timings[which].append(time.perf_counter() - started)
        same = all(np.array_equal(a, b) for a, b in zip(builds["old"][name][0], builds["new"][name][0]))
        old, new = (statistics.median(timings[which]) * 1e3 for which in ("old", "new"))
        fastest = {which: min(timings[which]) for which in timings}  # the least disturbed pass, on a shared box
        print(f"{name:12s} bytes identical: {same}; median old {old:.2f} ms, new {new:.2f} ms per pass: new/old "
              f"time {new / old:.3f} (fastest passes: {fastest['new'] / fastest['old']:.3f})", flush=True)
        if not same:
            raise SystemExit(f"{name}: the two builds' outputs differ")


if __name__ == "__main__":
    main()
