"""Command line of ``write_datasets.py``: convert, imagenet, inspect, demo."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from .conversion import ConversionError, ConversionSettings, ConversionSummary, convert_imagefolder
from .demo_data import make_demo_imagefolder

DEFAULTS = ConversionSettings()
DEMO_MAX_RESOLUTION = 256  # demo images are at most 360 px; small records keep the demo quick


def _conversion_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("conversion settings (defaults: ffcv-imagenet's ResNet-50 data)")
    group.add_argument("--write-mode", default=DEFAULTS.write_mode, choices=("raw", "jpg", "proportion", "smart"),
                       help="how records are stored (proportion: a compress-probability share as JPEG)")
    group.add_argument("--max-resolution", type=int, default=DEFAULTS.max_resolution,
                       help="longest stored side in pixels")
    group.add_argument("--compress-probability", type=float, default=DEFAULTS.compress_probability,
                       help="share of images stored as JPEG in proportion mode")
    group.add_argument("--jpeg-quality", type=int, default=DEFAULTS.jpeg_quality)
    group.add_argument("--workers", type=int, default=DEFAULTS.num_workers, help="processes; 0 = all cores")
    group.add_argument("--chunk-size", type=int, default=DEFAULTS.chunk_size, help="images per work unit")
    group.add_argument("--max-per-class", type=int, default=DEFAULTS.max_per_class,
                       help="keep at most N images per class (0 = all)")
    group.add_argument("--subset", type=int, default=DEFAULTS.subset,
                       help="a fixed-seed random subset of N images (0 = all)")
    group.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seed of --subset")


def _settings(args: argparse.Namespace, **changes: object) -> ConversionSettings:
    values = dict(write_mode=args.write_mode, max_resolution=args.max_resolution,
                  compress_probability=args.compress_probability, jpeg_quality=args.jpeg_quality,
                  num_workers=args.workers, chunk_size=args.chunk_size, max_per_class=args.max_per_class,
                  subset=args.subset, seed=args.seed)
    values.update(changes)
    return ConversionSettings(**values)  # type: ignore[arg-type]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="write_datasets.py", description="ImageFolder trees -> FFCV .beton files")
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser("convert", help="one ImageFolder root -> one .beton")
    convert.add_argument("root", type=Path, help="folder of class folders: ROOT/<class>/<image>")
    convert.add_argument("out", type=Path, help="output .beton (a .json and a .skipped report go beside it)")
    convert.add_argument("--class-map", type=Path, help="the train .beton whose class indices this set must use")
    _conversion_options(convert)

    imagenet = commands.add_parser("imagenet", help="IMAGENET_DIR/{train,val} -> OUT_DIR/{train,val}.beton")
    imagenet.add_argument("imagenet_dir", type=Path)
    imagenet.add_argument("out_dir", type=Path)
    _conversion_options(imagenet)

    inspect = commands.add_parser("inspect", help="counts, label histogram, sizes and a few decodes of a .beton")
    inspect.add_argument("beton", type=Path)

    demo = commands.add_parser("demo", help="make the built-in demo ImageFolder and convert it")
    demo.add_argument("out_dir", type=Path)
    demo.add_argument("--classes", type=int, default=10)
    demo.add_argument("--train-per-class", type=int, default=80)
    demo.add_argument("--val-per-class", type=int, default=20)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--workers", type=int, default=0)
    return parser


def _convert_pair(train_root: Path, val_root: Path, out_dir: Path, settings: ConversionSettings) -> None:
    for split, root in (("train", train_root), ("val", val_root)):
        if not root.is_dir():
            raise ConversionError(f"{root} does not exist: expected the ImageNet layout {root.parent}/{{train,val}}")
    train = out_dir / "train.beton"
    _report(convert_imagefolder(train_root, train, settings))
    _report(convert_imagefolder(val_root, out_dir / "val.beton", settings, class_map=train))


def _report(summary: ConversionSummary) -> None:
    print(summary, flush=True)


def run(args: argparse.Namespace) -> None:
    if args.command == "convert":
        _report(convert_imagefolder(args.root, args.out, _settings(args), class_map=args.class_map))
    elif args.command == "imagenet":
        _convert_pair(args.imagenet_dir / "train", args.imagenet_dir / "val", args.out_dir, _settings(args))
    elif args.command == "inspect":
        from .inspection import report
        print(report(args.beton))
    elif args.command == "demo":
        images = make_demo_imagefolder(args.out_dir / "images", num_classes=args.classes,
                                       train_per_class=args.train_per_class,
                                       val_per_class=args.val_per_class, seed=args.seed)
        settings = ConversionSettings(max_resolution=DEMO_MAX_RESOLUTION, num_workers=args.workers)
        _convert_pair(images / "train", images / "val", args.out_dir, settings)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (ConversionError, OSError, ValueError) as err:
        print(f"write_datasets.py: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("write_datasets.py: interrupted; no partial .beton was left behind", file=sys.stderr)
        return 130
    return 0
