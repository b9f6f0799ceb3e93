"""Command line of ``write_datasets.py``: convert, imagenet, inspect, adopt, demo."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from ..cli import OneLineParser, fail, interrupt_outside_native_callbacks, interrupted
from .conversion import BY_ROLE, RAW_FORMATS, RECORD_ORDERS, WRITE_MODES, ConversionError, ConversionSettings
from ..beton_format import Fields
from ..remote import dataset_argument
from .jpeg_passthrough import ALWAYS, NEVER, PASSTHROUGH_MODES
from .train_val_pair import (DEMO_CLASSES, DEMO_TRAIN_PER_CLASS, DEMO_VAL_PER_CLASS, convert_demo, convert_one,
                             convert_pair)

PROG = "write_datasets.py"
DEFAULTS = ConversionSettings()


def _conversion_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("conversion settings (defaults: ffcv-imagenet's ResNet-50 data)")
    group.add_argument("--write-mode", default=DEFAULTS.write_mode, choices=WRITE_MODES,
                       help="how records are stored: raw pixels, JPEG, a --compress-probability share as "
                            "JPEG (proportion), JPEG above --smart-threshold bytes (smart), or every record raw "
                            "as YUV 4:2:0 (yuv420: 1.5 bytes per pixel, read by this project only); "
                            "default %(default)s")
    group.add_argument("--raw-format", default=DEFAULTS.raw_format, choices=RAW_FORMATS,
                       help="pixels of the raw records of raw, proportion and smart: rgb (FFCV's, any FFCV reader "
                            "opens the file) or yuv420 (half the bytes; this project's readers only); "
                            "default %(default)s")
    group.add_argument("--max-resolution", type=int, default=DEFAULTS.max_resolution, metavar="N",
                       help="longest stored side in pixels; default %(default)s")
    group.add_argument("--compress-probability", type=float, default=DEFAULTS.compress_probability, metavar="P",
                       help="share of images stored as JPEG in proportion mode; default %(default)s")
    group.add_argument("--jpeg-quality", type=int, default=DEFAULTS.jpeg_quality, metavar="Q",
                       help="quality of re-encoded JPEG records; default %(default)s")
    group.add_argument("--smart-threshold", type=int, default=DEFAULTS.smart_threshold, metavar="BYTES",
                       help="smart mode: store as JPEG when the raw record exceeds this many bytes")
    group.add_argument("--workers", type=int, default=DEFAULTS.num_workers, metavar="N",
                       help="processes that decode and encode; default 0 = all cores")
    group.add_argument("--chunk-size", type=int, default=DEFAULTS.chunk_size, metavar="N",
                       help="images per work unit; default %(default)s")
    group.add_argument("--max-per-class", type=int, default=DEFAULTS.max_per_class, metavar="N",
                       help="keep the first N readable images (name order) of each class; default 0 = all")
    group.add_argument("--subset", type=int, default=DEFAULTS.subset, metavar="N",
                       help="a fixed-seed random subset of N images; default 0 = all")
    group.add_argument("--seed", type=int, default=DEFAULTS.seed, metavar="S",
                       help="seed of --subset, of the shuffled record order and of proportion mode's JPEG-or-raw "
                            "draw; default %(default)s")
    group.add_argument("--record-order", choices=RECORD_ORDERS, default=BY_ROLE,
                       help="records in a seeded random order (shuffled: every page holds many classes) or in "
                            "class-folder order; default: shuffled for a train set, folder for val (imagenet's "
                            "val, or convert with --class-map)")
    group.add_argument("--jpeg-passthrough", nargs="?", const=ALWAYS, default=DEFAULTS.jpeg_passthrough,
                       choices=PASSTHROUGH_MODES,
                       help="store a source JPEG that the write mode stores as JPEG with its own bytes (no decode, "
                            "no re-encode) when it is baseline YCbCr and needs no resize: auto, only when it also "
                            "has 4:2:0 chroma and quantisation no finer than --jpeg-quality's (so it decodes no "
                            "slower than its re-encode); always (the flag alone), whenever it needs no work; never, "
                            "re-encode every JPEG record as ffcv-imagenet does; default %(default)s")
    group.add_argument("--no-jpeg-passthrough", dest="jpeg_passthrough", action="store_const", const=NEVER,
                       help="same as --jpeg-passthrough never")


def _field_options(parser: argparse.ArgumentParser) -> None:
    defaults = Fields()
    parser.add_argument("--image-field", default=defaults.image, metavar="NAME",
                        help="name of the image field (an RGBImageField); default %(default)s")
    parser.add_argument("--label-field", default=defaults.label, metavar="NAME",
                        help="name of the label field (an IntField); default %(default)s")


def _settings(args: argparse.Namespace) -> ConversionSettings:
    return ConversionSettings(write_mode=args.write_mode, max_resolution=args.max_resolution,
                              compress_probability=args.compress_probability, jpeg_quality=args.jpeg_quality,
                              smart_threshold=args.smart_threshold, num_workers=args.workers,
                              chunk_size=args.chunk_size, max_per_class=args.max_per_class, subset=args.subset,
                              seed=args.seed, record_order=args.record_order, jpeg_passthrough=args.jpeg_passthrough,
                              raw_format=args.raw_format)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="ImageFolder trees -> FFCV .beton files, and checks of them")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{convert,imagenet,inspect,adopt,demo}")

    convert = commands.add_parser("convert", root_prog=PROG, help="one ImageFolder root -> one .beton")
    convert.add_argument("root", type=Path, help="folder of class folders: ROOT/<class>/<image>")
    convert.add_argument("out", type=dataset_argument, help="output .beton (OUT.json and OUT.skipped are written "
                         "beside it), or an s3:// gs:// az:// URL: written locally, then uploaded")
    convert.add_argument("--class-map", type=Path, metavar="TRAIN.beton",
                         help="the train .beton (or its .json) whose class indices this set must use")
    _conversion_options(convert)

    imagenet = commands.add_parser("imagenet", root_prog=PROG, help="IMAGENET_DIR/{train,val} -> OUT_DIR/{train,val}.beton")
    imagenet.add_argument("imagenet_dir", type=Path, help="holds train/<wnid>/*.JPEG and val/<wnid>/*.JPEG")
    imagenet.add_argument("out_dir", type=Path)
    _conversion_options(imagenet)

    inspect = commands.add_parser("inspect", root_prog=PROG, help="record count, label histogram, sizes and a few decodes")
    inspect.add_argument("beton", type=dataset_argument, help="a .beton, or an s3:// gs:// az:// URL of one")
    _field_options(inspect)
    inspect.add_argument("--decode-rate", action="store_true",
                         help="also measure the training decode rate per core on a sample of records: the "
                              "recipe's decoder at its main resolution (resolution.min_res) against FFCV's stock one")
    inspect.add_argument("--config", type=Path, metavar="RECIPE",
                         help="--decode-rate: the recipe whose decoder and resolution are measured; default: "
                              "the built-in defaults")
    inspect.add_argument("--decode-sample", type=int, default=1000, metavar="N",
                         help="--decode-rate: records in the sample; default %(default)s")

    adopt = commands.add_parser("adopt", root_prog=PROG,
                                help="write our sidecar for a .beton from FFCV's own writer (ffcv-imagenet), "
                                     "never changing the file")
    adopt.add_argument("beton", type=Path, help="the file, whatever its extension (FILE.json is written beside it)")
    adopt.add_argument("--classes-from", type=Path, metavar="IMAGEFOLDER_ROOT",
                       help="the ImageFolder root it was written from: class names from its sorted class "
                            "folders, checked against the labels; default: classes named by number")
    _field_options(adopt)

    demo = commands.add_parser("demo", root_prog=PROG, help="make the built-in demo ImageFolder and convert it")
    demo.add_argument("out_dir", type=Path, help="gets images/{train,val}, train.beton and val.beton")
    demo.add_argument("--classes", type=int, default=DEMO_CLASSES, help="default %(default)s")
    demo.add_argument("--train-per-class", type=int, default=DEMO_TRAIN_PER_CLASS, help="default %(default)s")
    demo.add_argument("--val-per-class", type=int, default=DEMO_VAL_PER_CLASS, help="default %(default)s")
    demo.add_argument("--seed", type=int, default=0, help="same seed, same images; default %(default)s")
    demo.add_argument("--workers", type=int, default=0, help="default 0 = all cores")
    return parser


def run(args: argparse.Namespace) -> None:
    if args.command == "convert":
        convert_one(args.root, args.out, _settings(args), args.class_map)
    elif args.command == "imagenet":
        convert_pair(args.imagenet_dir / "train", args.imagenet_dir / "val", args.out_dir, _settings(args))
    elif args.command == "inspect":
        from ..remote_cache import CacheSettings, local_view
        if args.decode_sample < 1:
            raise ValueError(f"--decode-sample must be positive: {args.decode_sample}")
        remote = CacheSettings(gib=1.0)  # a few pages read: a small bound on the node cache
        beton = local_view(args.beton, remote)  # a URL: its stand-in
        from .inspection import report as inspection_report  # imports FFCV's loader: only when needed
        fields = Fields(args.image_field, args.label_field)
        print(inspection_report(beton, fields, decode_rate=args.decode_rate, recipe=args.config,
                                decode_sample=args.decode_sample, remote=remote), flush=True)
    elif args.command == "adopt":
        from .adoption import adopt, adoption_line  # imports FFCV: only when needed
        sidecar = adopt(args.beton, args.classes_from, Fields(args.image_field, args.label_field))
        print(adoption_line(args.beton, args.classes_from, sidecar), flush=True)
    elif args.command == "demo":
        convert_demo(args.out_dir, args.classes, args.train_per_class, args.val_per_class, args.seed, args.workers)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``write_datasets.py``: 0 on success, 2 on a bad input (one line on stderr)."""
    args = build_parser().parse_args(argv)
    interrupt_outside_native_callbacks()
    try:
        run(args)
    except (ConversionError, OSError, ValueError) as err:
        return fail(PROG, str(err))
    except KeyboardInterrupt:
        return interrupted(PROG, "interrupted; no partial .beton was left behind")
    return 0
