"""``python -m ffcv_imagenet.slurm``, the name the README and the batch script give the command (``slurm_cli``)."""
import sys

from .slurm_cli import main

if __name__ == "__main__":
    sys.exit(main())
