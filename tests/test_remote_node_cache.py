"""The node cache: its settings come from each reader's own recipe or command, never from the node's
shared marker file (an ``inspect`` of the same object in the same cache folder between a training
run's preflight and its loader build leaves the training loader's bound as the recipe set it);
inspect's record reads need no page cache; a full cache disk is one line; a stand-in has its file's identity."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, explain, run, tiny_overrides
from remote_fixtures import PAGE, paged_betons, s3, urls  # noqa: F401  (fixtures)

from ffcv_imagenet.loaders import LoaderSettings, build_train_loader
from ffcv_imagenet.preflight import check_datasets
from ffcv_imagenet.recipes import load_config
from ffcv_imagenet.remote_cache import GIB, CacheSettings, marker_path
from ffcv_imagenet.schedule import full_schedule


def test_an_inspect_between_preflight_and_the_loader_build_leaves_the_training_bound(urls, tmp_path: Path) -> None:
    cache_home = tmp_path / "home-cache"
    folder = cache_home / "ffcv_imagenet" / "remote"  # inspect's cache folder under this XDG_CACHE_HOME
    bound_gib = 8 * PAGE / GIB  # the recipe's: 8 pages, where inspect uses 1 GiB
    config = load_config(REPO / "rcfg" / "demo.yaml", tiny_overrides(urls, tmp_path / "run", **{
        "data.order": "quasi_random", "data.in_memory": False, "data.remote_cache_dir": folder,
        "data.remote_cache_gib": bound_gib, "data.remote_requests": 2}))
    datasets = check_datasets(config)  # preflight: makes the stand-ins in the recipe's cache folder
    inspected = run([sys.executable, str(REPO / "write_datasets.py"), "inspect", urls["train"]],
                    extra_env={"XDG_CACHE_HOME": str(cache_home)})
    assert inspected.returncode == 0, explain(inspected)
    assert str(datasets.train_path) in inspected.stdout  # inspect read the same stand-in and its marker
    assert "settings" not in marker_path(datasets.train_path).read_text()  # the marker describes the object only

    loader = build_train_loader(config, LoaderSettings(batch_size=8, num_workers=1, device=torch.device("cpu")),
                                datasets, distributed=False)
    loader.prepare(full_schedule(config.resolution, config.training.epochs)[0])  # builds FFCV's loader
    assert loader.node_cache is not None
    assert loader.node_cache.settings == CacheSettings(str(folder), bound_gib, 2)
    assert loader.node_cache.settings.limit_bytes == 8 * PAGE


def test_records_of_a_stand_in_are_read_by_ranged_gets_without_a_page_cache(s3, urls, paged_betons,
                                                                            tmp_path: Path) -> None:
    """inspect's record reads (``stored_record_bytes``) open the object once and build no node cache
    (no page folder, no scan of it): one ranged GET per record, the file's own bytes."""
    from ffcv_imagenet.beton_format import open_beton, record_bytes
    from ffcv_imagenet.remote_cache import local_view, stand_in_object, stored_record_bytes

    settings = CacheSettings(str(tmp_path), gib=1.0, requests=2)
    stand_in = local_view(urls["train"], settings)
    remote, local = open_beton(stand_in), open_beton(paged_betons["train"])
    s3.reset_counts()
    for index in (0, 70, 143):
        assert np.array_equal(stored_record_bytes(remote, index), record_bytes(local, index))
    assert s3.ranged_gets("demo/train.beton") == 3
    assert stand_in_object(stand_in) is stand_in_object(stand_in)  # opened once
    assert not (tmp_path / "pages").exists()


def test_a_full_cache_disk_is_one_line_and_leaves_no_page(urls, tmp_path: Path) -> None:
    """A real ENOSPC from the kernel, without root or a small mount: the page's temporary file is a
    link to /dev/full, where every write fails with 'No space left on device'."""
    from ffcv_imagenet.remote import RemoteError
    from ffcv_imagenet.remote_cache import TEMP, NodeCache, local_view

    settings = CacheSettings(str(tmp_path), gib=1.0, requests=2)
    cache = NodeCache.for_stand_in(local_view(urls["train"], settings), settings)
    (cache.folder / (cache.page_name(0) + TEMP)).symlink_to("/dev/full")
    buffer = np.zeros(cache.page_size, dtype=np.uint8)
    with pytest.raises(RemoteError) as caught:
        cache.read_into(0, buffer, lambda name: float("inf"))
    message = str(caught.value)
    assert message.startswith(f"the remote cache's disk is full ({tmp_path})") and "\n" not in message
    assert "data.remote_cache_dir" in message and "data.remote_cache_gib" in message
    assert sorted(path.name for path in cache.folder.iterdir()) == []  # no page, claim or temporary left


def test_a_stand_in_has_the_identity_of_the_file_that_was_uploaded(urls, paged_betons, tmp_path: Path) -> None:
    """A checkpoint made on the local file resumes on its s3:// copy and back (dataset_identity)."""
    from ffcv_imagenet.dataset_identity import dataset_identity
    from ffcv_imagenet.remote_cache import local_view

    stand_in = local_view(urls["train"], CacheSettings(str(tmp_path), gib=1.0, requests=2))
    assert dataset_identity(stand_in) == dataset_identity(paged_betons["train"])
