"""Training from an object store against the same file on local disk, side by side in one run.

A local S3-compatible server (moto's server mode, its own process) holds the .beton; a small TCP
proxy between the loader and the server adds a fixed delay to every request (0, 20 and 50 ms by
default), as a distant store would. For each order (quasi_random, random), one epoch of the real
training loader (``TrainLoader``, decode included) from:

- local disk: quasi_random through FFCV's process cache (a window of 25% of the file), random
  through the OS page cache (the file is warm there: the best case of local disk);
- the s3:// URL of the same file, the node cache bounded to 25% of the file and emptied before
  each epoch, so every page is fetched in the epoch timed.

Reported: img/s and its ratio to local disk, bytes fetched in the epoch / file size, and seconds
from the start of the epoch to its first batch. Data: real-like JPEG sources (ImageNet's mix of
chroma, quality and sizes: benchmarks/real_like_sources.py) stored as JPEG at most 512 px by FFCV's
DatasetWriter with 2 MiB pages, so that a small file still has tens of pages.

    python benchmarks/bench_remote.py [--images 1500] [--res 160] [--latency-ms 0 20 50] [--folder DIR]
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from real_like_sources import add_sources_option, prepare_sources

from ffcv_imagenet.loaders import LoaderSettings, TrainLoader, workers_per_rank
from ffcv_imagenet.remote import STATS
from ffcv_imagenet.remote_cache import CacheSettings
from ffcv_imagenet.schedule import RRC, EpochPlan

PAGE = 2 ** 21
BUCKET = "bench-data"
CACHE_SHARE = 0.25
REQUESTS = 4  # the smallest cache (25% of a ~70 MiB file) must hold data.remote_requests + 2 pages


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class DelayProxy:
    """Forwards TCP connections to ``target``, holding each chunk the client sends for ``delay``
    seconds first: every HTTP request (one chunk: a GET has no body) waits that long."""

    def __init__(self, target: int):
        self.target, self.delay = target, 0.0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            server = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, delayed: bool) -> None:
        try:
            while chunk := source.recv(1 << 20):
                if delayed and self.delay:
                    time.sleep(self.delay)
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                end.close()


def start_store(tmp: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            return server, port
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the S3 server did not start")


def write_beton(sources: Path, tmp: Path) -> Path:
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter
    from torchvision.datasets import ImageFolder

    beton = tmp / "train.beton"
    fields = {"image": RGBImageField(write_mode="jpg", max_resolution=512, jpeg_quality=90), "label": IntField()}
    DatasetWriter(str(beton), fields, page_size=PAGE, num_workers=2).from_indexed_dataset(ImageFolder(str(sources)))
    return beton


def timed_epoch(loader: TrainLoader, res: int, epoch: int) -> tuple[float, float, int]:
    """(img/s, seconds to the first batch, bytes fetched from the store) of one epoch."""
    fetched = STATS.bytes
    start = time.perf_counter()
    first = None
    images = 0
    for batch, _ in loader.epoch(EpochPlan(epoch=epoch, res=res, crop_mode=RRC)):
        if first is None:
            first = time.perf_counter() - start
        images += batch.shape[0]
    return images / (time.perf_counter() - start), first or 0.0, STATS.bytes - fetched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--res", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0)
    add_sources_option(parser)
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 20.0, 50.0])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-remote-") as name:
        tmp = Path(name)
        beton = write_beton(prepare_sources(args, tmp), tmp)
        size = beton.stat().st_size
        server, port = start_store(tmp)
        try:
            import boto3

            keys = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench"}
            client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1", **keys)
            client.create_bucket(Bucket=BUCKET)
            client.upload_file(str(beton), BUCKET, "train.beton")
            proxy = DelayProxy(port)
            os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{proxy.port}", AWS_ALLOW_HTTP="true",
                              AWS_REGION="us-east-1", AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
            run(args, beton, size, proxy, tmp)
        finally:
            server.terminate()
            server.wait()


def run(args: argparse.Namespace, beton: Path, size: int, proxy: DelayProxy, tmp: Path) -> None:
    settings = LoaderSettings(batch_size=args.batch_size, num_workers=workers_per_rank(args.workers),
                              device=torch.device("cpu"))
    cache_mib = max(1, int(size * CACHE_SHARE / 2 ** 20))
    remote = CacheSettings(str(tmp / "cache"), gib=size * CACHE_SHARE / 2 ** 30, requests=REQUESTS)
    print(f"{beton.name}: {size / 2 ** 20:.0f} MiB in {-(-size // PAGE)} pages of 2 MiB; cache {cache_mib} MiB "
          f"(25%), {REQUESTS} concurrent GETs, RRC {args.res} px, batch {args.batch_size}, "
          f"{settings.num_workers} decode threads", flush=True)
    for order, local_in_memory in (("quasi_random", False), ("random", True)):
        common = dict(order=order, distributed=False, seed=0, fixres_crop_ratio=0.875, cache_mib=cache_mib)
        local = TrainLoader(beton, settings, in_memory=local_in_memory, **common)
        from_store = TrainLoader(f"s3://{BUCKET}/train.beton", settings, in_memory=False, remote=remote, **common)
        timed_epoch(local, args.res, 0)  # numba compiles each pipeline once, untimed
        timed_epoch(from_store, args.res, 0)
        epoch = 1
        local_rate, _, _ = timed_epoch(local, args.res, epoch)
        print(f"  {order:<12} local disk          {local_rate:7.0f} img/s", flush=True)
        for latency in args.latency_ms:
            proxy.delay = latency / 1000
            shutil.rmtree(remote.root / "pages", ignore_errors=True)  # every page fetched in the epoch timed
            (remote.root / "pages").mkdir()
            rate, first, fetched = timed_epoch(from_store, args.res, epoch)
            print(f"  {order:<12} s3 +{latency:3.0f} ms/request  {rate:7.0f} img/s = {rate / local_rate:.2f}x local; "
                  f"fetched {fetched / size:.2f}x the file; first batch after {first:.2f} s", flush=True)
            local_rate_again, _, _ = timed_epoch(local, args.res, epoch)  # the box is shared: local again, same epoch
            local_rate = (local_rate + local_rate_again) / 2


if __name__ == "__main__":
    main()
