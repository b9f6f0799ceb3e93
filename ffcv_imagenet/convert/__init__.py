"""The conversion side: ImageFolder trees -> FFCV ``.beton`` files (``write_datasets.py``, ``write_cli``).

It shares only the ``.beton`` format (``beton_format``), file I/O (``fileio``), the JPEG region
library (``jpeg_region``) and the command layer (``cli``) with training, and imports neither torch
nor a training module: a test checks it. ``beton_writer`` and ``inspection`` import FFCV (which
loads torch); the command imports them only when it has work for them.
"""
