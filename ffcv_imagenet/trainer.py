"""The training run: recipe -> schedule -> loaders -> model -> loop -> logs and checkpoints.

``train(config)`` is the whole job; ``train_imagenet.py`` only parses the
command line and calls it. One process per GPU under torchrun (or one plain
process); every rank runs the same code, rank 0 alone writes files.

Per step, one small all-reduce carries (loss, stop request, checkpoint due)
between ranks: all ranks see the same loss, so they skip a non-finite step
together, and a SIGTERM delivered to any rank stops them all at the same step,
after a checkpoint. The loop reads it one update late (``QueuedUpdate``), so the
host never waits for the step it has just queued: with fused SGD on a GPU the
non-finite skip happens on the device (the fp16 scaler's check too), and no
step has a host-device synchronisation of its own. Other optimizers read the
loss before stepping (free on the CPU, where the results are unchanged).
A stop signal that arrives after an epoch's last update (during validation)
stops the run at the epoch's end, after its checkpoint.
"""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import psutil
import torch
from torch import nn
from tqdm import tqdm

from . import checkpointing, schedule
from .cli import EXIT_DIVERGED, EXIT_PREEMPTED
from .config import Config, ConfigError, to_dict
from .dataset_identity import check_same_train_dataset, dataset_identity
from .distributed import DistContext, all_reduce_sum, barrier, broadcast_object
from .evaluation import EvalResult, Evaluator, resolution_table
from .loaders import LoaderSettings, build_train_loader, host_buffer_bytes, normalize, workers_per_rank
from .losses import build_criterion
from .lr_schedule import lr_at, peak_lr
from .model import autocast_for, prepare_model, wrap_for_training
from .optimizers import apply_gradients, backbone_frozen, build_optimizer
from .preflight import Datasets, dataset_line, preflight
from .regularizers import BatchMixer, GroupRandAugment, WeightAverage, regularizer_summary, seed_step_draws
from .run_log import RunLog, SampleLog
from .step_flags import QueuedUpdate, StopRequest
from .tensorboard_log import TensorBoardLog

MIB = 2 ** 20


class TrainingStopped(Exception):
    """The run stopped early on purpose; ``exit_code`` says why (preempted or diverged)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


# ---------------------------------------------------------------- what the run reports
def memory_stats(device: torch.device) -> dict[str, float | None]:
    gpu_peak = torch.cuda.max_memory_allocated(device) / MIB if device.type == "cuda" else None
    return {"gpu_peak_mib": gpu_peak, "host_rss_mib": psutil.Process().memory_info().rss / MIB}


# ---------------------------------------------------------------- the run
class Trainer:
    def __init__(self, config: Config, ctx: DistContext, datasets: Datasets, resume_from: Path | None = None):
        self.config = config
        self.ctx = ctx
        self.datasets = datasets
        self.folder = Path(config.logging.folder)
        log_cfg = config.logging
        tensorboard = TensorBoardLog(self.folder, log_cfg.tensorboard_every) if log_cfg.tensorboard else None
        self.log = RunLog(self.folder, enabled=ctx.is_main, tensorboard=tensorboard)
        self.epochs = config.training.epochs
        self.plans = schedule.full_schedule(config.resolution, self.epochs)
        self.accumulate = config.training.accumulate  # micro-batches per optimizer update
        self.micro_batch = config.training.batch_size * ctx.world_size  # samples per micro-step, all ranks
        self.global_batch = self.micro_batch * self.accumulate  # samples per update: the LR and the schedule's unit
        self.stop = StopRequest()
        self.bad_steps = 0
        self.epoch = 0  # next epoch to run
        self.samples_in_epoch = 0  # global samples of self.epoch already trained (a mid-epoch checkpoint)
        self.best: dict[str, dict[str, float]] = {}  # "model" / "ema" -> {"epoch", "val_top1"} of its best so far

        torch.manual_seed(config.training.seed)  # the same initial weights on every rank
        self.model = prepare_model(config, ctx, len(datasets.classes))
        self.ema = WeightAverage(self.model, config.ema) if config.ema.decay > 0 else None
        self.mixer = BatchMixer(config.augment, num_classes=len(datasets.classes))
        self.randaugment = GroupRandAugment(config.augment)
        self.augment_on = True  # main phase; the FixRes phase turns batch augmentation off
        self.optimizer = build_optimizer(config, self.model)
        # A fused optimizer takes a skip flag on the device (torch's GradScaler protocol): no host read per step.
        self.skips_on_device = bool(self.optimizer.defaults.get("fused"))
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=config.training.precision == "fp16")
        self.criterion = build_criterion(config.training, ctx.device)
        self.train_model, self.ddp = wrap_for_training(self.model, ctx, config.training.compile)
        self.loader_settings = LoaderSettings(batch_size=config.training.batch_size,
                                              num_workers=workers_per_rank(config.data.num_workers),
                                              device=ctx.device, channels_last=config.training.channels_last)
        self.train_loader = build_train_loader(config, self.loader_settings, datasets, distributed=ctx.distributed)
        self.train_identity = dataset_identity(datasets.train_path)  # kept in checkpoints: a resume checks it
        self.checkpoints = checkpointing.CheckpointWriter()
        self.last_save = time.monotonic()
        self.evaluator = Evaluator(config, ctx, datasets.val_path, datasets.val_size, datasets.val_fields)
        if resume_from is not None:
            self._resume(resume_from)

    # ------------------------------------------------------------ checkpoints
    def _state(self) -> dict[str, Any]:
        return {"recipe": to_dict(self.config), "epoch": self.epoch, "samples_in_epoch": self.samples_in_epoch,
                "world_size": self.ctx.world_size, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "rng": checkpointing.rng_states(self.ctx.device), "best": self.best,
                "train_dataset": self.train_identity}

    def save(self, then: Callable[[], None] | None = None, background: bool = False,
             before: Sequence[checkpointing.Write] = ()) -> None:
        """Rank 0 copies the state to the host and writes ``before`` (best.pt and the best weights)
        then last.pt, one job; ``then`` runs once the files are in place (rank 0 only: only rank 0
        logs). ``background`` returns before the write ends (the training loop's choice: the next
        steps overlap it); otherwise the files exist on return."""
        if self.ctx.is_main:
            last = (checkpointing.last_checkpoint_path(self.folder), None)
            self.checkpoints.submit_job([*before, last], self._state(), then)
            if not background:
                self.checkpoints.wait()
        barrier(self.ctx)
        self.last_save = time.monotonic()

    def _resume(self, path: Path) -> None:
        state = checkpointing.load_checkpoint(path)
        checkpointing.check_resumable(state, self.config, path)
        check_same_train_dataset(state.get("train_dataset"), self.train_identity, self.config.data.train_dataset, path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        checkpointing.restore_rng_states(state["rng"], self.ctx.device)
        # A checkpoint from before sample positions (it has step_in_epoch) restarts its epoch: its order was another.
        self.epoch, self.samples_in_epoch = state["epoch"], state.get("samples_in_epoch", 0)
        self.best = state.get("best", {})  # absent from checkpoints older than best.pt
        self._say_resumed(path, saved_world_size=state["world_size"])

    def _say_resumed(self, path: Path, saved_world_size: int) -> None:
        """Where the run continues; with another rank count, what changes and what is left out."""
        size, position = int(self.datasets.train_size), self.samples_in_epoch
        # The epoch's global order does not depend on the rank count: it goes on from the same sample.
        left_out = (size - position) % self.global_batch
        note = ""
        if saved_world_size != self.ctx.world_size:
            note = (f" (saved with {saved_world_size} ranks, now {self.ctx.world_size}: global batch "
                    f"{self.global_batch} and the LR follow; this epoch's last {left_out} samples, less than "
                    "one global batch, are left out)")
        restarted = f" (torchrun restart {self.ctx.attempt})" if self.ctx.attempt else ""
        self.log.say(f"resumed from {path} at epoch {self.epoch}, sample {position} of {size}{note}{restarted}")
        self.log.record("event", event="resumed", checkpoint=str(path), epoch=self.epoch,
                        samples_in_epoch=position, saved_world_size=saved_world_size,
                        world_size=self.ctx.world_size, samples_left_out=left_out, attempt=self.ctx.attempt)

    # ------------------------------------------------------------ one epoch
    def _set_lr(self, plan: schedule.EpochPlan, position: int, steps_per_epoch: int) -> float:
        # In steps of this rank count: after a resume on another one, the epoch's sample position decides.
        step = position / self.global_batch
        lr = lr_at(self.config.lr, self.epochs, self.global_batch, plan.epoch, step, steps_per_epoch)
        # A frozen group gets LR 0 rather than requires_grad=False: DDP expects the same
        # gradients every step, and an LR of 0 with no decay leaves the weights exactly as they are.
        frozen = backbone_frozen(self.config, plan)
        for group in self.optimizer.param_groups:
            group["lr"] = 0.0 if frozen and group["backbone"] else lr
        return lr

    def _augment(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 batch -> (model inputs, targets): RandAugment, normalisation, mixup/CutMix as the phase allows."""
        if self.augment_on:
            images = self.randaugment(images)
        inputs = normalize(images)
        return self.mixer(inputs, labels) if self.augment_on else (inputs, labels)

    def _apply_gradients(self, skip: torch.Tensor | None = None) -> None:
        apply_gradients(self.optimizer, self.scaler, self.model, self.config.training.grad_clip_norm, self.ema, skip)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, first: bool = True,
                   last: bool = True) -> tuple[float, bool, bool] | None:
        """``queue_step`` and at once ``settle``: on the update's last micro-batch (loss averaged over
        the update's micro-batches and the ranks, stop requested on any rank, checkpoint due by rank
        0's clock); None on the other micro-batches."""
        update = self.queue_step(images, labels, first, last)
        return None if update is None else self.settle(update)

    def settle(self, update: QueuedUpdate) -> tuple[float, bool, bool]:
        """``update``'s values on the host (waiting for them if need be), counted for the divergence check."""
        loss, stop, due = update.read()
        self.bad_steps = 0 if math.isfinite(loss) else self.bad_steps + 1  # the same on every rank
        return loss, stop, due

    def queue_step(self, images: torch.Tensor, labels: torch.Tensor, first: bool = True,
                   last: bool = True) -> QueuedUpdate | None:
        """One micro-batch: forward and backward, its gradients added to the update's. On the update's
        ``last`` micro-batch, one all-reduce of (loss, stop request, checkpoint due), so every rank acts
        on the same answers, and the optimizer step, skipped on every rank when the loss is not finite;
        returns the all-reduce unread (``settle`` reads it). None on the other micro-batches."""
        inputs, targets = self._augment(images, labels)
        if first:
            self.optimizer.zero_grad(set_to_none=True)
        # DDP all-reduces gradients in backward; accumulating micro-batches skip it, the last one reduces the sum.
        no_sync = self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()
        with no_sync:
            with autocast_for(self.ctx.device, self.config.training.precision):
                loss = self.criterion(self.train_model(inputs), targets)
            self.scaler.scale(loss / self.accumulate).backward()  # the update's gradient: the mean over its samples
        micro_loss = loss.detach().float()
        self._update_loss = micro_loss if first else self._update_loss + micro_loss
        if not last:
            return None
        reduced = all_reduce_sum(self.ctx, self._shared_values(self._update_loss / self.accumulate))
        update = QueuedUpdate(reduced, self.ctx.world_size)
        # Every rank saw the same sum, so every rank skips a non-finite step. The loaders keep FFCV
        # from refilling a pinned buffer whose copy is pending (loaders.release_after_use): no step
        # needs a host synchronisation for that.
        if self.skips_on_device:
            self._apply_gradients(skip=~torch.isfinite(reduced[0]))
        elif math.isfinite(update.read()[0]):  # a wait for the whole step on a GPU; nothing on the CPU
            self._apply_gradients()
        return update

    def _shared_values(self, loss: torch.Tensor) -> torch.Tensor:
        """(loss, stop requested, checkpoint due) on the loss's device, built without a host-to-device
        copy: ``torch.tensor(..., device=cuda)`` would wait for the whole backward pass."""
        due = self._checkpoint_due()
        if due:  # raised once: the flag is read an update later, and the save restarts the clock again
            self.last_save = time.monotonic()
        flags = (float(self.stop.requested), float(due))
        return torch.stack([loss.detach().float(), *(torch.full((), flag, device=loss.device) for flag in flags)])

    def _checkpoint_due(self) -> bool:
        minutes = self.config.logging.checkpoint_minutes
        return self.ctx.is_main and minutes > 0 and time.monotonic() - self.last_save >= 60 * minutes

    def _check_divergence(self, step: int) -> None:
        limit = self.config.training.max_bad_steps
        if self.bad_steps >= limit:
            raise TrainingStopped(
                f"the loss was not finite for {limit} steps in a row (epoch {self.epoch}, batch {step}); "
                f"stopped, the last checkpoint in {self.folder} is kept; lower lr.lr_per_256 or use "
                "training.precision=bf16/fp32", EXIT_DIVERGED)

    def enter_phase(self, plan: schedule.EpochPlan) -> None:
        """Train mode, and batch augmentation only in the main phase (the profiler times steps this way too)."""
        self.train_model.train()
        self.augment_on = plan.crop_mode == schedule.RRC

    def train_epoch(self, plan: schedule.EpochPlan) -> dict[str, Any]:
        self.enter_phase(plan)
        self.train_loader.prepare(plan)
        steps = len(self.train_loader) // self.accumulate  # optimizer updates in a whole epoch
        start = self.samples_in_epoch
        # Whole updates only: the micro-batches left over at the epoch's end (fewer than accumulate) are not read.
        micro_steps = self.train_loader.steps_from(start) // self.accumulate * self.accumulate
        progress = tqdm(total=micro_steps * self.micro_batch, unit="img", unit_scale=True,
                        desc=f"epoch {plan.epoch} (of 0-{self.epochs - 1}) res {plan.res}", leave=False,
                        disable=not (self.ctx.is_main and self.config.logging.progress), dynamic_ncols=True)
        loss_sum, finite_steps, first_shape, lr = 0.0, 0, None, 0.0
        sample_log = SampleLog.from_env(self.ctx.rank)
        started = time.perf_counter()
        done = start  # global samples of the epoch trained so far (the last update queued included)

        def settle(update: QueuedUpdate, step: int, step_lr: float) -> None:
            """An update's answers, read once the next one is queued: logged, and a stop or a
            checkpoint acted on with the weights of every update queued so far (``done``)."""
            nonlocal loss_sum, finite_steps
            loss, stop, checkpoint_due = self.settle(update)
            self.log.train_step(plan.epoch * steps + step + 1, loss, step_lr)
            if self.bad_steps == 0:
                loss_sum, finite_steps = loss_sum + loss, finite_steps + 1
            self._check_divergence(step)
            progress.set_postfix(loss=f"{loss:.3f}", lr=f"{step_lr:.3g}", refresh=False)
            if stop or checkpoint_due:
                self.samples_in_epoch = done
                self.save(then=lambda at=done: self.log.record("event", event="checkpoint", epoch=plan.epoch,
                                                               samples_in_epoch=at), background=True)
            if stop:
                raise TrainingStopped(f"stop signal: checkpoint saved at epoch {plan.epoch} after sample "
                                      f"{done} of {self.datasets.train_size}; run the same command to resume "
                                      "(on any number of ranks)", EXIT_PREEMPTED)

        pending: tuple[QueuedUpdate, int, float] | None = None  # the last update queued, its answers unread
        with progress:
            batches = self.train_loader.epoch(plan, start)
            for micro, (images, labels) in zip(range(micro_steps), batches):
                position = start + micro * self.micro_batch  # global samples before this micro-batch
                first, last = micro % self.accumulate == 0, micro % self.accumulate == self.accumulate - 1
                if first_shape is None:
                    first_shape = list(images.shape)
                if first:
                    lr = self._set_lr(plan, position, steps)
                seed_step_draws(self.config.training.seed, self.ctx.rank, plan.epoch, position // self.micro_batch,
                                self.ctx.device)
                update = self.queue_step(images, labels, first, last)
                sample_log.write(plan.epoch, labels)
                progress.update(self.micro_batch)
                if update is None:
                    continue
                done = position + self.micro_batch
                if pending is not None:
                    settle(*pending)  # one update late: the host does not wait for the update just queued
                pending = (update, done // self.global_batch - 1, lr)  # with its index in the epoch
            if pending is not None:
                settle(*pending)
            batches.close()  # an epoch whose leftover micro-batches are not read stops FFCV's thread now
        seconds = time.perf_counter() - started
        images_seen = done - start
        return {"epoch": plan.epoch, "res": plan.res, "crop_mode": plan.crop_mode, "first_batch_shape": first_shape,
                "lr": lr, "train_loss": loss_sum / max(1, finite_steps), "steps": steps,
                "process_cache_mib": self.train_loader.process_cache_bytes / MIB, **self.train_loader.remote_counts(),
                "batch_augment": self.augment_on and (self.mixer.enabled or self.randaugment.enabled),
                "images_per_second": images_seen / seconds, "epoch_seconds": seconds}

    # ------------------------------------------------------------ evaluation
    def evaluate(self, res: int | None = None, model: nn.Module | None = None) -> EvalResult:
        return self.evaluator.evaluate(model or self.model, res)

    def report_resolutions(self, resolutions: Sequence[int]) -> list[dict[str, float]]:
        rows = self.evaluator.resolution_rows(self.model, resolutions)
        self.log.say(resolution_table(rows, self.plans[-1].res))
        return rows

    def _every(self, epoch: int, every: int) -> bool:
        """Whether ``epoch`` ends a stretch of ``every`` epochs; the last epoch always does."""
        return (epoch + 1) % every == 0 or epoch == self.epochs - 1

    def _evaluation_due(self, epoch: int) -> bool:
        return self._every(epoch, self.config.validation.every)

    def host_buffer_mib(self) -> dict[str, float]:
        """Host memory FFCV allocates per epoch for its batch buffers, pinned on a GPU machine: the
        training loader at its largest epoch of each crop mode, and one val pass (they run one at a time)."""
        train = self.train_loader.peak_host_buffer_bytes(self.plans)
        val = host_buffer_bytes(self.evaluator.loader(self.config.validation.resolution).loader)
        return {"train": train / MIB, "val": val / MIB}

    # ------------------------------------------------------------ the loop
    def run(self) -> None:
        self.log.save_recipe(self.config)
        self.log.say(f"{self.config.model.arch} on {self.ctx.world_size} rank(s) ({self.ctx.device.type}), "
                     f"micro-batch {self.config.training.batch_size} per rank x {self.accumulate} accumulated x "
                     f"{self.ctx.world_size} rank(s) = global batch {self.global_batch}, peak lr {peak_lr(self.config.lr, self.global_batch):.4g}, "
                     f"{self.train_loader.settings.num_workers} loader workers per rank")
        self.log.say(dataset_line(self.datasets))
        buffers = self.host_buffer_mib()
        self.log.say(f"FFCV batch buffers in host memory per rank (pinned on a GPU): training {buffers['train']:.0f} "
                     f"MiB, validation {buffers['val']:.0f} MiB during a val pass")
        self.log.say(schedule.format_table(self.plans))
        options = regularizer_summary(self.config)
        self.log.say("options: " + (", ".join(f"{k} {v}" for k, v in options.items()) or "none"))
        self.log.record("start", world_size=self.ctx.world_size, global_batch=self.global_batch,
                        micro_batch=self.config.training.batch_size, accumulate=self.accumulate,
                        peak_lr=peak_lr(self.config.lr, self.global_batch), options=options,
                        host_buffers_mib=buffers, classes=self.datasets.classes)
        self.stop.install()
        try:
            while self.epoch < self.epochs:
                self._run_epoch(self.plans[self.epoch])
        finally:
            self.stop.uninstall()
            self.checkpoints.wait()  # a stop, an error or the end: the checkpoint is on disk before the exit
            self.log.close()
        self._save_final_weights()
        if self.config.validation.resolutions:
            rows = self.report_resolutions(self.config.validation.resolutions)
            self.log.record("resolution_table", trained_at=self.plans[-1].res, rows=rows)

    def _run_epoch(self, plan: schedule.EpochPlan) -> None:
        if self.ctx.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.ctx.device)
        record = self.train_epoch(plan)
        if self._evaluation_due(plan.epoch):
            result = self.evaluate()
            record.update(val_top1=result.top1, val_top5=result.top5, val_loss=result.loss, val_count=result.count)
            if self.ema is not None:
                averaged = self.evaluate(model=self.ema.module)
                record.update(ema_val_top1=averaged.top1, ema_val_top5=averaged.top5)
        record.update(memory_stats(self.ctx.device))
        self.epoch, self.samples_in_epoch = plan.epoch + 1, 0
        # A stop that came after training's last update (during validation, say) stops the run
        # now, not at the next epoch's first step; the last epoch just finishes (its weights are moments away).
        stop = self.epoch < self.epochs and self.stop.agreed(self.ctx)
        record["checkpoint"] = stop or self._every(plan.epoch, self.config.logging.checkpoint_every)
        improved = checkpointing.track_best(self.best, record)
        best_files = checkpointing.best_writes(self.folder, improved)  # before last.pt, which holds the best so far: a resume never loses one

        def log_epoch() -> None:
            self.log.epoch(record, self.epochs)
            for which in improved:
                self._log_best(which)

        # One background job per epoch from one host copy of the state; the epoch is logged once
        # its files are in place: the log never claims a checkpointed epoch the checkpoint lacks.
        if record["checkpoint"]:
            self.save(then=log_epoch, background=True, before=best_files)
        elif best_files and self.ctx.is_main:
            self.checkpoints.submit_job(best_files, checkpointing.best_job_state(self._state(), improved),
                                        then=log_epoch)
        else:
            self.checkpoints.wait()  # the previous epoch's line first
            log_epoch()
        if stop:
            raise TrainingStopped(f"stop signal: checkpoint saved at the end of epoch {plan.epoch}; run the same "
                                  "command to resume (on any number of ranks)", EXIT_PREEMPTED)

    # ------------------------------------------------------------ best and final weights
    def _log_best(self, which: str) -> None:
        best, files = self.best[which], checkpointing.best_files_named(which)
        self.log.say(f"best {'EMA ' if which == 'ema' else ''}val top-1 so far: {100 * best['val_top1']:.2f}% "
                     f"at epoch {best['epoch']}: {', '.join(files)}")
        self.log.record("event", event="best", weights=which, epoch=best["epoch"], val_top1=best["val_top1"],
                        files=files)

    def _save_final_weights(self) -> None:
        if self.ctx.is_main:
            models = {checkpointing.FINAL_WEIGHTS: self.model}
            if self.ema is not None:
                models[checkpointing.FINAL_EMA_WEIGHTS] = self.ema.module
            for path in checkpointing.write_final_weights(self.folder, models):
                self.log.say(f"final weights (torchvision state_dict): {path}")
        barrier(self.ctx)


def train(config: Config, ctx: DistContext, resume: str | None = None, datasets: Datasets | None = None) -> None:
    """Check everything, then train (resuming if there is a checkpoint) and save the final weights;
    ``datasets``: those ``preflight.check_before_torch`` already read, if any."""
    datasets = preflight(config, ctx, datasets)
    # Rank 0 decides and tells the others, so a refusal stops every rank instead of leaving them waiting.
    outcome: tuple[Path | None, str | None] = (None, None)
    if ctx.is_main:
        try:
            outcome = (checkpointing.prepare_run_folder(config, resume), None)
        except ConfigError as err:
            outcome = (None, str(err))
    resume_from, refusal = broadcast_object(ctx, outcome)
    if refusal:
        raise ConfigError(refusal)
    trainer = Trainer(config, ctx, datasets, resume_from)
    if trainer.epoch >= trainer.epochs:
        trainer.log.say(f"{config.logging.folder} already finished its {trainer.epochs} epochs; nothing to do")
        return
    trainer.run()
