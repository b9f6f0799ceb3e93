"""Reading a .beton that is not in the page cache: random order vs the page-shuffled order.

Before each run the file's pages are dropped from the OS page cache (posix_fadvise
DONTNEED, no root needed), so every byte comes from storage, as for a dataset larger
than RAM. For each order: img/s of one epoch of the real training loader (decode
included) and the bytes this process read from storage per image (/proc/self/io).
Runs alternate; medians are compared as a ratio.

    python write_datasets.py demo data/demo   # or any .beton of your own
    python benchmarks/bench_order.py --beton data/demo/train.beton [--res 160] [--repeats 3]
"""
from __future__ import annotations

import argparse
import mmap
import os
import statistics
import time
from pathlib import Path

import torch

from ffcv_imagenet.loaders import LoaderSettings, TrainLoader, workers_per_rank
from ffcv_imagenet.schedule import RRC, EpochPlan

ORDERS = {"random (page cache)": ("random", True), "quasi_random (process cache)": ("quasi_random", False)}


def drop_from_page_cache(path: Path, loaders: list[TrainLoader]) -> None:
    """Evict the file's pages; pages a loader still maps must first be released by its mapping."""
    for loader in loaders:
        for ffcv_loader, _ in loader._built.values():
            mapped = getattr(getattr(ffcv_loader.memory_manager, "context", None), "mmap", None)
            if mapped is not None:
                mapped._mmap.madvise(mmap.MADV_DONTNEED)
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def bytes_read_from_storage() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no read_bytes")


def one_cold_epoch(loader: TrainLoader, everyone: list[TrainLoader], beton: Path, epoch: int,
                   res: int) -> tuple[float, float]:
    """(img/s, bytes read per image) for one epoch started with the file out of the page cache."""
    drop_from_page_cache(beton, everyone)
    before, started, images = bytes_read_from_storage(), time.perf_counter(), 0
    for batch, _ in loader.epoch(EpochPlan(epoch, res, RRC)):
        images += batch.shape[0]
    seconds = time.perf_counter() - started
    return images / seconds, (bytes_read_from_storage() - before) / images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beton", type=Path, default=Path("data/demo/train.beton"))
    parser.add_argument("--res", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--cache-mib", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    settings = LoaderSettings(batch_size=args.batch_size, num_workers=workers_per_rank(args.workers),
                              device=torch.device("cpu"))
    loaders = {name: TrainLoader(args.beton, settings, order=order, in_memory=in_memory, distributed=False, seed=0,
                                 fixres_crop_ratio=0.875, cache_mib=args.cache_mib)
               for name, (order, in_memory) in ORDERS.items()}
    for loader in loaders.values():  # compile each pipeline once, untimed
        one_cold_epoch(loader, list(loaders.values()), args.beton, 0, args.res)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in loaders}
    for repeat in range(args.repeats):
        names = list(loaders) if repeat % 2 == 0 else list(reversed(loaders))
        for name in names:
            results[name].append(one_cold_epoch(loaders[name], list(loaders.values()), args.beton, repeat + 1,
                                                       args.res))

    size_mib = args.beton.stat().st_size / 2 ** 20
    print(f"{args.beton} ({size_mib:.0f} MiB), RRC {args.res} px, batch {args.batch_size}, "
          f"{settings.num_workers} workers, cache {args.cache_mib} MiB, page cache dropped before each epoch")
    medians = {}
    for name, runs in results.items():
        rate = statistics.median(r for r, _ in runs)
        read = statistics.median(b for _, b in runs)
        medians[name] = rate
        print(f"  {name:<30} {rate:8.0f} img/s  (runs {', '.join(f'{r:.0f}' for r, _ in runs)})  "
              f"{read / 1024:7.1f} KiB read per image")
    random_rate, page_rate = medians.values()
    print(f"  ratio quasi_random / random: {page_rate / random_rate:.2f}x")


if __name__ == "__main__":
    main()
