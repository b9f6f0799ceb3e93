"""FFCV loaders for training and evaluation, and the on-device normalisation.

Images leave the loader as uint8 NCHW tensors (channels_last if asked) already
on the training device: the host-to-device copy moves a quarter of the bytes of
float32, and normalisation runs on the device (``normalize``). FFCV's loader
thread is kept on the rank's GPU (``RankDeviceLoader``).

The training loader is built once per crop mode and kept: a new epoch only
sets the decoder's output size, its epoch seed and the loader's epoch counter,
so progressive resizing recompiles nothing and allocates only the epoch's
batch buffers, which FFCV frees when the epoch ends.
"""
from __future__ import annotations

import contextlib
import functools
import queue
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from ffcv.fields.basics import IntDecoder
from ffcv.fields.rgb_image import CenterCropRGBImageDecoder
from ffcv.loader import Loader, OrderOption
from ffcv.loader.epoch_iterator import EpochIterator
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.transforms import ToDevice, ToTensor, ToTorchImage

from .beton_format import DEFAULT_FIELDS, Fields, loader_pipelines
from .config import AugmentConfig, Config, ConfigError
from .decoders import (FULL, REGION, RRC_RATIO, RRC_SCALE, CenterCropDecoder, FixResCropDecoder,
                       RandomResizedCropDecoder, SeededCropDecoder)
from .distributed import job_cores, ranks_on_node
from .preflight import Datasets
from .remote import STATS
from .remote_cache import CacheSettings, NodeCache, local_view
from .remote_pages import open_loader
from .schedule import FIXRES, RRC, EpochPlan
from .traversal import PageShuffleOrder, RandomOrder, RankShare, samples_by_page, steps_from
from .yuv420_records import YUV420ImageField

IMAGENET_MEAN_255 = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD_255 = (0.229 * 255, 0.224 * 255, 0.225 * 255)
DEFAULT_CACHE_MIB = 4096  # the recipes' data.cache_mib
MIB = 2 ** 20
# FFCV's decode thread notices a stop only while it waits to hand over a batch (it retries a full
# queue every 0.5 s), after finishing the batch in hand.
HANDOVER_WAIT_SECONDS = 0.6
DECODE_THREAD_JOIN_SECONDS = 30.0
FAST, STOCK = "fast", "stock"  # the recipe's data.decoder
DECODE_METHODS = {FAST: REGION, STOCK: FULL}

T = TypeVar("T")
Batch = tuple[torch.Tensor, torch.Tensor]  # uint8 images (N, 3, H, W) on the device, int64 labels (N,)


def _decode_method(decoder: str) -> str:
    if decoder not in DECODE_METHODS:
        raise ValueError(f"decoder must be {FAST} or {STOCK}: {decoder!r}")
    return DECODE_METHODS[decoder]


def workers_per_rank(requested: int, cores: int | None = None, ranks: int | None = None) -> int:
    """``requested``, or with 0 this rank's share of the job's cores less one, which stays free
    for the rank's own thread (it launches the GPU work; a busy core delays every kernel launch)."""
    if requested > 0:
        return requested
    cores = job_cores() if cores is None else cores
    ranks = ranks_on_node() if ranks is None else ranks
    return max(1, cores // ranks - 1)


@functools.lru_cache(maxsize=None)
def _mean_and_std(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Built once per (device, dtype): building them per batch copies from pageable host memory,
    which on a GPU waits for all queued work (a synchronisation per call)."""
    mean = torch.tensor(IMAGENET_MEAN_255, dtype=dtype).view(1, 3, 1, 1).to(device)
    std = torch.tensor(IMAGENET_STD_255, dtype=dtype).view(1, 3, 1, 1).to(device)
    return mean, std


def normalize(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 images on the device -> ``(x - mean) / std`` in ``dtype``, memory format kept."""
    mean, std = _mean_and_std(images.device, dtype)
    # copy=True: the in-place steps below must never write into the caller's (FFCV's) buffer
    return images.to(dtype, copy=True).sub_(mean).div_(std)


def release_after_use(batches: Iterable[T], new_event: Callable[[], Any] | None) -> Iterator[T]:
    """``batches``, each made safe to refill before the next one is asked for.

    FFCV rewrites a pinned host buffer without waiting for its pending copy to the GPU (GPU-NOTES):
    its decode thread refills a batch's slot once the consumer has taken later batches. So an event
    is recorded on the current stream when a batch arrives (FFCV has made that stream wait for the
    batch's copy), and the host waits on it when the consumer is done with the batch, before it
    takes the next one: every copy has ended before its buffer can be refilled, whatever the
    consumer does (training reads no value per step; evaluation none per batch). The wait covers
    the work queued before the batch arrived, one step back, so the device always has the
    current step queued. ``new_event`` makes the events (``arrival_events``; None off CUDA).
    """
    for batch in batches:
        arrived = None
        if new_event is not None:
            arrived = new_event()
            arrived.record()
        try:
            yield batch
        finally:  # also when the consumer stops early: the buffers are freed next
            if arrived is not None:
                arrived.synchronize()


def arrival_events(device: torch.device) -> Callable[[], Any] | None:
    """What ``release_after_use`` records on ``device``: CUDA events, or nothing (host batches)."""
    return torch.cuda.Event if device.type == "cuda" else None


def _to_device(device: torch.device) -> list:
    """The host-to-device copy, absent when the batch is used on the host (CPU training, the
    profiler's host loader): a copy from host to host would only add work the real path lacks."""
    return [] if device.type == "cpu" else [ToDevice(device, non_blocking=True)]


def _image_tail(device: torch.device) -> list:
    # Always FFCV's channels-last view: with channels_last=False FFCV's ToTorchImage copies the
    # batch into a buffer allocated without a device, i.e. back onto the host. The NCHW layout
    # is made on the device instead (``in_layout``).
    return [ToTensor(), *_to_device(device), ToTorchImage(channels_last=True, convert_back_int16=False)]


def in_layout(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A loader batch (a channels-last view) in the model's memory format, on its own device."""
    return images if channels_last else images.contiguous()


def _label_pipeline(device: torch.device) -> list:
    return [IntDecoder(), ToTensor(), *_to_device(device)]


class RankDeviceEpochIterator(EpochIterator):
    """FFCV's epoch thread, working on the device that was current where the epoch began.

    CUDA's current device is per thread and starts at 0: FFCV's thread enters and leaves its
    copy streams with ``torch.cuda.stream``, which reads and restores the thread's current
    stream on device 0, so every rank would create a CUDA context (some 400 MiB) on GPU 0.

    An error in the thread (a remote page that cannot be fetched) ends the epoch and is raised
    to the consumer, which would otherwise wait for the next batch forever.
    """

    def __init__(self, loader: Loader, order: np.ndarray):
        self.device_index = torch.cuda.current_device() if torch.cuda.is_initialized() else None
        self.failure: BaseException | None = None
        super().__init__(loader, order)  # starts the thread

    def run(self) -> None:
        if self.device_index is not None:
            torch.cuda.set_device(self.device_index)
        try:
            super().run()
        except Exception as err:  # noqa: BLE001 - raised again in the consumer's thread
            self.failure = err
            while not self.terminate_event.is_set():
                with contextlib.suppress(queue.Full):
                    self.output_queue.put(None, timeout=HANDOVER_WAIT_SECONDS)
                    return

    def __next__(self):
        try:
            return super().__next__()
        except StopIteration:
            if self.failure is not None:
                raise self.failure from None
            raise


class RankDeviceLoader(Loader):
    """FFCV's Loader with ``RankDeviceEpochIterator`` as its epoch thread."""

    def __iter__(self) -> RankDeviceEpochIterator:
        # ffcv/loader/loader.py Loader.__iter__ (1.0.2), whose iterator class is not a parameter.
        Compiler.set_num_threads(self.num_workers)
        order = self.next_traversal_order()
        selected_order = order[:len(self) * self.batch_size]
        self.next_epoch += 1
        if self.code is None or self.recompile:
            self.generate_code()
        return RankDeviceEpochIterator(self, selected_order)


def host_buffer_bytes(loader: Loader) -> int:
    """Host memory FFCV allocates for one epoch's batch buffers: every allocation of the pipeline
    without a device (decode outputs and scratch), for each of its ``batches_ahead + 2`` slots.
    FFCV pins all of it when CUDA is available (ffcv/pipeline/allocation_query.py)."""
    requirements, _ = loader.graph.collect_requirements()
    queries = []
    for by_node in requirements.values():
        for allocation in by_node.values():
            queries += [allocation] if isinstance(allocation, AllocationQuery) else list(allocation or ())
    per_sample = sum(int(np.prod(q.shape)) * _itemsize(q.dtype)
                     for q in queries if q.device is None or torch.device(q.device).type == "cpu")
    return per_sample * loader.batch_size * (loader.batches_ahead + 2)


def _itemsize(dtype: np.dtype | torch.dtype) -> int:
    return dtype.itemsize if isinstance(dtype, torch.dtype) else np.dtype(dtype).itemsize


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

    ``order`` is 'random' (the dataset sits in the page cache: a permutation of
    the whole set) or 'quasi_random' (it does not: traversal.PageShuffleOrder,
    pages read whole through a process cache of about ``cache_mib`` over all
    ranks, each rank reading its band of every window).
    Either is one global order per epoch, cut into steps across the ranks by
    traversal.RankShare, so a run can resume inside an epoch on another number
    of ranks. Like FFCV's own loader, ``distributed`` takes the rank and rank
    count from torch.distributed.
    ``decoder`` is 'fast' (region decode at an IDCT scale) or 'stock' (FFCV's full-size decode);
    ``crop`` holds the RandomResizedCrop ranges and the flip, the same for both.
    ``fields`` names the file's image and label fields (ffcv-imagenet's by default).
    A corrupt JPEG record raises ``CorruptRecordError`` naming it, before its batch is yielded.
    ``path`` may be an object-store URL (or its stand-in): pages then come through the node cache
    that ``remote`` describes (remote_pages), whatever ``in_memory`` says.
    """

    def __init__(self, path: str | Path, settings: LoaderSettings, *, order: str, in_memory: bool,
                 distributed: bool, seed: int, fixres_crop_ratio: float, cache_mib: int = DEFAULT_CACHE_MIB,
                 decoder: str = FAST, crop: CropSettings = CropSettings(), fields: Fields = DEFAULT_FIELDS,
                 remote: CacheSettings = CacheSettings()):
        self.path = local_view(path, remote)
        self.remote = remote
        self.crop = crop
        self.fields = fields
        self.method = _decode_method(decoder)
        self.settings = settings
        self.order = order
        self.in_memory = in_memory
        self.distributed = distributed
        self.seed = seed
        self.fixres_crop_ratio = fixres_crop_ratio
        self.cache_mib = cache_mib
        self.process_cache_bytes = 0  # of the last epoch, with the process cache (in_memory: false)
        self.node_cache: NodeCache | None = None  # a remote dataset's pages (remote_pages)
        self._requests_before = (0, 0)  # the process's remote bytes and retries when the epoch began
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
        # FFCV's own orders depend on the rank count (DistributedSampler); ours do not, so FFCV
        # reads in the order given (sequential) and never shards.
        loader, node_cache = open_loader(
            self.path, self.remote, in_memory=self.in_memory, ranks_on_node=ranks_on_node(),
            loader_class=RankDeviceLoader, batch_size=settings.batch_size, num_workers=settings.num_workers,
            order=OrderOption.SEQUENTIAL, distributed=False, seed=self.seed, drop_last=True,
            pipelines=loader_pipelines(self.path, self.fields, [decoder, *_image_tail(settings.device)],
                                       _label_pipeline(settings.device)))
        self.node_cache = node_cache or self.node_cache
        inner = (self._page_shuffle(loader) if self.order == "quasi_random"
                 else RandomOrder(loader.indices, seed=self.seed))
        rank, world_size = self.rank_and_world_size()
        loader.traversal_order = RankShare(inner, rank=rank, world_size=world_size, batch_size=settings.batch_size)
        loader.first_traversal_order = loader.next_traversal_order()  # FFCV sizes len() from it
        return loader, decoder

    def rank_and_world_size(self) -> tuple[int, int]:
        return (dist.get_rank(), dist.get_world_size()) if self.distributed else (0, 1)

    def _page_shuffle(self, loader: Loader) -> PageShuffleOrder:
        # At a window boundary the caches hold the end of one window and the start of the next
        # (each rank its band of both): the order must not depend on the rank count, so neither may the window.
        # int(): the header's page size is a numpy uint32, and 4096 MiB does not fit one.
        window_pages = max(1, self.cache_mib * MIB // int(loader.reader.page_size) // 2)
        try:
            pages = samples_by_page(loader.memory_manager.page_to_samples, loader.indices)
        except ValueError as err:  # a page-ordered visit would train that record twice an epoch
            raise ConfigError(f"data.order: quasi_random reads {self.path} page by page, but {err}; "
                              "use data.order=random") from None
        return PageShuffleOrder(pages, seed=self.seed, window_pages=window_pages)

    def __len__(self) -> int:
        """Batches per epoch on this rank (the last partial global batch is dropped)."""
        return self.steps_from(0)

    @property
    def num_samples(self) -> int:
        """Samples in the training set: one epoch's global order."""
        if self._loader is None:
            raise RuntimeError("call epoch() first: the loader is built for an epoch's plan")
        return len(self._loader.indices)

    def steps_from(self, start_sample: int) -> int:
        """Steps of an epoch run from global position ``start_sample``."""
        _, world_size = self.rank_and_world_size()
        return steps_from(self.num_samples, start_sample, world_size * self.settings.batch_size)

    def prepare(self, plan: EpochPlan) -> None:
        """Set up ``plan``'s epoch without starting it (so len() is known)."""
        if plan.crop_mode not in self._built:
            self._built[plan.crop_mode] = self._build(plan)
        self._loader, self._decoder = self._built[plan.crop_mode]
        self._decoder.output_size = (plan.res, plan.res)
        self._decoder.set_epoch(self.seed, plan.epoch)
        # The order is drawn for FFCV's epoch counter: set it so a resumed run reads
        # epoch e in the same order as an uninterrupted one.
        self._loader.next_epoch = plan.epoch

    def remote_counts(self) -> dict[str, float]:
        """For a remote dataset, what this process fetched and retried since the epoch began (the
        epoch record's ``remote_fetched_mib``, ``remote_retries``); nothing for a local file."""
        if self.node_cache is None:
            return {}
        return {"remote_fetched_mib": (STATS.bytes - self._requests_before[0]) / MIB,
                "remote_retries": STATS.retries - self._requests_before[1]}

    def host_buffer_bytes(self, plan: EpochPlan) -> int:
        """Host memory FFCV allocates for ``plan``'s epoch (pinned on a GPU machine)."""
        self.prepare(plan)
        assert self._loader is not None
        return host_buffer_bytes(self._loader)

    def peak_host_buffer_bytes(self, plans: Iterable[EpochPlan]) -> int:
        """The most host memory any of ``plans``' epochs allocates: each crop mode's largest epoch measured."""
        largest: dict[str, EpochPlan] = {}
        for plan in plans:
            if plan.res >= largest.get(plan.crop_mode, plan).res:
                largest[plan.crop_mode] = plan
        return max(self.host_buffer_bytes(plan) for plan in largest.values())

    def epoch(self, plan: EpochPlan, start_sample: int = 0) -> Iterator[Batch]:
        """This rank's batches of ``plan``'s epoch from global position ``start_sample`` on
        (the samples before it are not even read), full global batches only."""
        self.prepare(plan)
        assert self._loader is not None and self._decoder is not None
        if self.steps_from(start_sample) == 0:
            self.process_cache_bytes = 0
            return  # what is left is less than one global batch: nothing to read
        self._loader.traversal_order.start = start_sample
        self._requests_before = (STATS.bytes, STATS.retries)
        batches = iter(self._loader)
        cache = getattr(batches.memory_context, "memory", None)  # FFCV's process cache, if in use
        self.process_cache_bytes = cache.nbytes if cache is not None else 0
        try:
            for images, labels in release_after_use(batches, arrival_events(self.settings.device)):
                self._decoder.check_decoded(self.path)
                yield in_layout(images, self.settings.channels_last), labels.view(-1)
        finally:
            # An epoch left early (a stop signal, the profiler's timed windows) must stop FFCV's
            # decode thread: its thread object is never collected, so it would keep its batch buffers.
            stop_epoch(batches)


def build_train_loader(config: Config, settings: LoaderSettings, datasets: Datasets, *,
                       distributed: bool) -> TrainLoader:
    """The recipe's training loader over the training file preflight checked (``datasets``: for a URL,
    the stand-in of the object version it read, with no second HEAD), delivering to ``settings.device``:
    the trainer's, or the profiler's second one on the host."""
    data, fields = config.data, datasets.fields
    return TrainLoader(datasets.train_path, settings, order=data.order, in_memory=data.in_memory,
                       distributed=distributed, seed=config.training.seed, cache_mib=data.cache_mib,
                       fixres_crop_ratio=config.resolution.fixres_crop_ratio, decoder=data.decoder, fields=fields,
                       crop=CropSettings.from_recipe(config.augment), remote=CacheSettings.of(data))


def stop_epoch(batches: EpochIterator) -> None:
    """Stop FFCV's decode thread, wait for it, then free its buffers.

    FFCV's own ``close()`` frees the buffers at once while the thread may still be decoding a
    batch into them, and a process that exits with that thread still running can abort in C++
    ("terminate called without an active exception").
    """
    batches.terminate_event.set()
    deadline = time.monotonic() + DECODE_THREAD_JOIN_SECONDS
    while batches.is_alive() and time.monotonic() < deadline:
        batches.join(HANDOVER_WAIT_SECONDS)
        if batches.is_alive():
            # At the epoch's end FFCV hands over its end marker without a timeout: make room for it.
            with contextlib.suppress(queue.Empty):
                batches.output_queue.get_nowait()
    batches.close()


def val_indices(num_samples: int, rank: int, world_size: int) -> np.ndarray:
    """Rank r evaluates samples r, r + W, r + 2W, ...: every sample exactly once across ranks.

    (FFCV's ``distributed=True`` pads the set with repeats so ranks get equal
    counts, which would count some images twice.)
    """
    return np.arange(rank, num_samples, world_size, dtype=np.uint64)


class ValLoader:
    """An FFCV val loader whose batches are checked for corrupt records before they are yielded."""

    def __init__(self, loader: Loader, decoder: CenterCropDecoder | None, path: str, channels_last: bool = True,
                 device: torch.device = torch.device("cpu")):
        self.loader, self.decoder, self.path = loader, decoder, path
        self.channels_last = channels_last
        self.device = device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        batches = iter(self.loader)
        try:
            for images, labels in release_after_use(batches, arrival_events(self.device)):
                if self.decoder is not None:
                    self.decoder.check_decoded(self.path)
                yield in_layout(images, self.channels_last), labels
        finally:
            stop_epoch(batches)  # when the pass ends early (an error)


def build_val_loader(path: str | Path, settings: LoaderSettings, *, res: int, crop_ratio: float,
                     num_samples: int, rank: int, world_size: int, decoder: str = FAST,
                     fields: Fields = DEFAULT_FIELDS, remote: CacheSettings = CacheSettings()) -> ValLoader:
    """Resize + center crop at ``res``, in file order, this rank's share; yields (images, labels (N, 1)).
    A remote dataset's stand-in reads its pages through the node cache ``remote`` describes.

    'stock' is FFCV's own CenterCropRGBImageDecoder (it does not report corrupt records; it reads no yuv420 field).
    """
    ours = CenterCropDecoder((res, res), ratio=crop_ratio) if _decode_method(decoder) == REGION else None
    image_decoder = ours if ours is not None else CenterCropRGBImageDecoder((res, res), ratio=crop_ratio)
    loader, _ = open_loader(path, remote, ranks_on_node=ranks_on_node(), loader_class=RankDeviceLoader,
                            batch_size=settings.batch_size, num_workers=settings.num_workers,
                            order=OrderOption.SEQUENTIAL, drop_last=False,
                            indices=val_indices(num_samples, rank, world_size),
                            pipelines=loader_pipelines(path, fields, [image_decoder, *_image_tail(settings.device)],
                                                       _label_pipeline(settings.device)))
    if ours is None and isinstance(loader.reader.handlers[fields.image], YUV420ImageField):
        raise ConfigError(f"{path} holds yuv420 records, which FFCV's stock decoder cannot read: "
                          f"validate with data.decoder={FAST}")
    return ValLoader(loader, ours, str(path), settings.channels_last, settings.device)
