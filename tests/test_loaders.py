"""The training loader across resolution and crop-mode switches: real .beton, real FFCV Loader."""
from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest
import torch
from ffcv.loader.epoch_iterator import EpochIterator
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.state import State
from ffcv.transforms import ToDevice

from ffcv_imagenet.decoders import _SCRATCH
from ffcv_imagenet.convert.inspection import open_beton
from ffcv_imagenet.loaders import (LoaderSettings, TrainLoader, _image_tail, _label_pipeline, arrival_events, in_layout,
                                   normalize, release_after_use, workers_per_rank)
from ffcv_imagenet.schedule import FIXRES, RRC, EpochPlan
from helpers import REPO, cpu_env

EPOCHS = 20
WARM_EPOCHS = 4  # both pipelines compiled and each resolution seen twice
MAX_GROWTH_MIB = 16  # one 64 px batch is 0.2 MiB: growth per epoch would show as several MiB


@pytest.fixture(scope="module")
def train_loader(demo_betons: dict) -> TrainLoader:
    settings = LoaderSettings(batch_size=16, num_workers=2, device=torch.device("cpu"), channels_last=True)
    return TrainLoader(demo_betons["train"], settings, order="random", in_memory=True, distributed=False, seed=0,
                       fixres_crop_ratio=224 / 256)


def alternating_plan(epoch: int) -> EpochPlan:
    """32 px rrc, 64 px rrc, 64 px fixres, 48 px fixres, ...: every kind of switch, over and over."""
    return [EpochPlan(epoch, 32, RRC), EpochPlan(epoch, 64, RRC), EpochPlan(epoch, 64, FIXRES),
            EpochPlan(epoch, 48, FIXRES)][epoch % 4]


def test_each_epoch_delivers_its_plan(train_loader: TrainLoader) -> None:
    for epoch in range(4):
        plan = alternating_plan(epoch)
        batches = list(train_loader.epoch(plan))
        assert len(batches) == len(train_loader) == 144 // 16
        for images, labels in batches:
            assert images.shape == (16, 3, plan.res, plan.res) and images.dtype == torch.uint8
            assert images.is_contiguous(memory_format=torch.channels_last)
            assert labels.shape == (16,) and labels.dtype == torch.int64
        inputs = normalize(batches[0][0])
        assert inputs.is_contiguous(memory_format=torch.channels_last) and inputs.dtype == torch.float32


def test_host_memory_stays_flat_over_alternating_epochs(train_loader: TrainLoader) -> None:
    process = psutil.Process()
    resident = []
    for epoch in range(EPOCHS):
        for images, _ in train_loader.epoch(alternating_plan(epoch)):
            normalize(images).sum()
        gc.collect()
        resident.append(process.memory_info().rss / 2 ** 20)
    growth = resident[-1] - resident[WARM_EPOCHS - 1]
    print("RSS MiB per epoch:", [round(r, 1) for r in resident])
    assert growth < MAX_GROWTH_MIB, resident


def test_skipping_resumes_mid_epoch_on_the_same_batches(train_loader: TrainLoader) -> None:
    plan = EpochPlan(7, 48, RRC)
    full = [images.clone() for images, _ in train_loader.epoch(plan)]
    rest = [images.clone() for images, _ in train_loader.epoch(plan, start_sample=3 * 16)]  # 3 batches of 16
    assert len(rest) == len(full) - 3
    assert all(torch.equal(a, b) for a, b in zip(full[3:], rest))
    assert list(train_loader.epoch(plan, start_sample=144 - 15)) == []  # less than one batch left: nothing


def decode_threads() -> set[EpochIterator]:
    return {thread for thread in threading.enumerate() if isinstance(thread, EpochIterator) and thread.is_alive()}


@pytest.mark.parametrize("batches_left", [9, 4])
def test_an_epoch_left_early_stops_ffcv_decode_thread_before_freeing_its_buffers(train_loader: TrainLoader,
                                                                                 batches_left: int) -> None:
    """9 batches left: the thread is mid-epoch, waiting to hand over a batch. 4: after the one read it
    has decoded the other 3 (its queue holds 3) and waits to hand over the end marker, which FFCV
    puts without a timeout. Either way it is gone once the epoch is closed."""
    before = decode_threads()
    epoch = train_loader.epoch(EpochPlan(3, 32, RRC), start_sample=144 - batches_left * 16)
    next(epoch)
    (thread,) = decode_threads() - before
    deadline = time.monotonic() + 120
    while not thread.output_queue.full() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert thread.output_queue.full()  # the reader is behind: the thread waits to hand over
    epoch.close()
    assert not thread.is_alive()


@pytest.mark.parametrize("device", [torch.device("cuda", 1), torch.device("cpu")])
def test_every_buffer_after_the_copy_is_on_the_training_device(device: torch.device) -> None:
    """Issue 17.1: FFCV's ToTorchImage(channels_last=False) asked for a buffer with no device (the host)
    after the copy to the GPU. FFCV's own declarations, walked as its graph does, with no GPU needed."""
    state = State(jit_mode=True, device=torch.device("cpu"), shape=(64, 64, 3), dtype=np.dtype("uint8"))
    copied = False
    for operation in _image_tail(device):
        state, allocation = operation.declare_state_and_memory(state)
        copied = copied or isinstance(operation, ToDevice)
        if copied and isinstance(allocation, AllocationQuery):
            assert torch.device(allocation.device) == device, operation
    assert state.device == device and state.shape == (3, 64, 64)
    # Issue 17.9: batches used on the host are not copied from host to host.
    assert copied == (device.type == "cuda")
    assert any(isinstance(op, ToDevice) for op in _label_pipeline(device)) == (device.type == "cuda")


def test_nchw_layout_is_made_where_the_batch_is() -> None:
    view = torch.arange(2 * 5 * 5 * 3, dtype=torch.uint8).view(2, 5, 5, 3).permute(0, 3, 1, 2)  # FFCV's output
    assert view.is_contiguous(memory_format=torch.channels_last)
    assert in_layout(view, channels_last=True) is view
    nchw = in_layout(view, channels_last=False)
    assert nchw.is_contiguous() and torch.equal(nchw, view) and nchw.device == view.device


def test_host_buffers_are_five_slots_of_decode_output_and_label(train_loader: TrainLoader,
                                                               demo_betons: dict) -> None:
    """Issue 17.8: what FFCV allocates on the host (and pins on a GPU machine) per epoch, by hand:
    (batches_ahead 3 + 2) slots x batch x (output + one int64 label). The decoder's full-size scratch
    is not among them (issue 26.13): one batch of it, in plain memory, beside FFCV's slots."""
    reader = open_beton(demo_betons["train"])
    images = reader.metadata["f0"]
    max_pixels = int(images["height"].max()) * int(images["width"].max())
    batch, slots = 16, 3 + 2
    for res in (32, 64):
        expected = slots * batch * (res * res * 3 + np.dtype("int64").itemsize)
        assert train_loader.host_buffer_bytes(EpochPlan(0, res, RRC)) == expected
    batches = train_loader.epoch(EpochPlan(0, 32, RRC))
    next(batches)
    scratch = _SCRATCH[train_loader._decoder.key]  # filled by the decode of that batch
    assert scratch.shape == (batch, max_pixels * 3)
    batches.close()


@pytest.mark.parametrize("requested, cores, ranks, expected", [
    (0, 64, 8, 7), (0, 16, 1, 15), (0, 2, 1, 1), (0, 4, 8, 1), (5, 64, 8, 5)])
def test_workers_leave_one_core_per_rank(requested: int, cores: int, ranks: int, expected: int) -> None:
    assert workers_per_rank(requested, cores=cores, ranks=ranks) == expected


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to restrict the affinity to one")
def test_workers_count_the_job_cpus_not_the_machine() -> None:
    """Issue 17.6: a job given one core of the machine (taskset, SLURM, a container) gets one worker."""
    core = min(os.sched_getaffinity(0))
    code = (f"import os; os.sched_setaffinity(0, {{{core}}}); "
            "from ffcv_imagenet.distributed import job_cores; from ffcv_imagenet.loaders import workers_per_rank; "
            "print(job_cores(), workers_per_rank(0), os.cpu_count())")
    env = {**cpu_env(), "LOCAL_WORLD_SIZE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    job, workers, machine = map(int, result.stdout.split())
    assert (job, workers) == (1, 1) and machine >= 2


class FakeEvent:
    """Stands in for a CUDA event: notes when it is recorded and waited on, in one shared journal."""

    def __init__(self, journal: list[str]) -> None:
        self.journal = journal
        self.number = sum(entry.startswith("record") for entry in journal)

    def record(self) -> None:
        self.journal.append(f"record {self.number}")

    def synchronize(self) -> None:
        self.journal.append(f"wait {self.number}")


def test_each_batch_is_waited_for_before_the_next_is_taken() -> None:
    """Issue 26.12: an event recorded as each batch arrives, waited on when its use ends, before FFCV
    is asked for the next batch (which lets it refill an earlier slot); also when the consumer stops early."""
    journal: list[str] = []

    def source():
        for number in range(3):
            journal.append(f"take {number}")
            yield number

    for batch in release_after_use(source(), lambda: FakeEvent(journal)):
        journal.append(f"use {batch}")
    assert journal == ["take 0", "record 0", "use 0", "wait 0", "take 1", "record 1", "use 1", "wait 1",
                       "take 2", "record 2", "use 2", "wait 2"]
    journal.clear()
    batches = release_after_use(source(), lambda: FakeEvent(journal))
    next(batches)
    batches.close()  # a stop signal, an error: the batch in use is waited for before its buffers go
    assert journal == ["take 0", "record 0", "wait 0"]
    assert list(release_after_use(iter([1, 2]), arrival_events(torch.device("cpu")))) == [1, 2]  # no events
    assert arrival_events(torch.device("cuda", 0)) is torch.cuda.Event
