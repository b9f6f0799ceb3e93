"""The one-time conversion against the per-epoch decode, at ImageNet scale: CPU hours, ours vs ffcv-imagenet's.

Measured here on real-like sources (or the earlier synthetic ones), rn50 data settings (proportion):
- conversion CPU milliseconds per image, every process of the run (bench_conversion's timing): the
  ffcv-imagenet way and ours with its defaults;
- training decode per core (bench_decode's timing, one worker thread): their records with FFCV's stock
  decoder, our records with our fast decoder, at every (crop, resolution) of the recipe's schedule
  (rn50_88: RandomResizedCrop 160 for 71 epochs, 192 for 8, FixRes 224 for 9; FFCV has no FixRes
  decoder, so theirs is FFCV's decode path there, as in bench_decode).
Projected: CPU hours = images x conversion CPU seconds per image, plus, for each epoch of the schedule,
images / the per-core rate at its crop and resolution. Training images only (ImageNet-1k: 1,281,167);
validation is small beside them.

    python benchmarks/bench_projection.py [--images 1000] [--rounds 3] [--config rcfg/rn50_88.yaml]
                                          [--sources real-like|synthetic] [--folder DIR]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_conversion import time_mode  # noqa: E402
from bench_decode import OURS, THEIRS, time_case  # noqa: E402
from real_like_sources import add_sources_option, prepare_sources  # noqa: E402

from ffcv_imagenet.recipes import load_config  # noqa: E402
from ffcv_imagenet.convert.conversion import ConversionSettings  # noqa: E402
from ffcv_imagenet.schedule import full_schedule  # noqa: E402

IMAGENET_TRAIN_IMAGES = 1_281_167
SECONDS_PER_HOUR = 3600
WAY_OF = {THEIRS: "ffcv-imagenet way", OURS: "ours"}  # bench_conversion's names of the two conversions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--config", type=Path, default=Path(__file__).parents[1] / "rcfg" / "rn50_88.yaml")
    add_sources_option(parser)
    args = parser.parse_args()
    config = load_config(args.config)
    epochs_at = Counter((plan.crop_mode, plan.res) for plan in full_schedule(config.resolution, config.training.epochs))
    with tempfile.TemporaryDirectory() as tmp:
        root = prepare_sources(args, Path(tmp))
        _, cpu_ms = time_mode(root, Path(tmp), ConversionSettings(), repeats=1, ways=WAY_OF.values())
        files = {name: Path(tmp) / f"{WAY_OF[name]}.beton" for name in (THEIRS, OURS)}
        rates = {case: time_case(files, *case, args.rounds) for case in epochs_at}
    print(f"{args.config.name}: " + ", ".join(f"{mode} {res} x {count} epochs" for (mode, res), count in epochs_at.items())
          + f"; projected for {IMAGENET_TRAIN_IMAGES:,} training images, CPU hours (one core = one hour per hour):")
    totals = {}
    for name in (THEIRS, OURS):
        conversion = IMAGENET_TRAIN_IMAGES * statistics.median(cpu_ms[WAY_OF[name]]) / 1e3 / SECONDS_PER_HOUR
        decode = sum(count * IMAGENET_TRAIN_IMAGES / rates[case][name] / SECONDS_PER_HOUR
                     for case, count in epochs_at.items())
        totals[name] = conversion + decode
        per_case = ", ".join(f"{mode} {res} {rates[(mode, res)][name]:.0f} img/s" for mode, res in epochs_at)
        print(f"  {name:13s} conversion {conversion:6.1f} h + decode {decode:7.1f} h = {totals[name]:7.1f} h  "
              f"({statistics.median(cpu_ms[WAY_OF[name]]):.2f} CPU ms/img converting; per core {per_case})")
    print(f"  theirs / ours: {totals[THEIRS] / totals[OURS]:.2f}x the CPU time")


if __name__ == "__main__":
    main()
