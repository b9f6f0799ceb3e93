"""The object-store tests' shared fixtures: a local S3 server (moto's server mode, tests/s3_server.py)
reached over HTTP through obstore as a real bucket is, and the demo sets uploaded to it. Module-scoped:
a test file imports them (``from remote_fixtures import s3, urls ...``) and gets one server and one
upload for its tests."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from s3_server import BUCKET, S3Server

PAGE = 2 ** 21  # FFCV's smallest page: the test file has several


@pytest.fixture(scope="module")
def s3() -> S3Server:
    server = S3Server()
    server.start()
    server.setup()
    saved = {key: os.environ.get(key) for key in server.environment()}
    os.environ.update(server.environment())  # this process and the runs it starts
    yield server
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()


@pytest.fixture(scope="module")
def paged_betons(demo_root: Path, demo_betons: dict[str, Path], tmp_path_factory) -> dict[str, Path]:
    """The demo train set stored raw in 2 MiB pages (several pages), and the demo val set."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter
    from torchvision.datasets import ImageFolder

    train = tmp_path_factory.mktemp("paged") / "train.beton"
    fields = {"image": RGBImageField(write_mode="raw", max_resolution=160), "label": IntField()}
    DatasetWriter(str(train), fields, page_size=PAGE, num_workers=2).from_indexed_dataset(
        ImageFolder(str(demo_root / "train")))
    return {"train": train, "val": demo_betons["val"]}


@pytest.fixture(scope="module")
def urls(s3: S3Server, paged_betons: dict[str, Path]) -> dict[str, str]:
    client = s3.client()
    for name, path in paged_betons.items():
        for file in [path, *path.parent.glob(path.name + ".*")]:
            client.upload_file(str(file), BUCKET, f"demo/{file.name}")
    return {name: f"s3://{BUCKET}/demo/{path.name}" for name, path in paged_betons.items()}


def pages_of(path: Path) -> int:
    return -(-path.stat().st_size // PAGE)
