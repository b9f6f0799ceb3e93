"""Datasets in an object store, against a local S3 server (moto's server mode, tests/s3_server.py)
reached over HTTP through obstore as a real bucket is: one server and one upload per module."""
from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, epoch_records, explain, interrupt_after_epochs, run, tiny_overrides, train_command
from remote_fixtures import PAGE, pages_of, paged_betons, s3, urls  # noqa: F401  (fixtures)
from s3_server import BUCKET

from ffcv_imagenet.cli import EXIT_PREEMPTED
from ffcv_imagenet.remote import STATS, RemoteChanged, RemoteError
from ffcv_imagenet.remote_cache import CacheSettings, NodeCache, local_view
from ffcv_imagenet.checkpointing import FINAL_WEIGHTS


def read_every_page(stand_in: str, settings: CacheSettings, out_pages: list | None = None) -> NodeCache:
    cache = NodeCache.for_stand_in(stand_in, settings)
    buffer = np.zeros(cache.page_size, dtype=np.uint8)
    for page in range(-(-cache.remote.size // cache.page_size)):
        cache.read_into(page, buffer, lambda name: float("inf"))
        if out_pages is not None:
            out_pages.append(buffer[:cache.page_bytes(page)].copy())
    return cache


def test_pages_read_from_the_store_are_the_file_s_bytes(urls, paged_betons, tmp_path: Path) -> None:
    settings = CacheSettings(str(tmp_path), gib=1.0, requests=2)
    stand_in = local_view(urls["train"], settings)
    pages: list[np.ndarray] = []
    read_every_page(stand_in, settings, pages)
    assert np.concatenate(pages).tobytes() == paged_betons["train"].read_bytes()
    assert Path(stand_in + ".remote.json").is_file()
    assert local_view(urls["train"], settings) == stand_in  # found again by its ETag


@pytest.mark.parametrize("url, says", [
    ("s3://no-such-bucket-here/demo/train.beton", "no such object (or no such bucket 'no-such-bucket-here')"),
    (f"s3://{BUCKET}/demo/missing.beton", "no such object"),
])
def test_missing_bucket_or_key_is_one_line(urls, tmp_path: Path, url: str, says: str) -> None:
    with pytest.raises(RemoteError) as caught:
        local_view(url, CacheSettings(str(tmp_path)))
    assert says in str(caught.value) and url in str(caught.value) and "\n" not in str(caught.value)


def test_bad_credentials_are_one_line_naming_what_to_set(urls, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(RemoteError) as caught:
        local_view(urls["train"], CacheSettings(str(tmp_path)))
    message = str(caught.value)
    assert "access denied" in message and "AWS_SECRET_ACCESS_KEY" in message and "\n" not in message


def test_an_object_replaced_during_a_run_is_refused(s3, paged_betons, tmp_path: Path) -> None:
    client = s3.client()
    key = "replaced/train.beton"
    client.upload_file(str(paged_betons["train"]), BUCKET, key)
    settings = CacheSettings(str(tmp_path), gib=1.0, requests=2)
    stand_in = local_view(f"s3://{BUCKET}/{key}", settings)
    cache = NodeCache.for_stand_in(stand_in, settings)
    buffer = np.zeros(cache.page_size, dtype=np.uint8)
    cache.read_into(0, buffer, lambda name: float("inf"))
    client.put_object(Bucket=BUCKET, Key=key, Body=paged_betons["train"].read_bytes()[::-1])
    with pytest.raises(RemoteChanged) as caught:
        cache.read_into(1, buffer, lambda name: float("inf"))
    assert "replaced during the run" in str(caught.value)
    assert not (cache.folder / cache.page_name(1)).exists()  # nothing kept of the new version


def test_the_cache_stays_within_its_bound(urls, paged_betons, tmp_path: Path) -> None:
    pages = pages_of(paged_betons["train"])
    requests = 1
    bound = (requests + 2) * PAGE  # the smallest bound allowed: fewer pages than the file has
    assert pages > requests + 2
    settings = CacheSettings(str(tmp_path), gib=bound / 2 ** 30, requests=requests)
    stand_in = local_view(urls["train"], settings)
    cache = NodeCache.for_stand_in(stand_in, settings)
    buffer = np.zeros(cache.page_size, dtype=np.uint8)
    for page in [*range(pages), *range(pages)]:
        cache.read_into(page, buffer, lambda name: float("inf"))
        assert cache.used_bytes() <= bound


def test_a_bound_larger_than_the_disk_is_one_line(urls, tmp_path: Path) -> None:
    settings = CacheSettings(str(tmp_path), gib=1e6)
    stand_in = local_view(urls["train"], settings)
    with pytest.raises(RemoteError, match="is more than the .* GiB free"):
        NodeCache.for_stand_in(stand_in, settings)


READ_EVERY_PAGE = """
import sys, numpy as np
from ffcv_imagenet.remote_cache import CacheSettings, NodeCache
cache = NodeCache.for_stand_in(sys.argv[1], CacheSettings(sys.argv[2], gib=1.0, requests=2))
buffer = np.zeros(cache.page_size, dtype=np.uint8)
for page in range(-(-cache.remote.size // cache.page_size)):
    cache.read_into(page, buffer, lambda name: float("inf"))
"""


def test_two_processes_on_one_node_fetch_each_page_once(s3, urls, paged_betons, tmp_path: Path) -> None:
    stand_in = local_view(urls["train"], CacheSettings(str(tmp_path), gib=1.0, requests=2))
    s3.reset_counts()
    ranks = [subprocess.Popen([sys.executable, "-c", READ_EVERY_PAGE, stand_in, str(tmp_path)], cwd=REPO)
             for _ in range(2)]
    assert [rank.wait(120) for rank in ranks] == [0, 0]
    assert s3.ranged_gets("demo/train.beton") == pages_of(paged_betons["train"])


def test_a_server_stopped_and_restarted_is_retried_and_the_read_finishes(s3, urls, paged_betons,
                                                                           tmp_path: Path) -> None:
    settings = CacheSettings(str(tmp_path), gib=1.0, requests=2)
    stand_in = local_view(urls["train"], settings)
    retries = STATS.retries
    s3.stop()
    restart = threading.Timer(1.5, s3.start)
    restart.start()
    pages: list[np.ndarray] = []
    read_every_page(stand_in, settings, pages)
    restart.join()
    assert STATS.retries > retries
    assert np.concatenate(pages).tobytes() == paged_betons["train"].read_bytes()


def remote_run_args(betons: dict, folder: Path, cache: Path) -> list[str]:
    """Two epochs, quasi_random through FFCV's process cache; a 32 MiB node cache: four of the val file's 8 MiB pages."""
    return tiny_overrides(betons, folder, **{"training.epochs": 2, "resolution.fixres_epochs": 0,
                                             "data.order": "quasi_random", "data.in_memory": False,
                                             "data.cache_mib": 8, "data.remote_cache_dir": cache,
                                             "data.remote_cache_gib": 0.03125, "data.remote_requests": 2})


def outcomes(folder: Path) -> list[tuple]:
    return [(r["epoch"], r["steps"], r["train_loss"], r["val_top1"], r["val_loss"]) for r in epoch_records(folder)]


@pytest.mark.slow
def test_two_epochs_from_s3_urls_stopped_by_sigterm_and_resumed_equal_the_run_from_local_files(
        urls, paged_betons, tmp_path: Path) -> None:
    """Same samples, order and weights on CPU: an uninterrupted run from local files against a run
    from s3:// URLs stopped inside epoch 1 and resumed (3 runs, where 4 would test each claim alone)."""
    local = run(train_command(remote_run_args(paged_betons, tmp_path / "local", tmp_path / "unused")))
    assert local.returncode == 0, explain(local)
    assert not (tmp_path / "unused").exists()  # local files never touch the remote cache
    args = remote_run_args(urls, tmp_path / "s3", tmp_path / "cache")
    interrupted = interrupt_after_epochs(train_command(args), tmp_path / "s3")  # SIGTERM inside epoch 1
    assert interrupted.returncode == EXIT_PREEMPTED, explain(interrupted)
    assert outcomes(tmp_path / "s3") == outcomes(tmp_path / "local")[:1]  # epoch 0, uninterrupted, from s3://
    fetched = epoch_records(tmp_path / "s3")[0]["remote_fetched_mib"] * 2 ** 20
    assert paged_betons["train"].stat().st_size * 0.5 < fetched <= paged_betons["train"].stat().st_size
    assert "remote_fetched_mib" not in epoch_records(tmp_path / "local")[0]
    resumed = run(train_command(args))
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout, explain(resumed)
    # the resumed epoch's train_loss averages only its own steps: validation and weights are compared
    assert [o[3:] for o in outcomes(tmp_path / "s3")] == [o[3:] for o in outcomes(tmp_path / "local")]
    assert len(outcomes(tmp_path / "s3")) == 2
    straight = torch.load(tmp_path / "local" / FINAL_WEIGHTS, weights_only=True)
    again = torch.load(tmp_path / "s3" / FINAL_WEIGHTS, weights_only=True)
    for key, value in straight.items():
        assert torch.allclose(value.float(), again[key].float(), rtol=1e-4, atol=1e-5), key


def test_convert_to_an_s3_url_uploads_the_files_and_inspect_reads_it(s3, demo_root: Path, tmp_path: Path) -> None:
    url = f"s3://{BUCKET}/converted/val.beton"
    write = [sys.executable, str(REPO / "write_datasets.py")]
    cache = {"XDG_CACHE_HOME": str(tmp_path)}
    converted = run([*write, "convert", str(demo_root / "val"), url, "--workers", "1"], extra_env=cache)
    assert converted.returncode == 0, explain(converted)
    assert f"to {url}" in converted.stdout
    client = s3.client()  # (moto's signature check refuses authenticated LIST requests: HEAD each)
    sizes = [client.head_object(Bucket=BUCKET, Key=f"converted/val.beton{suffix}")["ContentLength"]
             for suffix in ("", ".json", ".index")]
    assert all(size > 0 for size in sizes)
    assert not any((tmp_path / "ffcv_imagenet" / "remote" / "staging").iterdir())  # staging removed
    inspected = run([*write, "inspect", url], extra_env=cache)
    assert inspected.returncode == 0, explain(inspected)
    assert "42 records" in inspected.stdout and "names from val.beton.json" in inspected.stdout
    # the JPEG records' headers are read from the object, not from the stand-in's empty pages
    assert "), chroma: 4:2:0" in inspected.stdout and "no readable header" not in inspected.stdout, inspected.stdout


def test_a_remote_file_of_yuv420_records_is_inspected_in_a_fresh_process(s3, demo_root: Path, tmp_path: Path) -> None:
    """The stand-in is laid out from the object's header by beton_header, which knows our yuv420 field
    without importing it (FFCV's field table learns type id 89 only once yuv420_records is imported)."""
    url = f"s3://{BUCKET}/converted/val_yuv420.beton"
    write = [sys.executable, str(REPO / "write_datasets.py")]
    cache = {"XDG_CACHE_HOME": str(tmp_path)}
    converted = run([*write, "convert", str(demo_root / "val"), url, "--workers", "1", "--raw-format", "yuv420"],
                    extra_env=cache)
    assert converted.returncode == 0, explain(converted)
    inspected = run([*write, "inspect", url], extra_env=cache)
    assert inspected.returncode == 0, explain(inspected)
    assert "42 records" in inspected.stdout and "(yuv420: " in inspected.stdout, inspected.stdout


def test_inspect_of_a_missing_object_is_one_line(s3, tmp_path: Path) -> None:
    url = f"s3://{BUCKET}/nothing/here.beton"
    result = run([sys.executable, str(REPO / "write_datasets.py"), "inspect", url],
                 extra_env={"XDG_CACHE_HOME": str(tmp_path)})
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1
    assert url in result.stderr and "no such object" in result.stderr


@pytest.mark.timeout(300)
def test_a_loader_whose_object_is_replaced_raises_the_one_line_error_instead_of_hanging(
        s3, paged_betons, tmp_path: Path) -> None:
    """The page readers' error crosses FFCV's epoch thread to the consumer (loaders.RankDeviceEpochIterator)."""
    from ffcv_imagenet.loaders import LoaderSettings, build_val_loader

    key = "replaced-in-loader/val.beton"
    s3.client().upload_file(str(paged_betons["val"]), BUCKET, key)
    settings = CacheSettings(str(tmp_path), gib=0.25, requests=2)
    stand_in = local_view(f"s3://{BUCKET}/{key}", settings)
    loader = build_val_loader(stand_in, LoaderSettings(batch_size=8, num_workers=1, device=torch.device("cpu")),
                              res=32, crop_ratio=0.875, num_samples=42, rank=0, world_size=1, remote=settings)
    s3.client().put_object(Bucket=BUCKET, Key=key, Body=b"another object")
    with pytest.raises(RemoteChanged, match="replaced during the run"):
        for _ in loader:
            pass
