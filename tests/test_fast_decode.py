"""The fast decoders (region decode at an IDCT scale; whole image at an IDCT scale) against FFCV's
full-size decode, on real JPEG files stored in real .betons.

The records are the JPEG files' own bytes (4:2:0, 4:4:4 and grayscale, odd sides), so the
decoder meets every subsampling; FFCV's writer would re-encode all of them as 4:2:0.
The output is small (RES) so that every IDCT scale (1/1 to 1/8) is exercised.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from ffcv.fields import IntField, RGBImageField
from ffcv.fields.basics import IntDecoder
from ffcv.fields.rgb_image import IMAGE_MODES, CenterCropRGBImageDecoder, get_random_crop
from ffcv.loader import Loader, OrderOption
from ffcv.writer import DatasetWriter
from PIL import Image

from ffcv_imagenet.decoders import (DCT_DENOMINATORS, FULL, METHODS, REGION, RRC_RATIO, RRC_SCALE, SCALED,
                                    CenterCropDecoder, CorruptRecordError, RandomResizedCropDecoder,
                                    dct_denominator, epoch_seed, sample_seed, scaled_down, scaled_span)
from ffcv_imagenet.convert.demo_data import make_image
from ffcv_imagenet.loaders import LoaderSettings, TrainLoader, build_val_loader
from ffcv_imagenet.schedule import RRC, EpochPlan

RES = 48
MIN_MEAN_PSNR_DB = 30.0  # the bound: the IDCT scale must not visibly soften the image
SUBSAMPLING = {"4:4:4": 0, "4:2:0": 2}  # PIL's codes
# (height, width, subsampling): several sizes, odd sides, every subsampling
FILES = [(480, 640, "4:2:0"), (333, 517, "4:4:4"), (257, 401, "gray"), (601, 451, "4:2:0"),
         (201, 299, "4:4:4"), (512, 384, "gray"), (375, 500, "4:2:0"), (419, 313, "4:4:4")]
COPIES = 6  # each file stored this often: different windows per record
BATCH = 8
JPEG_QUALITY = 90
GRAIN = 8.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def photo_jpeg(path: Path, height: int, width: int, kind: str, rng: np.random.Generator) -> None:
    """A photo-like scene with grain, saved by PIL as a JPEG of the given subsampling."""
    scene = np.asarray(make_image(int(rng.integers(8)), rng).resize((width, height), Image.BICUBIC), np.float32)
    pixels = np.clip(scene + rng.normal(0, GRAIN, scene.shape), 0, 255).astype(np.uint8)
    if kind == "gray":
        Image.fromarray(pixels).convert("L").save(path, quality=JPEG_QUALITY)
    else:
        Image.fromarray(pixels).save(path, quality=JPEG_QUALITY, subsampling=SUBSAMPLING[kind])


class JpegFiles:
    """(JPEG file bytes, label) per record, for FFCV's DatasetWriter."""

    def __init__(self, blobs: list[bytes]):
        self.blobs = blobs

    def __len__(self) -> int:
        return len(self.blobs)

    def __getitem__(self, index: int) -> tuple[bytes, int]:
        return self.blobs[index], index


def store_jpeg_bytes(destination: np.ndarray, blob: bytes, malloc) -> None:  # noqa: ANN001 - FFCV's protocol
    """RGBImageField's record layout, with the file's bytes as the JPEG (FFCV would re-encode them)."""
    if blob[:2] == b"\xff\xd8":
        width, height = Image.open(io.BytesIO(blob)).size
    else:  # the corrupt record: claim a plausible size, as a damaged file on disk would keep its metadata
        width, height = FILES[0][1], FILES[0][0]
    destination["mode"] = IMAGE_MODES["jpg"]
    destination["height"], destination["width"] = height, width
    data = np.frombuffer(blob, dtype=np.uint8)
    destination["data_ptr"], storage = malloc(data.nbytes)
    storage[:] = data


def write_beton(path: Path, blobs: list[bytes]) -> Path:
    field = RGBImageField(write_mode="jpg")
    field.encode = store_jpeg_bytes  # the writer calls field.encode(destination, sample, malloc)
    DatasetWriter(str(path), {"image": field, "label": IntField()}, num_workers=1).from_indexed_dataset(
        JpegFiles(blobs))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    paths = []
    for k, (height, width, kind) in enumerate(FILES):
        paths.append(folder / f"{k}_{kind.replace(':', '')}.jpg")
        photo_jpeg(paths[-1], height, width, kind, rng)
    return paths


@pytest.fixture(scope="module")
def beton(files: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    blobs = [path.read_bytes() for path in files] * COPIES
    return write_beton(tmp_path_factory.mktemp("beton") / "jpegs.beton", blobs)


def run_loader(path: Path, decoder, workers: int = 1, epoch: int = 0) -> np.ndarray:  # noqa: ANN001
    """Every record once, in file order, as (N, RES, RES, 3) uint8."""
    if hasattr(decoder, "set_epoch"):
        decoder.set_epoch(0, epoch)
    loader = Loader(str(path), batch_size=BATCH, num_workers=workers, order=OrderOption.SEQUENTIAL,
                    pipelines={"image": [decoder], "label": [IntDecoder()]})
    return np.concatenate([np.array(images) for images, _ in loader])


@pytest.fixture(scope="module")
def rrc_outputs(beton: Path) -> dict[str, np.ndarray]:
    outputs = {method: run_loader(beton, RandomResizedCropDecoder((RES, RES), method=method), workers=2)
               for method in METHODS}
    outputs["region_1_worker"] = run_loader(beton, RandomResizedCropDecoder((RES, RES), method=REGION), workers=1)
    return outputs


def test_scale_choice_and_mapping() -> None:
    assert dct_denominator(100, 100, 48, 48) == 2 and dct_denominator(384, 400, 48, 48) == 8
    assert dct_denominator(200, 95, 48, 48) == 1 and dct_denominator(47, 300, 48, 48) == 1
    rng = np.random.default_rng(1)
    for _ in range(2000):
        height, width = (int(v) for v in rng.integers(RES, 900, size=2))
        crop = int(rng.integers(1, min(height, width) + 1))
        start = int(rng.integers(0, height - crop + 1))
        denom = dct_denominator(crop, crop, RES, RES)
        assert denom == 1 or (crop >= RES * denom and (denom == max(DCT_DENOMINATORS) or crop < 2 * RES * denom))
        limit = scaled_down(height, denom)
        begin, end = scaled_span(start, crop, denom, limit)
        # inside the scaled image, and within half a scaled pixel of the exact window
        assert 0 <= begin < end <= limit
        assert abs(begin - start / denom) <= 0.5 and abs(end - (start + crop) / denom) <= 0.5 + (denom > 1)


def psnr_by_kind(candidate: np.ndarray, reference: np.ndarray) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Mean PSNR per subsampling over the records that differ; per-record PSNR; which records differ."""
    kinds = np.array([FILES[i % len(FILES)][2] for i in range(len(candidate))])
    differ = np.array([not np.array_equal(a, b) for a, b in zip(candidate, reference)])
    scores = np.array([psnr(a, b) for a, b in zip(candidate, reference)])
    means = {kind: float(np.mean(scores[differ & (kinds == kind)])) for kind in ("4:2:0", "4:4:4", "gray")}
    for kind in means:
        assert (differ & (kinds == kind)).sum() >= 3, kind  # every subsampling met a reduced IDCT scale
    return means, scores, differ


@pytest.mark.parametrize("method", [SCALED, REGION])
def test_same_windows_as_full_decode_within_psnr(method: str, rrc_outputs: dict[str, np.ndarray]) -> None:
    fast, full = rrc_outputs[method], rrc_outputs[FULL]
    assert fast.shape == full.shape == (len(FILES) * COPIES, RES, RES, 3) and fast.dtype == np.uint8
    means, scores, differ = psnr_by_kind(fast, full)
    print(f"{method} vs full-size decode, same windows: {differ.sum()} of {len(fast)} records differ; "
          f"mean PSNR dB { {kind: round(mean, 1) for kind, mean in means.items()} }, min {scores.min():.1f}")
    for kind, mean in means.items():
        assert mean >= MIN_MEAN_PSNR_DB, (kind, mean)
    # the same seeded window and flip per record: a different window would score far lower
    assert scores.min() >= MIN_MEAN_PSNR_DB - 8, scores.round(1)


def test_seeded_windows_follow_the_stock_distribution() -> None:
    """Reseeding per sample (ours) draws the windows stock FFCV draws from one running generator."""
    height, width, draws = 350, 400, 4000
    args = (height, width, np.array(RRC_SCALE), np.array(RRC_RATIO))
    np.random.seed(0)
    stock = np.array([get_random_crop(*args) for _ in range(draws)], dtype=float)
    seeded = []
    for sample in range(draws):
        np.random.seed(sample_seed(epoch_seed(0, 3), sample))
        seeded.append(get_random_crop(*args))
    ours = np.array(seeded, dtype=float)
    for name, column in (("area", lambda w: w[:, 2] * w[:, 3] / (height * width)),
                         ("log aspect", lambda w: np.log(w[:, 3] / w[:, 2])),
                         ("centre row", lambda w: (w[:, 0] + w[:, 2] / 2) / height)):
        a, b = column(stock), column(ours)
        assert abs(a.mean() - b.mean()) < 4 * np.hypot(a.std(), b.std()) / np.sqrt(draws), name
        assert abs(a.std() - b.std()) < 0.1 * a.std(), name


def test_grayscale_records_come_out_gray(rrc_outputs: dict[str, np.ndarray]) -> None:
    gray = [i for i in range(len(rrc_outputs[REGION])) if FILES[i % len(FILES)][2] == "gray"]
    images = rrc_outputs[REGION][gray].astype(int)
    assert np.abs(images[..., 0] - images[..., 1]).max() <= 1 and np.abs(images[..., 1] - images[..., 2]).max() <= 1


def test_same_output_for_any_worker_count(rrc_outputs: dict[str, np.ndarray]) -> None:
    assert np.array_equal(rrc_outputs[REGION], rrc_outputs["region_1_worker"])


def test_windows_vary_across_copies_and_epochs(rrc_outputs: dict[str, np.ndarray]) -> None:
    copies = rrc_outputs[REGION].reshape(COPIES, len(FILES), RES, RES, 3)
    for index in range(len(FILES)):
        # six records of one file, six different windows
        assert len({copies[c, index].tobytes() for c in range(COPIES)}) == COPIES
    assert epoch_seed(0, 0) != epoch_seed(0, 1)


def test_center_crop_matches_ffcv_stock(beton: Path) -> None:
    stock = run_loader(beton, CenterCropRGBImageDecoder((RES, RES), ratio=224 / 256))
    full = run_loader(beton, CenterCropDecoder((RES, RES), method=FULL))
    fast = run_loader(beton, CenterCropDecoder((RES, RES)))
    assert np.array_equal(full, stock)  # same window, same decode: identical
    means, scores, _ = psnr_by_kind(fast, stock)
    print(f"region center crop vs FFCV stock: mean PSNR dB { {k: round(m, 1) for k, m in means.items()} }, "
          f"min {scores.min():.1f}")
    assert min(means.values()) >= MIN_MEAN_PSNR_DB


@pytest.fixture(scope="module")
def raw_beton(files: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same photos stored raw (RGB pixels), as proportion mode stores half of a dataset."""
    images = [np.asarray(Image.open(path).convert("RGB")) for path in files] * 2
    path = tmp_path_factory.mktemp("raw") / "raw.beton"
    DatasetWriter(str(path), {"image": RGBImageField(write_mode="raw"), "label": IntField()},
                  num_workers=1).from_indexed_dataset([(image, k) for k, image in enumerate(images)])
    return path


def test_raw_records_within_psnr_of_ffcv_resize(raw_beton: Path) -> None:
    """Raw records skip decoding; their windows (up to 12x the output here) take the box + linear resize."""
    region = run_loader(raw_beton, RandomResizedCropDecoder((RES, RES), method=REGION), workers=2)
    full = run_loader(raw_beton, RandomResizedCropDecoder((RES, RES), method=FULL), workers=2)
    scores = np.array([psnr(a, b) for a, b in zip(region, full)])
    print(f"raw records, region vs FFCV resize: mean PSNR {scores.mean():.1f} dB, min {scores.min():.1f}")
    assert scores.mean() >= MIN_MEAN_PSNR_DB and scores.min() >= MIN_MEAN_PSNR_DB - 8


@pytest.fixture(scope="module")
def corrupt_beton(files: list[Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int]]:
    """Good records, one JPEG cut short, one record that is not a JPEG at all."""
    blobs = [path.read_bytes() for path in files] * 2
    truncated, garbage = 5, 11
    # cut inside the first rows: every window lies partly below the cut, so even a region decode meets it
    blobs[truncated] = blobs[truncated][:len(blobs[truncated]) // 20]
    blobs[garbage] = bytes(np.random.default_rng(2).integers(0, 256, 4000, dtype=np.uint8))
    return write_beton(tmp_path_factory.mktemp("corrupt") / "corrupt.beton", blobs), [truncated, garbage]


def test_corrupt_record_is_a_clear_error_naming_it(corrupt_beton: tuple[Path, list[int]]) -> None:
    path, bad = corrupt_beton
    settings = LoaderSettings(batch_size=4, num_workers=2, device=torch.device("cpu"), channels_last=False)
    train = TrainLoader(path, settings, order="random", in_memory=True, distributed=False, seed=0,
                        fixres_crop_ratio=224 / 256)
    with pytest.raises(CorruptRecordError, match=str(path)) as error:
        for _ in train.epoch(EpochPlan(epoch=0, res=RES, crop_mode=RRC)):
            pass
    assert any(f"{sample}" in str(error.value).split(":")[1] for sample in bad), str(error.value)
    # the val loader reports every bad record of the pass, in file order
    val = build_val_loader(path, settings, res=RES, crop_ratio=224 / 256, num_samples=2 * len(FILES),
                           rank=0, world_size=1)
    with pytest.raises(CorruptRecordError, match=f"sample\\(s\\) {bad[0]}"):
        for _ in val:
            pass


TEXTURE_RES = 160  # RRC160: the main phase's resolution, where windows are 1-3x the output
TEXTURE_SIZE = (333, 500)  # ImageNet's commonest stored size
TEXTURE_COPIES = 8
MIN_TEXTURE_PSNR_DB = 33.0  # pooled; measured 35 dB; the earlier bilinear step after the box average gave 27 dB


def fine_texture(height: int, width: int, seed: int) -> np.ndarray:
    """Photo-like fine detail, what fur, foliage and fabric put in a picture: oriented stripes of 2.2-4 px
    period and a 2-px checkerboard, over a smooth colour field."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.asarray(Image.fromarray(rng.integers(60, 200, (3, 3, 3), dtype=np.uint8)).resize(
        (width, height), Image.BICUBIC), dtype=np.float32)
    for _ in range(3):
        angle, period = rng.uniform(0, np.pi), rng.uniform(2.2, 4.0)
        image += 25 * np.sin(2 * np.pi * (np.cos(angle) * cols + np.sin(angle) * rows) / period)[..., None]
    image += 20 * (((rows // 2 + cols // 2) % 2) * 2 - 1)[..., None]
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def texture_betons(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("texture")
    images = [fine_texture(*TEXTURE_SIZE, seed=k) for k in range(2)] * TEXTURE_COPIES
    raw = folder / "raw.beton"
    DatasetWriter(str(raw), {"image": RGBImageField(write_mode="raw"), "label": IntField()},
                  num_workers=1).from_indexed_dataset([(image, k) for k, image in enumerate(images)])
    blobs = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=95, subsampling=0)
        blobs.append(buffer.getvalue())
    return {"raw": raw, "jpeg": write_beton(folder / "jpeg.beton", blobs)}


@pytest.mark.parametrize("kind", ["raw", "jpeg"])
def test_fine_texture_keeps_close_to_ffcvs_area_resize(texture_betons: dict[str, Path], kind: str) -> None:
    """RRC160 of fine texture: the fast resize filters like FFCV's INTER_AREA instead of aliasing it."""
    fast = run_loader(texture_betons[kind], RandomResizedCropDecoder((TEXTURE_RES, TEXTURE_RES), flip=False,
                                                                     method=REGION))
    full = run_loader(texture_betons[kind], RandomResizedCropDecoder((TEXTURE_RES, TEXTURE_RES), flip=False,
                                                                     method=FULL))
    pooled = psnr(fast, full)
    print(f"fine texture, {kind} records, RRC{TEXTURE_RES} fast vs FFCV path: pooled PSNR {pooled:.1f} dB")
    assert pooled >= MIN_TEXTURE_PSNR_DB
