#!/usr/bin/env python
"""Convert ImageFolder trees to FFCV .beton files. See `python write_datasets.py -h`."""
import sys

from ffcv_imagenet.convert.write_cli import main

if __name__ == "__main__":
    sys.exit(main())
