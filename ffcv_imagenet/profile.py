"""``python -m ffcv_imagenet.profile``, the name the README gives the command (``profile_cli``)."""
import sys

from .profile_cli import main

if __name__ == "__main__":
    sys.exit(main())
