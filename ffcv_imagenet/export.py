"""``python -m ffcv_imagenet.export``, the name the README gives the command (``export_cli``)."""
import sys

from .export_cli import main

if __name__ == "__main__":
    sys.exit(main())
