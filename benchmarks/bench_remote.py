"""Training from an object store against the same file on local disk, side by side in one run.

A local S3-compatible server holds the .beton, reached by obstore over HTTP exactly as a bucket is:

- ``--server nginx`` (default): Debian's nginx serving the file path-style (``/BUCKET/KEY``) with its
  static module, which answers what obstore's S3 client sends for reading: HEAD (size, ETag), ranged
  GET (206) and ``If-Match`` (412 on another ETag). It stands in for a store whose cost per GET is
  proportional to the bytes asked for (S3, GCS, MinIO), not for one that authenticates: nginx ignores
  the request's signature.
- ``--server moto``: moto's server mode, the tests' server. It reads the whole object for every ranged
  GET (``_handle_range_header`` slices ``key.value``), so a GET costs O(file size) in CPU: it measures
  moto, not the loader, past a few MiB.

A proxy in its own process (benchmarks/delay_proxy.py, one asyncio loop) between the loader and the
server holds every request 0, 20 and 50 ms by default, as a distant store would. For each order
(quasi_random, random), one epoch of the real training loader (``TrainLoader``, decode included) from:

- local disk: quasi_random through FFCV's process cache (a window of 25% of the file), random
  through the OS page cache (the file is warm there: the best case of local disk);
- the s3:// URL of the same file, the node cache bounded to 25% of the file and emptied before
  each epoch, so every page is fetched in the epoch timed.

Each latency runs ``--rounds`` pairs of epochs, a remote one then a local one (the box may be
shared: each remote epoch is compared with the local epoch right after it). Reported, medians over
the rounds: img/s and its ratio to local disk, bytes fetched in the epoch / file size, seconds from
the start of the epoch to its first batch (and how many pages that batch touches: what it waits
for), and the CPU seconds of the epoch spent by the loader's process, the server and the proxy
(all on the same cores here). Data: real-like JPEG sources
(ImageNet's mix of chroma, quality and sizes: benchmarks/real_like_sources.py) stored as JPEG at
most 512 px by FFCV's DatasetWriter with 2 MiB pages (FFCV's smallest), so that a small file still
has tens of pages.

    python benchmarks/bench_remote.py [--images 1500] [--res 160] [--latency-ms 0 20 50] [--folder DIR]
        [--server nginx|moto] [--rounds 3] [--beton PATH]
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch
from real_like_sources import add_sources_option, prepare_sources

from ffcv_imagenet.loaders import LoaderSettings, TrainLoader, workers_per_rank
from ffcv_imagenet.remote import STATS
from ffcv_imagenet.remote_cache import CacheSettings
from ffcv_imagenet.schedule import RRC, EpochPlan

PAGE = 2 ** 21
BUCKET = "bench-data"
KEY = "train.beton"
CACHE_SHARE = 0.25
REQUESTS = 4  # the smallest cache (25% of a ~70 MiB file) must hold data.remote_requests + 2 pages
HERE = Path(__file__).resolve().parent
NGINX = "/usr/sbin/nginx"
NGINX_CONF = """daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/nginx-body;
  proxy_temp_path {tmp}/nginx-proxy;
  fastcgi_temp_path {tmp}/nginx-fastcgi;
  uwsgi_temp_path {tmp}/nginx-uwsgi;
  scgi_temp_path {tmp}/nginx-scgi;
  sendfile on;
  keepalive_requests 1000000;
  keepalive_timeout 600s;
  server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{what} did not start")


def start_nginx(beton: Path, tmp: Path) -> tuple[subprocess.Popen, int]:
    """nginx serving ``beton`` at /BUCKET/KEY (a hard link, or a copy across file systems)."""
    if not Path(NGINX).is_file():
        sys.exit(f"bench_remote.py: error: --server nginx needs {NGINX} (Debian: apt-get install nginx-light); "
                 "or use --server moto")
    root = tmp / "nginx-root"
    (root / BUCKET).mkdir(parents=True)
    try:
        os.link(beton, root / BUCKET / KEY)
    except OSError:
        shutil.copyfile(beton, root / BUCKET / KEY)
    os.chmod(tmp, 0o755)  # nginx's worker runs as nobody when started by root
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, root=root))
    server = subprocess.Popen([NGINX, "-p", str(tmp), "-c", str(conf)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    wait_for_port(port, "nginx")
    return server, port


def start_moto(beton: Path) -> tuple[subprocess.Popen, int]:
    """moto's server mode with the bucket and the object uploaded."""
    import boto3

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, "the moto server")
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench")
    client.create_bucket(Bucket=BUCKET)
    client.upload_file(str(beton), BUCKET, KEY)
    return server, port


class DelayProxy:
    """benchmarks/delay_proxy.py in its own process; ``set_delay`` tells it the delay per request."""

    def __init__(self, target: int):
        self.process = subprocess.Popen([sys.executable, str(HERE / "delay_proxy.py"), str(target)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.port = int(self.process.stdout.readline())

    def set_delay(self, seconds: float) -> None:
        self.process.stdin.write(f"{seconds}\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        self.process.stdin.close()
        self.process.wait(10)


def cpu_seconds(process: psutil.Process, children: bool) -> float:
    """User + system CPU seconds of ``process``, with its children's (nginx's worker) if asked."""
    total = 0.0
    for each in [process, *(process.children(recursive=True) if children else [])]:
        times = each.cpu_times()
        total += times.user + times.system
    return total


def write_beton(sources: Path, beton: Path) -> Path:
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter
    from torchvision.datasets import ImageFolder

    if beton.is_file():
        return beton
    temp = beton.with_name(beton.name + ".part")
    fields = {"image": RGBImageField(write_mode="jpg", max_resolution=512, jpeg_quality=90), "label": IntField()}
    DatasetWriter(str(temp), fields, page_size=PAGE, num_workers=2).from_indexed_dataset(ImageFolder(str(sources)))
    os.replace(temp, beton)
    return beton


class Meters:
    """CPU seconds of the loader's process, the server and the proxy, read before and after an epoch."""

    def __init__(self, server: subprocess.Popen, proxy: DelayProxy):
        self.processes = [psutil.Process(), psutil.Process(server.pid), psutil.Process(proxy.process.pid)]

    def read(self) -> list[float]:
        # the loader's own process only: the server and the proxy are its children here
        return [cpu_seconds(process, children=index > 0) for index, process in enumerate(self.processes)]


def timed_epoch(loader: TrainLoader, res: int, epoch: int, meters: Meters) -> dict:
    """img/s, seconds to the first batch, bytes fetched from the store and CPU seconds of one epoch."""
    fetched, cpu = STATS.bytes, meters.read()
    start = time.perf_counter()
    first = None
    images = 0
    for batch, _ in loader.epoch(EpochPlan(epoch=epoch, res=res, crop_mode=RRC)):
        if first is None:
            first = time.perf_counter() - start
        images += batch.shape[0]
    seconds = time.perf_counter() - start
    loader_cpu, server_cpu, proxy_cpu = (after - before for after, before in zip(meters.read(), cpu))
    return {"rate": images / seconds, "first": first or 0.0, "fetched": STATS.bytes - fetched, "seconds": seconds,
            "loader_cpu": loader_cpu, "server_cpu": server_cpu, "proxy_cpu": proxy_cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--res", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0)
    add_sources_option(parser)
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 20.0, 50.0])
    parser.add_argument("--server", choices=("nginx", "moto"), default="nginx",
                        help="nginx (default): cost per GET proportional to its range; moto: the tests' server, "
                             "which reads the whole object for every ranged GET")
    parser.add_argument("--rounds", type=int, default=3, help="remote and local epochs per latency (medians)")
    parser.add_argument("--beton", type=Path, help="the .beton to read (written there from the sources if absent)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-remote-") as name:
        tmp = Path(name)
        beton = write_beton(prepare_sources(args, tmp), args.beton or tmp / KEY)
        size = beton.stat().st_size
        server, port = start_nginx(beton, tmp) if args.server == "nginx" else start_moto(beton)
        proxy = DelayProxy(port)
        try:
            os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{proxy.port}", AWS_ALLOW_HTTP="true",
                              AWS_REGION="us-east-1", AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
            run(args, beton, size, Meters(server, proxy), proxy, tmp)
        finally:
            proxy.stop()
            server.terminate()
            server.wait()


def run(args: argparse.Namespace, beton: Path, size: int, meters: Meters, proxy: DelayProxy, tmp: Path) -> None:
    settings = LoaderSettings(batch_size=args.batch_size, num_workers=workers_per_rank(args.workers),
                              device=torch.device("cpu"))
    cache_mib = max(1, int(size * CACHE_SHARE / 2 ** 20))
    remote = CacheSettings(str(tmp / "cache"), gib=size * CACHE_SHARE / 2 ** 30, requests=REQUESTS)
    pages = -(-size // PAGE)
    print(f"{beton.name}: {size / 2 ** 20:.0f} MiB in {pages} pages of 2 MiB; cache {cache_mib} MiB "
          f"(25%), {REQUESTS} concurrent GETs, RRC {args.res} px, batch {args.batch_size}, "
          f"{settings.num_workers} decode threads; server: {args.server}; medians of {args.rounds} rounds, "
          "each a remote epoch then a local one", flush=True)
    print("order         source        img/s  vs local  fetched/file  first batch (its pages)  "
          "CPU s: loader server proxy", flush=True)
    for order, local_in_memory in (("quasi_random", False), ("random", True)):
        common = dict(order=order, distributed=False, seed=0, fixres_crop_ratio=0.875, cache_mib=cache_mib)
        local = TrainLoader(beton, settings, in_memory=local_in_memory, **common)
        from_store = TrainLoader(f"s3://{BUCKET}/{KEY}", settings, in_memory=False, remote=remote, **common)
        timed_epoch(local, args.res, 0, meters)  # numba compiles each pipeline once, untimed
        timed_epoch(from_store, args.res, 0, meters)
        epoch = 1
        first_batch, held = epoch_pages(from_store, epoch, args.batch_size, args.res)
        first_pages = f"({first_batch}/{pages})"
        print(f"{order}: the first batch touches {first_batch} of {pages} pages; FFCV's process cache holds up to "
              f"{held} pages ({held * PAGE / 2 ** 20:.0f} MiB) at once", flush=True)
        locals_: list[dict] = []
        for latency in args.latency_ms:
            proxy.set_delay(latency / 1000)
            remotes = []
            for _ in range(args.rounds):
                shutil.rmtree(remote.root / "pages", ignore_errors=True)  # every page fetched in the epoch timed
                (remote.root / "pages").mkdir()
                remotes.append(timed_epoch(from_store, args.res, epoch, meters))
                locals_.append(timed_epoch(local, args.res, epoch, meters))  # the box is shared: pairs
                remotes[-1]["ratio"] = remotes[-1]["rate"] / locals_[-1]["rate"]
            report(order, f"s3 +{latency:.0f} ms", median_of(remotes), size, first_pages)
        report(order, "local disk", {**median_of(locals_), "ratio": 1.0}, size, "")


def median_of(epochs: list[dict]) -> dict:
    return {key: statistics.median(epoch[key] for epoch in epochs) for key in epochs[0]}


def epoch_pages(loader: TrainLoader, epoch: int, batch_size: int, res: int) -> tuple[int, int]:
    """(pages the first batch of ``epoch`` touches: what it waits for, pages FFCV's process cache
    holds at once in that epoch: its memory)."""
    from ffcv.memory_managers.process_cache.schedule import compute_schedule

    loader.prepare(EpochPlan(epoch=epoch, res=res, crop_mode=RRC))
    ffcv_loader = loader._loader
    samples = ffcv_loader.traversal_order.sample_order(epoch)
    pages_at_batch = [set().union(*(ffcv_loader.memory_manager.sample_to_pages[sample]
                                    for sample in samples[start:start + batch_size]))
                      for start in range(0, len(samples) - batch_size + 1, batch_size)]
    return len(pages_at_batch[0]), compute_schedule(pages_at_batch).num_slots


def report(order: str, source: str, epoch: dict, size: int, first_pages: str) -> None:
    fetched = f"{epoch['fetched'] / size:.2f}x" if source.startswith("s3") else "-"
    print(f"{order:<13} {source:<11} {epoch['rate']:7.0f}  {epoch['ratio']:6.2f}x  {fetched:>12}  "
          f"{epoch['first']:7.2f} s {first_pages:>11}  {epoch['loader_cpu']:12.1f} {epoch['server_cpu']:6.1f} "
          f"{epoch['proxy_cpu']:5.1f}", flush=True)


if __name__ == "__main__":
    main()
