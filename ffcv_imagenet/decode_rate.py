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
from typing import Iterable

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


def epoch_rate(loader: Iterable) -> float:
    """Images per second of one pass over ``loader`` ((images, labels) batches)."""
    started = time.perf_counter()
    count = sum(len(labels) for _, labels in loader)
    return count / (time.perf_counter() - started)


def median_epoch_rates(loaders: dict[str, Iterable], rounds: int) -> dict[str, float]:
    """Each loader's median epoch rate over ``rounds``, side by side: a first, untimed epoch each (numba
    compile, page cache), then they take turns, the order rotating every round."""
    for loader in loaders.values():
        epoch_rate(loader)
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    names = list(loaders)
    for round_ix in range(rounds):
        shift = round_ix % len(names)
        for name in names[shift:] + names[:shift]:
            rates[name].append(epoch_rate(loaders[name]))
    return {name: statistics.median(values) for name, values in rates.items()}


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
    rates = median_epoch_rates(loaders, rounds)
    return DecodeRates(len(indices), res, config.data.decoder, rates["ours"], rates.get("stock"))
