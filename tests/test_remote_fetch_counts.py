"""How often a node fetches each page, counted at the local S3 server (tests/s3_server.py).

quasi_random through FFCV's process cache fed from a node cache of a quarter of the file: each page
is fetched once per epoch. The epochs are driven through FFCV's memory context (its schedule, its page
readers, our prefetcher and node cache) without a decode pipeline, so no numba compile: the
batches are those of the loader's own quasi_random order (traversal.PageShuffleOrder).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ffcv.reader import Reader
from remote_fixtures import PAGE, s3  # noqa: F401 - the S3 server fixture
from s3_server import BUCKET

from ffcv_imagenet.remote_cache import CacheSettings, NodeCache, local_view
from ffcv_imagenet.remote_pages import RemotePageManager
from ffcv_imagenet.traversal import PageShuffleOrder, samples_by_page

RECORD_BYTES = 100_000  # 20 records per 2 MiB page
PAGES = 12
KEY = "counted/bytes.beton"


@pytest.fixture(scope="module")
def counted_url(s3, tmp_path_factory) -> str:  # noqa: F811 - the fixture imported above
    """A .beton of PAGES pages of random bytes records, uploaded once."""
    from ffcv.fields import BytesField, IntField
    from ffcv.writer import DatasetWriter

    rng = np.random.default_rng(0)
    records = [(rng.integers(0, 256, RECORD_BYTES, dtype=np.uint8), index % 4) for index in range(20 * PAGES)]
    path = tmp_path_factory.mktemp("counted") / "bytes.beton"
    DatasetWriter(str(path), {"data": BytesField(), "label": IntField()}, page_size=PAGE,
                  num_workers=1).from_indexed_dataset(records)
    s3.client().upload_file(str(path), BUCKET, KEY)
    return f"s3://{BUCKET}/{KEY}"


def run_epoch(manager: RemotePageManager, order: PageShuffleOrder, epoch: int, batch_size: int) -> None:
    samples = order.sample_order(epoch)
    batches = [samples[start:start + batch_size] for start in range(0, len(samples), batch_size)]
    context = manager.schedule_epoch(batches)
    with context:
        for batch in range(len(batches)):
            context.start_batch(batch)


def test_quasi_random_fetches_each_page_once_per_epoch_with_a_cache_of_a_quarter_of_the_file(
        s3, counted_url: str, tmp_path: Path) -> None:  # noqa: F811
    requests = 1
    bound_pages = requests + 2  # the smallest bound allowed: a quarter of the file
    assert bound_pages * 4 <= PAGES
    settings = CacheSettings(str(tmp_path), gib=bound_pages * PAGE / 2 ** 30, requests=requests)
    stand_in = local_view(counted_url, settings)
    cache = NodeCache.for_stand_in(stand_in, settings)
    reader = Reader(stand_in)
    manager = RemotePageManager(reader, cache, ranks_on_node=1)
    pages = samples_by_page(manager.page_to_samples, np.arange(reader.num_samples))
    data_pages = len(pages)
    assert data_pages >= PAGES - 1  # the last page may hold the allocation table only
    order = PageShuffleOrder(pages, seed=0, window_pages=1)  # the loader's window for this cache: bound // 2
    for epoch in range(2):
        s3.reset_counts()
        run_epoch(manager, order, epoch, batch_size=8)
        assert s3.ranged_gets(KEY) <= data_pages, f"epoch {epoch}: pages fetched more than once"
        assert cache.used_bytes() <= bound_pages * PAGE
    assert s3.ranged_gets(KEY) >= data_pages - bound_pages  # the second epoch too, all but what stayed cached


def test_the_ledger_spares_claims_a_recount_and_a_count_too_high_heals(s3, counted_url: str, tmp_path: Path,
                                                                      monkeypatch) -> None:  # noqa: F811
    """Claims read the node's ledger instead of scanning the page folder; the folder is recounted only
    when the ledger says there is no room, and each recount frees a slack of pages already read (one
    page for a bound of 8), so reading the pages one after another through a full cache recounts at
    every other claim. The ledger equals the folder's bytes after loader epochs; one that counts too
    much (a page removed by hand) is corrected by the next recount: the bound holds, each page once."""
    from ffcv_imagenet.remote_cache import INFINITY

    bound_pages = 8
    settings = CacheSettings(str(tmp_path), gib=bound_pages * PAGE / 2 ** 30, requests=1)
    stand_in = local_view(counted_url, settings)
    cache = NodeCache.for_stand_in(stand_in, settings)
    recounts = []
    count_claims = NodeCache._claimed_bytes  # called by a recount only
    monkeypatch.setattr(NodeCache, "_claimed_bytes", lambda self: recounts.append(1) or count_claims(self))
    done: set[int] = set()
    page_count = -(-cache.remote.size // PAGE)
    buffer = np.empty(PAGE, np.uint8)
    for page in range(page_count):  # one thread: the recounts are exactly those the ledger asks for
        cache.read_into(page, buffer, lambda name: INFINITY if cache.page_of(name) in done else 0.0)
        done.add(page)
    assert len(recounts) == 1 + -(-(page_count - bound_pages) // 2)  # the first claim (no ledger yet), then halves
    assert int(cache.ledger_path.read_text()) == cache.used_bytes() <= bound_pages * PAGE

    reader = Reader(stand_in)
    manager = RemotePageManager(reader, cache, ranks_on_node=1)
    pages = samples_by_page(manager.page_to_samples, np.arange(reader.num_samples))
    order = PageShuffleOrder(pages, seed=0, window_pages=2)
    for epoch in range(2):
        s3.reset_counts()
        run_epoch(manager, order, epoch, batch_size=8)
        assert s3.ranged_gets(KEY) <= len(pages)
        assert cache.used_bytes() <= bound_pages * PAGE
        assert int(cache.ledger_path.read_text()) == cache.used_bytes()  # nothing in flight: pages only
    (cache.folder / cache.page_name(int(order.sample_order(1)[0] // 20))).unlink(missing_ok=True)
    cache.ledger_path.write_text(str(bound_pages * PAGE))  # counts too much: says full
    s3.reset_counts()
    run_epoch(manager, order, 2, batch_size=8)
    assert s3.ranged_gets(KEY) <= len(pages) and cache.used_bytes() <= bound_pages * PAGE
    assert int(cache.ledger_path.read_text()) == cache.used_bytes()


HOLD_CLAIM = """
import fcntl, os, sys, time
held = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(held, fcntl.LOCK_EX)
os.write(held, f"{os.getpid()} {sys.argv[2]}".encode())
print("holding", flush=True)
time.sleep(600)
"""


def test_a_claim_is_waited_on_while_its_process_lives_and_taken_over_when_it_dies(s3, counted_url: str,
                                                                                tmp_path: Path) -> None:  # noqa: F811
    """Another rank's claim (a process holding the claim file's lock) is waited on, not fetched again;
    once that process is killed the page is fetched. A claim file naming a live process that holds no
    lock (a dead rank's id reused by another process) is taken over at once."""
    import os
    import signal
    import subprocess
    import sys
    import threading

    settings = CacheSettings(str(tmp_path), gib=8 * PAGE / 2 ** 30, requests=1)
    cache = NodeCache.for_stand_in(local_view(counted_url, settings), settings)
    claim = cache.folder / (cache.page_name(0) + ".claim")
    claim.write_text(f"{os.getppid()} {PAGE}")  # a live process that is not fetching anything
    s3.reset_counts()
    cache.fetch(0, lambda name: 0.0)
    assert (cache.folder / cache.page_name(0)).is_file() and not claim.exists()

    claim = cache.folder / (cache.page_name(1) + ".claim")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_CLAIM, str(claim), str(PAGE)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        fetching = threading.Thread(target=cache.fetch, args=(1, lambda name: 0.0), daemon=True)
        fetching.start()
        fetching.join(1.0)
        assert fetching.is_alive() and not (cache.folder / cache.page_name(1)).exists()  # waits for its claimer
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        fetching.join(30)
        assert not fetching.is_alive() and (cache.folder / cache.page_name(1)).is_file()
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert s3.ranged_gets(KEY) == 2 and not claim.exists()
