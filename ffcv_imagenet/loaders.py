"""FFCV loaders for training and evaluation, and the on-device normalisation.

Images leave the loader as uint8 NCHW tensors (channels_last if asked) already
on the training device: the host-to-device copy moves a quarter of the bytes of
float32, and normalisation runs on the device (``normalize``).

The training loader is built once per crop mode and kept: a new epoch only
sets the decoder's output size, its epoch seed and the loader's epoch counter,
so progressive resizing recompiles nothing and allocates only the epoch's
batch buffers, which FFCV frees when the epoch ends.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from ffcv.fields.basics import IntDecoder
from ffcv.fields.rgb_image import CenterCropRGBImageDecoder
from ffcv.loader import Loader, OrderOption
from ffcv.transforms import ToDevice, ToTensor, ToTorchImage

from .decoders import (FULL, REGION, RRC_RATIO, RRC_SCALE, CenterCropDecoder, FixResCropDecoder,
                       RandomResizedCropDecoder, SeededCropDecoder)
from .config import AugmentConfig
from .schedule import FIXRES, RRC, EpochPlan
from .traversal import PageShuffleOrder, SkippableOrder, samples_by_page

IMAGENET_MEAN_255 = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD_255 = (0.229 * 255, 0.224 * 255, 0.225 * 255)
DEFAULT_CACHE_MIB = 4096  # the recipes' data.cache_mib
MIB = 2 ** 20
FAST, STOCK = "fast", "stock"  # the recipe's data.decoder
DECODE_METHODS = {FAST: REGION, STOCK: FULL}

Batch = tuple[torch.Tensor, torch.Tensor]  # uint8 images (N, 3, H, W) on the device, int64 labels (N,)


def _decode_method(decoder: str) -> str:
    if decoder not in DECODE_METHODS:
        raise ValueError(f"decoder must be {FAST} or {STOCK}: {decoder!r}")
    return DECODE_METHODS[decoder]


def workers_per_rank(requested: int) -> int:
    """``requested``, or with 0 this rank's share of the node's cores (torchrun sets LOCAL_WORLD_SIZE)."""
    if requested > 0:
        return requested
    ranks_on_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, (os.cpu_count() or 1) // ranks_on_node)


def normalize(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 images on the device -> ``(x - mean) / std`` in ``dtype``, memory format kept."""
    mean = torch.tensor(IMAGENET_MEAN_255, device=images.device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD_255, device=images.device, dtype=dtype).view(1, 3, 1, 1)
    return (images.to(dtype) - mean) / std


def _image_tail(device: torch.device, channels_last: bool) -> list:
    return [ToTensor(), ToDevice(device, non_blocking=True),
            ToTorchImage(channels_last=channels_last, convert_back_int16=False)]


def _label_pipeline(device: torch.device) -> list:
    return [IntDecoder(), ToTensor(), ToDevice(device, non_blocking=True)]


@dataclass
class LoaderSettings:
    """What both loaders need beyond the dataset path; filled from the recipe by the trainer."""

    batch_size: int
    num_workers: int
    device: torch.device
    channels_last: bool = True


@dataclass(frozen=True)
class CropSettings:
    """The training crops' randomness (the recipe's augment.flip, rrc_scale, rrc_ratio): the
    decoders take them as compile-time constants, so they are fixed for the loader's life."""

    flip: bool = True
    rrc_scale: tuple[float, float] = RRC_SCALE
    rrc_ratio: tuple[float, float] = RRC_RATIO

    @classmethod
    def from_recipe(cls, augment: AugmentConfig) -> CropSettings:
        return cls(augment.flip, tuple(augment.rrc_scale), tuple(augment.rrc_ratio))


class TrainLoader:
    """The training set, one epoch at a time, at the epoch's resolution and crop mode.

    ``order`` is 'random' (the dataset sits in the page cache: FFCV's random
    permutation, split across ranks like DistributedSampler) or 'quasi_random'
    (it does not: traversal.PageShuffleOrder, whole pages read in a row through
    a process cache of about ``cache_mib`` per rank). Like FFCV's own loader,
    ``distributed`` takes the rank and rank count from torch.distributed.
    ``decoder`` is 'fast' (region decode at an IDCT scale) or 'stock' (FFCV's full-size decode);
    ``crop`` holds the RandomResizedCrop ranges and the flip, the same for both.
    A corrupt JPEG record raises ``CorruptRecordError`` naming it, before its batch is yielded.
    """

    def __init__(self, path: str | Path, settings: LoaderSettings, *, order: str, in_memory: bool,
                 distributed: bool, seed: int, fixres_crop_ratio: float, cache_mib: int = DEFAULT_CACHE_MIB,
                 decoder: str = FAST, crop: CropSettings = CropSettings()):
        self.path = str(path)
        self.crop = crop
        self.method = _decode_method(decoder)
        self.settings = settings
        self.order = order
        self.in_memory = in_memory
        self.distributed = distributed
        self.seed = seed
        self.fixres_crop_ratio = fixres_crop_ratio
        self.cache_mib = cache_mib
        self.process_cache_bytes = 0  # of the last epoch, with the process cache (in_memory: false)
        self._built: dict[str, tuple[Loader, SeededCropDecoder]] = {}  # per crop mode
        self._loader: Loader | None = None
        self._decoder: SeededCropDecoder | None = None

    def _decoder_for(self, plan: EpochPlan) -> SeededCropDecoder:
        size = (plan.res, plan.res)
        if plan.crop_mode == RRC:
            return RandomResizedCropDecoder(size, flip=self.crop.flip, method=self.method,
                                            scale=self.crop.rrc_scale, ratio=self.crop.rrc_ratio)
        if plan.crop_mode == FIXRES:
            return FixResCropDecoder(size, ratio=self.fixres_crop_ratio, flip=self.crop.flip, method=self.method)
        raise ValueError(f"unknown crop mode {plan.crop_mode!r}")

    def _build(self, plan: EpochPlan) -> tuple[Loader, SeededCropDecoder]:
        """A loader for a crop mode, compiled on its first epoch and kept: a schedule has at most two."""
        decoder = self._decoder_for(plan)
        settings = self.settings
        page_shuffle = self.order == "quasi_random"
        loader = Loader(self.path, batch_size=settings.batch_size, num_workers=settings.num_workers,
                        order=OrderOption.SEQUENTIAL if page_shuffle else OrderOption.RANDOM,
                        os_cache=self.in_memory, distributed=self.distributed and not page_shuffle,
                        seed=self.seed, drop_last=True,
                        pipelines={"image": [decoder, *_image_tail(settings.device, settings.channels_last)],
                                   "label": _label_pipeline(settings.device)})
        inner = self._page_shuffle(loader) if page_shuffle else loader.traversal_order
        loader.traversal_order = SkippableOrder(inner)
        loader.first_traversal_order = loader.next_traversal_order()  # FFCV sizes len() from it
        return loader, decoder

    def _page_shuffle(self, loader: Loader) -> PageShuffleOrder:
        rank, world_size = (dist.get_rank(), dist.get_world_size()) if self.distributed else (0, 1)
        # At a window boundary the cache holds the end of one window and the start of the next.
        window_pages = max(1, self.cache_mib * MIB // loader.reader.page_size // 2)
        return PageShuffleOrder(samples_by_page(loader.memory_manager.page_to_samples, loader.indices),
                                seed=self.seed, rank=rank, world_size=world_size, window_pages=window_pages)

    def __len__(self) -> int:
        """Batches per epoch on this rank (the last partial batch is dropped)."""
        if self._loader is None:
            raise RuntimeError("call epoch() first: the loader is built for an epoch's plan")
        return len(self._loader)

    def prepare(self, plan: EpochPlan) -> None:
        """Set up ``plan``'s epoch without starting it (so len() is known)."""
        if plan.crop_mode not in self._built:
            self._built[plan.crop_mode] = self._build(plan)
        self._loader, self._decoder = self._built[plan.crop_mode]
        self._decoder.output_size = (plan.res, plan.res)
        self._decoder.set_epoch(self.seed, plan.epoch)
        # FFCV's permutation for an epoch is seeded by (seed + epoch counter): set the
        # counter so a resumed run reads epoch e in the same order as an uninterrupted one.
        self._loader.next_epoch = plan.epoch

    def epoch(self, plan: EpochPlan, skip_batches: int = 0) -> Iterator[Batch]:
        """The batches of ``plan``'s epoch after the first ``skip_batches``, which are not even read."""
        self.prepare(plan)
        assert self._loader is not None and self._decoder is not None
        self._loader.traversal_order.skip = skip_batches * self.settings.batch_size
        batches = iter(self._loader)
        cache = getattr(batches.memory_context, "memory", None)  # FFCV's process cache, if in use
        self.process_cache_bytes = cache.nbytes if cache is not None else 0
        try:
            for images, labels in batches:
                self._decoder.check_decoded(self.path)
                yield images, labels.view(-1)
        finally:
            # An epoch left early (a stop signal, the profiler's timed windows) must stop FFCV's
            # decode thread: its thread object is never collected, so it would keep its batch buffers.
            batches.close()


def val_indices(num_samples: int, rank: int, world_size: int) -> np.ndarray:
    """Rank r evaluates samples r, r + W, r + 2W, ...: every sample exactly once across ranks.

    (FFCV's ``distributed=True`` pads the set with repeats so ranks get equal
    counts, which would count some images twice.)
    """
    return np.arange(rank, num_samples, world_size, dtype=np.uint64)


class ValLoader:
    """An FFCV val loader whose batches are checked for corrupt records before they are yielded."""

    def __init__(self, loader: Loader, decoder: CenterCropDecoder | None, path: str):
        self.loader, self.decoder, self.path = loader, decoder, path

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        batches = iter(self.loader)
        try:
            for images, labels in batches:
                if self.decoder is not None:
                    self.decoder.check_decoded(self.path)
                yield images, labels
        finally:
            batches.close()  # stop FFCV's decode thread when the pass ends early (an error)


def build_val_loader(path: str | Path, settings: LoaderSettings, *, res: int, crop_ratio: float,
                     num_samples: int, rank: int, world_size: int, decoder: str = FAST) -> ValLoader:
    """Resize + center crop at ``res``, in file order, this rank's share; yields (images, labels (N, 1)).

    'stock' is FFCV's own CenterCropRGBImageDecoder (it does not report corrupt records).
    """
    ours = CenterCropDecoder((res, res), ratio=crop_ratio) if _decode_method(decoder) == REGION else None
    image_decoder = ours if ours is not None else CenterCropRGBImageDecoder((res, res), ratio=crop_ratio)
    loader = Loader(str(path), batch_size=settings.batch_size, num_workers=settings.num_workers,
                    order=OrderOption.SEQUENTIAL, os_cache=True, drop_last=False,
                    indices=val_indices(num_samples, rank, world_size),
                    pipelines={"image": [image_decoder, *_image_tail(settings.device, settings.channels_last)],
                               "label": _label_pipeline(settings.device)})
    return ValLoader(loader, ours, str(path))
