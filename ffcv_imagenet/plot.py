"""``python -m ffcv_imagenet.plot``, the name the README gives the command (``plot_cli``)."""
import sys

from .plot_cli import main

if __name__ == "__main__":
    sys.exit(main())
