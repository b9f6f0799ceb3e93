"""The node cache's settings come from each reader's own recipe or command, never from the node's
shared marker file: an ``inspect`` of the same object in the same cache folder between a training
run's preflight and its loader build leaves the training loader's bound as the recipe set it."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
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
