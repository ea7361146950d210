"""The plain PyTorch training loop of the course, small enough to read in one sitting.

Every step is the five-step cycle of the slides: take a batch `(inputs, targets)`, forward,
loss, `zero_grad` + backward, optimizer step. Around it: a validation pass after each epoch,
a `History` of losses and metrics, optional mixed precision, checkpointing of the best model,
early stopping and a progress bar. Autoencoders train with the same loop: their batches are
`(x, x)` (e.g. `TensorDataset(x, x)`), so the loss compares the reconstruction with the input.

    history = cu.train.fit(model, train_loader, valid_loader, epochs=10, device=device,
                           metrics={"accuracy": cu.metrics.accuracy})

Under `torchrun --nproc_per_node=N` the same call trains data-parallel with PyTorch's own engine:
`fit` joins the process group, wraps the model in `DistributedDataParallel`, gives each process its
shard of every epoch (`DistributedSampler`), averages losses and metrics over the processes and
prints and writes checkpoints on rank 0 only. Without torchrun nothing of this happens. Each process
then takes about `len(train_loader) / world_size` steps per epoch: size one-cycle schedules with
that (`cu.device.world_size()`).

Lab 4's speed run adds `train_speedrun`: the same five steps in a loop of its own, because it sizes
its schedule to a time budget (it times its first steps, plans the epochs that fit with
`epochs_for_budget`, and its learning rate also follows the clock, so training ends inside the
budget) and an `EMA` of the weights is updated every few steps; `flip_tta` evaluates with test-time flips.
Lab 2's `optimizer_path` records where a `torch.optim` optimiser takes a few parameters, to draw on a loss surface.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, RandomSampler
from torch.utils.data.distributed import DistributedSampler

from course_utils import device as _device
from course_utils.data import BatchAugmenter
from course_utils.device import autocast

if TYPE_CHECKING:
    from course_utils.models import SpeedRunNet

Metric = Callable[[torch.Tensor, torch.Tensor], float]
"""A metric takes all validation outputs and targets, e.g. logits [N, C] and labels [N]."""


@dataclass
class History:
    """What `fit` records, one entry per epoch.

    `train_loss` and `valid_loss` are mean losses per sample, `metrics` maps each metric name to
    its values on the validation set, `epoch_seconds` is the wall time of each epoch (training
    plus validation), `steps` the optimiser steps of each epoch (fewer than the batches when a
    time budget ends it) and `best_epoch` the 0-based epoch with the best monitored value (None
    without validation data).
    """

    train_loss: list[float] = field(default_factory=list)
    valid_loss: list[float] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)
    epoch_seconds: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    best_epoch: int | None = None

    def __len__(self) -> int:
        """The number of epochs recorded."""
        return len(self.train_loss)

    def last(self) -> dict[str, float]:
        """The numbers of the latest epoch as a flat dict (what the progress bar shows)."""
        row = {"train_loss": self.train_loss[-1]}
        if self.valid_loss:
            row["valid_loss"] = self.valid_loss[-1]
        row.update({name: values[-1] for name, values in self.metrics.items()})
        return row


# --------------------------------------------------------------------------------------------
# One epoch of training, one pass of evaluation
# --------------------------------------------------------------------------------------------

def _to(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move one tensor to `device` (asynchronously from pinned memory)."""
    return batch.to(device, non_blocking=True)


def _amp(device: torch.device, amp_dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision in `amp_dtype` (bf16/fp16), or plain fp32 when `amp_dtype` is None."""
    return contextlib.nullcontext() if amp_dtype is None else autocast(device, dtype=amp_dtype)


def _grad_scaler(amp_dtype: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler | None:
    """A `GradScaler` for fp16 on a GPU (small gradients would underflow to zero without it), else None."""
    return torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 and device.type == "cuda" else None


def _backward_and_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                       scaler: torch.amp.GradScaler | None) -> None:
    """Backward pass and optimiser step; with a `scaler` (fp16) the loss is scaled first and unscaled before the step."""
    if scaler is None:
        loss.backward()  # under DDP: the gradients are averaged over the processes here
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)  # skipped if the scaled gradients overflowed
        scaler.update()


def _time_is_up(deadline: float | None, device: torch.device) -> bool:
    """True once `time.perf_counter()` passed `deadline`; under torchrun, once it did on any process.

    All processes must stop at the same step (a process that stops early would leave the others
    waiting in their next all-reduce), so they agree with one tiny all-reduce per step.
    """
    if deadline is None:
        return False
    late = float(time.perf_counter() >= deadline)
    return _device.all_reduce(late, device=device, op="max")[0] > 0


def train_one_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                    loss_fn: Callable, device: torch.device, *,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                    amp_dtype: torch.dtype | None = None,
                    scaler: torch.amp.GradScaler | None = None,
                    deadline: float | None = None) -> float:
    """Train `model` for one pass over `loader` and return the mean loss per sample.

    Each batch is `(inputs [B, ...], targets [B, ...])`. The scheduler (if any) is stepped after
    every batch, as one-cycle schedules expect (`OneCycleLR(..., total_steps=epochs *
    len(loader))`). `scaler` is a `GradScaler`, needed for fp16 on a GPU only. The loss is summed
    as a tensor, so the loop never waits for the GPU until the epoch ends. With a `deadline` (a
    `time.perf_counter()` value) the pass ends early once the clock passes it. Under torchrun the
    mean is over the samples of all processes.
    """
    return _train_epoch(model, loader, optimizer, loss_fn, device, scheduler=scheduler,
                        amp_dtype=amp_dtype, scaler=scaler, deadline=deadline)[0]


def _train_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                 loss_fn: Callable, device: torch.device, *,
                 scheduler: torch.optim.lr_scheduler.LRScheduler | None, amp_dtype: torch.dtype | None,
                 scaler: torch.amp.GradScaler | None, deadline: float | None) -> tuple[float, int]:
    """`train_one_epoch`'s loop; returns (mean loss per sample over all processes, optimiser steps)."""
    model.train()
    total, count, steps = torch.zeros((), device=device), 0, 0
    for inputs, targets in loader:
        if _time_is_up(deadline, device):
            break
        inputs, targets = _to(inputs, device), _to(targets, device)
        with _amp(device, amp_dtype):
            loss = loss_fn(model(inputs), targets)  # [] mean over the batch
        optimizer.zero_grad(set_to_none=True)
        _backward_and_step(loss, optimizer, scaler)
        if scheduler is not None:
            scheduler.step()
        total.add_(loss.detach(), alpha=len(inputs))
        count += len(inputs)
        steps += 1
    total, count = _device.all_reduce(total.item(), count, device=device)
    return total / max(count, 1), steps


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device, *,
             loss_fn: Callable | None = None, metrics: dict[str, Metric] | None = None,
             amp_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Evaluate `model` on `loader` of `(inputs, targets)`: mean loss and each metric.

    Returns `{"loss": mean loss per sample, **{name: metric(outputs, targets)}}`; the metrics
    see all outputs [N, ...] and targets [N, ...] of the loader at once, as float32 CPU tensors.
    `loss_fn` defaults to cross-entropy. Under torchrun each process evaluates its shard and the
    results are averaged, weighted by the shard sizes: exact for means over samples (loss,
    accuracy), an approximation for metrics such as AUROC.
    """
    model.eval()
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    total, count = torch.zeros((), device=device), 0
    outputs, targets_seen = [], []
    for inputs, targets in loader:
        inputs, targets = _to(inputs, device), _to(targets, device)
        with _amp(device, amp_dtype):
            out = model(inputs)  # [B, ...]
            loss = loss_fn(out, targets)
        total += loss.float() * len(inputs)
        count += len(inputs)
        if metrics:
            outputs.append(out.float().cpu())
            targets_seen.append(targets.cpu())
    result = {"loss": total.item() / max(count, 1)}
    if metrics:
        out, tgt = torch.cat(outputs), torch.cat(targets_seen)  # [N, ...], [N, ...]
        result.update({name: float(metric(out, tgt)) for name, metric in metrics.items()})
    if _device.is_distributed():  # weighted mean over the processes' shards
        sums = _device.all_reduce(count, *(value * count for value in result.values()), device=device)
        result = {name: value / max(sums[0], 1) for name, value in zip(result, sums[1:], strict=True)}
    return result


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable, device: torch.device, *,
            amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Run `model` over `loader` and return all outputs concatenated on the CPU, [N, ...] float32.

    Batches may be `(inputs, targets)` (targets are ignored) or bare input tensors.
    """
    model.eval()
    outputs = []
    for batch in loader:
        inputs = batch[0] if isinstance(batch, (list, tuple)) else batch
        with _amp(device, amp_dtype):
            outputs.append(model(_to(inputs, device)).float().cpu())  # [B, ...]
    return torch.cat(outputs)


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------

def save_checkpoint(model: nn.Module, path: str | Path, **extra) -> Path:
    """Save the model's weights (its `state_dict`) and any `extra` values to `path`.

    `extra` holds plain values (numbers, strings, lists, dicts, tensors), e.g. `epoch=3,
    valid_loss=0.41`. Parent folders are created. Returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), **extra}, path)
    return path


def load_checkpoint(model: nn.Module, path: str | Path) -> dict:
    """Load weights saved by `save_checkpoint` into `model` (in place); return the extra values.

    The weights are mapped onto the device the model is on. A checkpoint from a different
    architecture raises an error that says so.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}: train with fit(..., checkpoint="
                                f"'{path}') or save_checkpoint(model, '{path}') first.")
    device = next(model.parameters(), torch.empty(0)).device
    state = torch.load(path, map_location=device, weights_only=True)
    try:
        model.load_state_dict(state.pop("model"))
    except RuntimeError as error:
        raise RuntimeError(f"The checkpoint {path} was saved from a different model "
                           f"architecture than {type(model).__name__}:\n{error}") from None
    return state


# --------------------------------------------------------------------------------------------
# The full loop
# --------------------------------------------------------------------------------------------

def _improved(value: float, best: float | None, monitor: str) -> bool:
    """Lower is better for losses, higher for every other metric."""
    if best is None:
        return not math.isnan(value)
    return value < best if monitor == "loss" else value > best


def _shard(loader: Iterable, train: bool) -> Iterable:
    """Under torchrun: the same DataLoader, each process reading its own part of the data.

    Training uses a `DistributedSampler` (shuffled if `loader` shuffles; `fit` calls `set_epoch`
    so each epoch is shuffled anew); validation gives process r the items r, r + W, r + 2W, ...
    (no item twice). Each process keeps the loader's batch size, so one optimiser step sees
    `batch_size * world_size` samples. Without torchrun `loader` comes back unchanged.
    """
    if not _device.is_distributed():
        return loader
    if not isinstance(loader, DataLoader) or loader.batch_size is None:
        raise TypeError(f"Under torchrun, fit shards a torch DataLoader with a batch_size over the processes; "
                        f"got {type(loader).__name__}. Build the loader with DataLoader(dataset, batch_size, ...).")
    if train:
        sampler = DistributedSampler(loader.dataset, shuffle=isinstance(loader.sampler, RandomSampler))
    else:
        sampler = range(_device.rank(), len(loader.dataset), _device.world_size())
    return DataLoader(loader.dataset, loader.batch_size, sampler=sampler, num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=loader.drop_last)


def _distribute(model: nn.Module, train_loader: Iterable, valid_loader: Iterable | None,
                device: torch.device) -> tuple[nn.Module, Iterable, Iterable | None]:
    """Under torchrun: (the model wrapped in DDP, the sharded loaders); otherwise all three unchanged.

    DDP keeps one replica per process and all-reduces (averages) the gradients in `backward()`.
    """
    if not _device.is_distributed():
        return model, train_loader, valid_loader
    replica = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return (replica, _shard(train_loader, train=True),
            None if valid_loader is None else _shard(valid_loader, train=False))


def _check_fit_arguments(epochs: int, valid_loader: Iterable | None, checkpoint: str | Path | None,
                         patience: int | None, monitor: str, metrics: dict[str, Metric] | None,
                         budget_s: float | None) -> None:
    """Raise a clear ValueError for arguments of `fit` that cannot work together."""
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}.")
    if budget_s is not None and budget_s <= 0:
        raise ValueError(f"budget_s is a number of seconds > 0 (or None for no limit), got {budget_s}.")
    if (checkpoint is not None or patience is not None) and valid_loader is None:
        raise ValueError("checkpoint= and patience= judge the model on validation data: "
                         "pass valid_loader as well.")
    if monitor != "loss" and monitor not in (metrics or {}):
        raise ValueError(f"monitor={monitor!r} is not 'loss' nor one of the metrics "
                         f"{sorted(metrics or {})}.")


def fit(model: nn.Module, train_loader: Iterable, valid_loader: Iterable | None = None, *,
        epochs: int, device: torch.device | str, optimizer: torch.optim.Optimizer | None = None,
        loss_fn: Callable | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        amp_dtype: torch.dtype | None = None,
        metrics: dict[str, Metric] | None = None, checkpoint: str | Path | None = None,
        patience: int | None = None, monitor: str = "loss", budget_s: float | None = None,
        progress: bool = True) -> History:
    """Train `model` for `epochs` epochs on `train_loader`, validating on `valid_loader`.

    Defaults: `optimizer` Adam(lr=1e-3), `loss_fn` cross-entropy, fp32 (`amp_dtype=torch.bfloat16`
    or `torch.float16` turns on mixed precision; fp16 on CUDA gets a GradScaler). `scheduler` is
    stepped after every batch (one-cycle style). `metrics` maps names to `metric(outputs,
    targets) -> float`, computed on the validation set. With validation data, the best epoch is
    judged by `monitor` (`"loss"`: lowest validation loss; a metric name: highest value);
    `checkpoint` saves the best weights to that path and loads them back at the end; `patience`
    stops training after that many epochs without improvement; `budget_s` stops training once
    that many seconds of training have passed (in the middle of an epoch: that epoch is then
    validated and is the last; the seconds count from the first epoch, not the set-up before it). The model is moved to
    `device` (a `torch.device` or a string such as "cuda").
    Under torchrun the training is data-parallel (see the module's docstring). Returns the `History`.
    """
    _check_fit_arguments(epochs, valid_loader, checkpoint, patience, monitor, metrics, budget_s)
    device = _device.init_distributed(device)  # under torchrun: join the group, this process's GPU
    main = _device.is_main_process()
    model.to(device)
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    scaler = _grad_scaler(amp_dtype, device)
    trained, train_loader, valid_loader = _distribute(model, train_loader, valid_loader, device)
    history, best, waited = History(metrics={name: [] for name in metrics or {}}), None, 0

    from tqdm.auto import tqdm  # imported here: only fit shows a progress bar
    bar = tqdm(range(epochs), desc="epochs", disable=not (progress and main))
    deadline = None if budget_s is None else time.perf_counter() + budget_s  # the set-up above is not counted
    for epoch in bar:
        start = time.perf_counter()
        if isinstance(getattr(train_loader, "sampler", None), DistributedSampler):
            train_loader.sampler.set_epoch(epoch)  # a new shuffle, the same on every process
        loss, steps = _train_epoch(trained, train_loader, optimizer, loss_fn, device, scheduler=scheduler,
                                   amp_dtype=amp_dtype, scaler=scaler, deadline=deadline)
        history.train_loss.append(loss)
        history.steps.append(steps)
        if valid_loader is not None:
            result = evaluate(model, valid_loader, device, loss_fn=loss_fn, metrics=metrics,
                              amp_dtype=amp_dtype)
            history.valid_loss.append(result.pop("loss"))
            for name, value in result.items():
                history.metrics[name].append(value)
        history.epoch_seconds.append(time.perf_counter() - start)
        bar.set_postfix({k: f"{v:.4g}" for k, v in history.last().items()})

        out_of_time = _time_is_up(deadline, device)
        if valid_loader is not None:
            value = history.valid_loss[-1] if monitor == "loss" else history.metrics[monitor][-1]
            if _improved(value, best, monitor):
                best, waited, history.best_epoch = value, 0, epoch
                if checkpoint is not None and main:  # one writer; every process holds the same weights
                    save_checkpoint(model, checkpoint, epoch=epoch, monitor=monitor, value=value)
            else:
                waited += 1
                if patience is not None and waited >= patience:
                    if progress and main:
                        bar.write(f"early stop: no improvement of {monitor} for {patience} epochs")
                    break
        if out_of_time:
            if progress and main:
                bar.write(f"time budget of {budget_s:g} s used up after {epoch + 1} epochs")
            break
    bar.close()
    if checkpoint is not None and history.best_epoch is not None:
        _barrier()  # the other processes wait until rank 0 has written the file
        load_checkpoint(model, checkpoint)  # back to the best epoch's weights
    return history


def _barrier() -> None:
    """Wait for every process (no-op without torchrun)."""
    if _device.is_distributed():
        torch.distributed.barrier()


# --------------------------------------------------------------------------------------------
# Lab 4: the speed-run recipe (its own loop: the learning rate follows the clock, EMA every few steps)
# --------------------------------------------------------------------------------------------


class EMA(nn.Module):
    """An exponential moving average of a model's weights, used for evaluation.

    `ema = EMA(model, decay=0.98)`; call `ema.update(model)` after optimiser steps and evaluate
    `ema` (it is a frozen copy of the model, called like it: images [B, ...] -> outputs). BatchNorm
    statistics are copied from the model, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float = 0.98) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the weights a step (1 - decay) towards `model`'s; copy its BatchNorm statistics."""
        for average, current in zip(self.model.parameters(), model.parameters()):
            average.lerp_(current, 1 - self.decay)
        for average, current in zip(self.model.buffers(), model.buffers()):
            average.copy_(current)  # averaged statistics would not match the averaged weights early on

    def train(self, mode: bool = True) -> "EMA":
        """Stay in eval mode: the average is only ever evaluated."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs of the averaged model for inputs x."""
        return self.model(x)


@torch.no_grad()
def flip_tta(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Test-time augmentation: the mean of the logits of x [B, C, H, W] and of x flipped left-right -> [B, K]."""
    return (model(x) + model(x.flip(-1))) / 2  # [B, K]


def _triangle(progress: float, peak_at: float = 0.25) -> float:
    """Learning-rate factor for training `progress` in [0, 1]: 0.1 -> 1 (warm-up) -> 0 (linear decay)."""
    if progress < peak_at:
        return 0.1 + 0.9 * progress / peak_at
    return max(0.0, (1 - progress) / (1 - peak_at))


def epochs_for_budget(budget_s: float, elapsed_s: float, steps_done: int, seconds_per_step: float,
                      steps_per_epoch: int, max_epochs: int | None = None, margin: float = 0.98) -> int:
    """How many whole epochs fit into a time budget, judged from the steps timed so far (at least 1).

    `elapsed_s` seconds of the `budget_s` are spent (set-up and the first `steps_done` steps); the rest,
    less a safety `margin` (0.98: 2 % of the budget kept for a slower step now and then), buys
    `(margin * budget_s - elapsed_s) / seconds_per_step` more steps. A faster machine gets more epochs
    for the same budget. `max_epochs` caps the answer.
    """
    if seconds_per_step <= 0 or steps_per_epoch < 1:
        raise ValueError(f"seconds_per_step must be > 0 and steps_per_epoch >= 1, "
                         f"got {seconds_per_step} and {steps_per_epoch}.")
    steps = steps_done + max(0.0, margin * budget_s - elapsed_s) / seconds_per_step
    epochs = max(1, int(steps // steps_per_epoch))
    return epochs if max_epochs is None else min(epochs, max_epochs)


def _sync(device: torch.device) -> None:
    """Wait for the GPU's queued work, so that the clock measures it (no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Schedule:
    """Training progress in [0, 1] for `train_speedrun`: steps done / planned steps, or the clock if later.

    With a budget, the epochs that fit are planned twice (`epochs_for_budget`): from the `probe` steps
    after `warmup`, then again from the steps up to the end of the first epoch (at least `probe` more),
    because a run's first steps are often slower than the rest. Until the first plan the clock alone
    sets the progress.
    """

    def __init__(self, steps_per_epoch: int, epochs: int | None, budget_s: float | None, start: float,
                 device: torch.device, warmup: int = 2, probe: int = 10) -> None:
        self.steps_per_epoch, self.budget_s, self.start, self.device = steps_per_epoch, budget_s, start, device
        self.max_epochs = epochs
        self.epochs = epochs if budget_s is None else None  # None: not planned yet
        self.checkpoints = (warmup, warmup + probe, max(steps_per_epoch, warmup + 2 * probe))  # steps to time
        self.times: list[float] = []  # elapsed seconds at the checkpoints reached so far

    def elapsed(self) -> float:
        """Seconds since `start`; under torchrun the largest over the processes (one clock for all)."""
        seconds = time.perf_counter() - self.start
        return _device.all_reduce(seconds, device=self.device, op="max")[0]

    def progress(self, step: int) -> float:
        """Progress before optimiser step `step` (0-based); plans the epochs at the timing checkpoints."""
        if self.budget_s is None:
            return step / (self.epochs * self.steps_per_epoch)
        if len(self.times) < len(self.checkpoints) and step == self.checkpoints[len(self.times)]:
            _sync(self.device)
            self.times.append(self.elapsed())
            if len(self.times) >= 2:  # seconds per step between the last two checkpoints
                per_step = (self.times[-1] - self.times[-2]) / (step - self.checkpoints[len(self.times) - 2])
                self.epochs = epochs_for_budget(self.budget_s, self.times[-1], step, per_step,
                                                self.steps_per_epoch, self.max_epochs)
        clock = self.elapsed() / self.budget_s
        if self.epochs is None:
            return clock
        return max(step / (self.epochs * self.steps_per_epoch), clock)


def train_speedrun(model: SpeedRunNet, images: torch.Tensor, labels: torch.Tensor, *,
                   mean: tuple[float, ...], std: tuple[float, ...], device: torch.device,
                   epochs: int | None = None, budget_s: float | None = None, batch_size: int = 256,
                   lr: float = 0.2, weight_decay: float = 5e-4, label_smoothing: float = 0.2,
                   ema_decay: float = 0.5, ema_every: int = 5, flip: bool = True,
                   channels_last: bool = True, amp_dtype: torch.dtype | None = None) -> EMA:
    """The speed-run recipe: whitening init, in-memory augmentation, Nesterov SGD, label smoothing, EMA.

    `images` uint8 [N, 3, H, W] and `labels` int64 [N] are the training set. The whitening layer is
    set from the (normalised) images, then the model trains with a warm-up/linear-decay learning rate
    for `epochs` epochs, or, with a time budget of `budget_s` seconds (set-up included), for as many
    epochs as fit: it times its first steps and plans the epochs from them, then plans again from the
    rest of the first epoch (`epochs_for_budget`; `epochs` then caps the plan). The schedule also
    follows the clock, so training always ends inside the budget, at a learning rate of 0.
    `flip=False` turns off the mirror augmentation (for data where left and right matter).
    `amp_dtype` float16 on a GPU gets loss scaling (a `GradScaler`), as in `fit`. Returns the `EMA`
    of the weights, with `ema.epochs` (epochs trained, a float) and `ema.planned_epochs`; evaluate
    it with `flip_tta`, on inputs in `channels_last` if it was used. Under torchrun each process
    trains on every W-th image with `batch_size` images per step, so one step sees `batch_size * W`
    images; all processes return the same weights.
    """
    start = time.perf_counter()  # the budget counts the set-up too
    if epochs is None and budget_s is None:
        raise ValueError("train_speedrun needs epochs=..., budget_s=... (seconds), or both (epochs then caps the plan).")
    device = _device.init_distributed(device)  # under torchrun: join the group, this process's GPU
    loader = _speedrun_loader(model, images, labels, mean, std, batch_size, flip, channels_last)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)  # NHWC: usually faster convolutions (lab 4, section 6, measures it)
    trained = model
    if _device.world_size() > 1:  # one replica per process, gradients averaged in backward()
        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    ema, step, scaler = EMA(model, ema_decay), 0, _grad_scaler(amp_dtype, device)
    schedule = _Schedule(len(loader), epochs, budget_s, start, device)
    trained.train()
    for x, y in itertools.chain.from_iterable(itertools.repeat(loader)):  # epoch after epoch, reshuffled
        progress = schedule.progress(step)
        if progress >= 1:
            break
        for group in optimizer.param_groups:
            group["lr"] = lr * _triangle(progress)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with _amp(device, amp_dtype):
            loss = loss_fn(trained(x), y)  # [] mean over the batch
        optimizer.zero_grad(set_to_none=True)
        _backward_and_step(loss, optimizer, scaler)
        step += 1
        if step % ema_every == 0:
            ema.update(model)
    ema.epochs, ema.planned_epochs = step / len(loader), schedule.epochs
    return ema


def _speedrun_loader(model: SpeedRunNet, images: torch.Tensor, labels: torch.Tensor, mean: tuple[float, ...],
                     std: tuple[float, ...], batch_size: int, flip: bool, channels_last: bool) -> BatchAugmenter:
    """Set the model's whitening layer from the first 5,000 images; return this process's augmenting loader.

    Under torchrun every process gets n = N // W images (every W-th), so all take the same number of steps.
    """
    rank, world = _device.rank(), _device.world_size()
    n = len(labels) // world
    first = BatchAugmenter(images[:5000], labels[:5000], batch_size, mean, std)  # the same on every process
    model.init_whitening(first.images)
    return BatchAugmenter(images[rank::world][:n], labels[rank::world][:n], batch_size, mean, std,
                          flip=flip, channels_last=channels_last)


# --------------------------------------------------------------------------------------------
# Lab 2: where an optimiser goes on a small loss surface
# --------------------------------------------------------------------------------------------

def optimizer_path(loss_fn: Callable[[torch.Tensor], torch.Tensor], start: Iterable[float],
                   make_optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
                   steps: int) -> np.ndarray:
    """The positions [steps + 1, P] that a PyTorch optimiser visits while it minimises `loss_fn`.

    `loss_fn` maps a parameter vector [P] (float64) to a scalar loss; `start` is the first position;
    `make_optimizer` builds the optimiser from a parameter list, e.g.
    `lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9)`. Used to draw optimisers' paths on
    a loss surface (`cu.plotting.plot_loss_surface`). A path that blows up is returned as it is
    (non-finite positions included), so the caller can see it diverged.
    """
    theta = torch.tensor(list(start), dtype=torch.float64, requires_grad=True)  # [P]
    optimizer = make_optimizer([theta])
    path = [theta.detach().clone()]
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn(theta).backward()
        optimizer.step()
        path.append(theta.detach().clone())
    return np.stack([p.numpy() for p in path])  # [steps + 1, P]
