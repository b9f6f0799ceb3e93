"""Two ranks of one node, as users launch them (torchrun, gloo, CPU), training one epoch of the demo
recipe from s3:// URLs: the store sees each page of each file requested once (issue 28: each page is
downloaded once per node, not once per rank), counted per byte range at the local S3 server."""
from __future__ import annotations

from pathlib import Path

from ffcv.reader import Reader
from helpers import epoch_records, explain, run, tiny_overrides, torchrun_command
from remote_fixtures import paged_betons, s3, urls  # noqa: F401  (fixtures)


def page_ranges(beton: Path) -> set[str]:
    """The Range header of each page holding records of ``beton``: what a node must fetch, once."""
    reader = Reader(str(beton))
    page_size, size = int(reader.page_size), beton.stat().st_size
    pages = {int(ptr) // page_size for ptr in reader.alloc_table["ptr"]}
    return {f"bytes={page * page_size}-{min(size, (page + 1) * page_size) - 1}" for page in pages}


def test_two_ranks_on_one_node_fetch_each_page_once(s3, urls, paged_betons, tmp_path: Path) -> None:
    args = tiny_overrides(urls, tmp_path / "run", **{
        "training.epochs": 1, "resolution.fixres_epochs": 0, "validation.resolutions": "[]",
        "data.order": "quasi_random", "data.in_memory": False, "data.cache_mib": 8,
        "data.remote_cache_dir": tmp_path / "cache", "data.remote_cache_gib": 0.25, "data.remote_requests": 2})
    s3.reset_counts()
    result = run(torchrun_command(args, nproc=2))
    assert result.returncode == 0, explain(result)
    assert "2 rank(s)" in result.stdout and epoch_records(tmp_path / "run")[0]["val_count"] == 42
    for name in ("train", "val"):
        gets = s3.gets_by_range(f"demo/{paged_betons[name].name}")
        pages = page_ranges(paged_betons[name])
        assert pages <= set(gets), f"{name}: pages never fetched: {sorted(pages - set(gets))}"
        # every page once, and the stand-in's header and tables once too: once per node, not per rank
        assert {byte_range: n for byte_range, n in gets.items() if n != 1} == {}, name
        assert len(pages) > (1 if name == "train" else 0)
