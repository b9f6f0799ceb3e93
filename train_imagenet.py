#!/usr/bin/env python
"""Train a ResNet on FFCV .beton files. See `python train_imagenet.py -h`."""
import sys

from ffcv_imagenet.train_cli import main

if __name__ == "__main__":
    sys.exit(main())
