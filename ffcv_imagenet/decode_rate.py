"""``inspect --decode-rate``: how fast a .beton's records decode for training, per core.

The recipe's training decoder (data.decoder; augment's RandomResizedCrop ranges) at its main resolution
(resolution.min_res, where most epochs run) against FFCV's stock RandomResizedCropRGBImageDecoder plus
RandomHorizontalFlip (ffcv-imagenet's pipeline), on the same sample of records: each reader gets an
FFCV Loader with one worker thread; its first epoch (numba compile, page cache) is not timed; then they
take turns and the median epoch rate is reported.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .beton_format import DEFAULT_FIELDS, Fields, loader_pipelines
from .remote_cache import CacheSettings

BATCH_SIZE = 64
SAMPLE_SEED = 0


@dataclass(frozen=True)
class DecodeRates:
    records: int
    res: int
    decoder: str  # the recipe's data.decoder
    ours: float  # img/s, one worker
    stock: float | None  # None: FFCV's stock decoder cannot read the file (yuv420 records)

    def __str__(self) -> str:
        stock = ("FFCV's stock decoder cannot read its yuv420 records" if self.stock is None
                 else f"FFCV's stock decoder {self.stock:.0f} img/s ({self.ours / self.stock:.2f}x)")
        return (f"training decode per core, {self.records} records, RandomResizedCrop {self.res} px: recipe's "
                f"decoder ({self.decoder}) {self.ours:.0f} img/s, {stock}")


def sample_indices(count: int, sample: int) -> np.ndarray:
    """``sample`` record indices drawn without replacement (all when the file has no more)."""
    if count <= sample:
        return np.arange(count)
    return np.sort(np.random.default_rng(SAMPLE_SEED).choice(count, sample, replace=False))


def _epoch_rate(loader: object) -> float:
    started = time.perf_counter()
    count = sum(len(labels) for _, labels in loader)
    return count / (time.perf_counter() - started)


def measure_decode_rates(path: str | Path, recipe: str | Path | None = None, sample: int = 1000,
                         rounds: int = 3, fields: Fields = DEFAULT_FIELDS,
                         remote: CacheSettings = CacheSettings()) -> DecodeRates:
    """The recipe's decoder (defaults when ``recipe`` is None) against FFCV's stock one, per core; a
    remote dataset's stand-in reads its pages through the node cache ``remote`` bounds."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
    from ffcv.loader import OrderOption
    from ffcv.reader import Reader
    from ffcv.transforms import RandomHorizontalFlip

    from .recipes import load_config
    from .decoders import RandomResizedCropDecoder
    from .loaders import DECODE_METHODS, CropSettings
    from .remote_pages import open_loader
    from .yuv420_records import YUV420ImageField

    config = load_config(recipe)
    crop = CropSettings.from_recipe(config.augment)
    res = config.resolution.min_res
    reader = Reader(str(path))
    indices = sample_indices(int(reader.num_samples), sample)
    images = {"ours": [RandomResizedCropDecoder((res, res), crop.flip, DECODE_METHODS[config.data.decoder],
                                                crop.rrc_scale, crop.rrc_ratio)],
              "stock": [RandomResizedCropRGBImageDecoder((res, res), crop.rrc_scale, crop.rrc_ratio),
                        RandomHorizontalFlip()]}
    if isinstance(reader.handlers[fields.image], YUV420ImageField):
        del images["stock"]
    loaders = {name: open_loader(path, remote, batch_size=BATCH_SIZE, num_workers=1, order=OrderOption.RANDOM,
                                 seed=SAMPLE_SEED, indices=indices, drop_last=False,
                                 pipelines=loader_pipelines(path, fields, pipeline, [IntDecoder()]))[0]
               for name, pipeline in images.items()}
    for loader in loaders.values():
        _epoch_rate(loader)  # compile and page cache: not timed
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    for round_ix in range(rounds):
        for name in (list(loaders) if round_ix % 2 == 0 else list(loaders)[::-1]):
            rates[name].append(_epoch_rate(loaders[name]))
    return DecodeRates(len(indices), res, config.data.decoder, statistics.median(rates["ours"]),
                       statistics.median(rates["stock"]) if "stock" in rates else None)
