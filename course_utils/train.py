"""The plain PyTorch training loop of the course, small enough to read in one sitting.

Every step is the five-step cycle of the slides: take a batch `(inputs, targets)`, forward,
loss, `zero_grad` + backward, optimizer step. Around it: a validation pass after each epoch,
a `History` of losses and metrics, optional mixed precision, checkpointing of the best model,
early stopping and a progress bar. Autoencoders train with the same loop: their batches are
`(x, x)` (e.g. `TensorDataset(x, x)`), so the loss compares the reconstruction with the input.

    history = cu.train.fit(model, train_loader, valid_loader, epochs=10, device=device,
                           metrics={"accuracy": cu.metrics.accuracy})

Lab 4's speed run adds `train_speedrun`: the same five steps in a loop of its own, because its
learning rate follows the clock (training ends inside a time budget) and an `EMA` of the weights
is updated every few steps; `flip_tta` evaluates with test-time flips.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import torch
from torch import nn

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
    plus validation) and `best_epoch` the 0-based epoch with the best monitored value (None
    without validation data).
    """

    train_loss: list[float] = field(default_factory=list)
    valid_loss: list[float] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)
    epoch_seconds: list[float] = field(default_factory=list)
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
    return autocast(device, enabled=amp_dtype is not None, dtype=amp_dtype)


def train_one_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                    loss_fn: Callable, device: torch.device, *,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                    amp_dtype: torch.dtype | None = None,
                    scaler: torch.amp.GradScaler | None = None) -> float:
    """Train `model` for one pass over `loader` and return the mean loss per sample.

    Each batch is `(inputs [B, ...], targets [B, ...])`. The scheduler (if any) is stepped after
    every batch, as one-cycle schedules expect (`OneCycleLR(..., total_steps=epochs *
    len(loader))`). `scaler` is a `GradScaler`, needed for fp16 on a GPU only. The loss is summed
    as a tensor, so the loop never waits for the GPU until the epoch ends.
    """
    model.train()
    total, count = torch.zeros((), device=device), 0
    for inputs, targets in loader:
        inputs, targets = _to(inputs, device), _to(targets, device)
        with _amp(device, amp_dtype):
            loss = loss_fn(model(inputs), targets)  # [] mean over the batch
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:  # fp16: scale the loss so small gradients do not underflow to zero
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        if scheduler is not None:
            scheduler.step()
        total += loss.detach() * len(inputs)
        count += len(inputs)
    return total.item() / max(count, 1)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device, *,
             loss_fn: Callable | None = None, metrics: dict[str, Metric] | None = None,
             amp_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Evaluate `model` on `loader` of `(inputs, targets)`: mean loss and each metric.

    Returns `{"loss": mean loss per sample, **{name: metric(outputs, targets)}}`; the metrics
    see all outputs [N, ...] and targets [N, ...] of the loader at once, as float32 CPU tensors.
    `loss_fn` defaults to cross-entropy.
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


def fit(model: nn.Module, train_loader: Iterable, valid_loader: Iterable | None = None, *,
        epochs: int, device: torch.device | str, optimizer: torch.optim.Optimizer | None = None,
        loss_fn: Callable | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        amp_dtype: torch.dtype | None = None,
        metrics: dict[str, Metric] | None = None, checkpoint: str | Path | None = None,
        patience: int | None = None, monitor: str = "loss", progress: bool = True) -> History:
    """Train `model` for `epochs` epochs on `train_loader`, validating on `valid_loader`.

    Defaults: `optimizer` Adam(lr=1e-3), `loss_fn` cross-entropy, fp32 (`amp_dtype=torch.bfloat16`
    or `torch.float16` turns on mixed precision; fp16 on CUDA gets a GradScaler). `scheduler` is
    stepped after every batch (one-cycle style). `metrics` maps names to `metric(outputs,
    targets) -> float`, computed on the validation set. With validation data, the best epoch is
    judged by `monitor` (`"loss"`: lowest validation loss; a metric name: highest value);
    `checkpoint` saves the best weights to that path and loads them back at the end; `patience`
    stops training after that many epochs without improvement. The model is moved to `device`
    (a `torch.device` or a string such as "cuda"). Returns the `History`.
    """
    device = torch.device(device)
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}.")
    if (checkpoint is not None or patience is not None) and valid_loader is None:
        raise ValueError("checkpoint= and patience= judge the model on validation data: "
                         "pass valid_loader as well.")
    if monitor != "loss" and monitor not in (metrics or {}):
        raise ValueError(f"monitor={monitor!r} is not 'loss' nor one of the metrics "
                         f"{sorted(metrics or {})}.")
    model.to(device)
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    use_scaler = amp_dtype == torch.float16 and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    history, best, waited = History(metrics={name: [] for name in metrics or {}}), None, 0

    from tqdm.auto import tqdm  # imported here: only fit shows a progress bar
    bar = tqdm(range(epochs), desc="epochs", disable=not progress)
    for epoch in bar:
        start = time.perf_counter()
        history.train_loss.append(train_one_epoch(model, train_loader, optimizer, loss_fn, device,
                                                  scheduler=scheduler, amp_dtype=amp_dtype,
                                                  scaler=scaler))
        if valid_loader is not None:
            result = evaluate(model, valid_loader, device, loss_fn=loss_fn, metrics=metrics,
                              amp_dtype=amp_dtype)
            history.valid_loss.append(result.pop("loss"))
            for name, value in result.items():
                history.metrics[name].append(value)
        history.epoch_seconds.append(time.perf_counter() - start)
        bar.set_postfix({k: f"{v:.4g}" for k, v in history.last().items()})

        if valid_loader is None:
            continue
        value = history.valid_loss[-1] if monitor == "loss" else history.metrics[monitor][-1]
        if _improved(value, best, monitor):
            best, waited, history.best_epoch = value, 0, epoch
            if checkpoint is not None:
                save_checkpoint(model, checkpoint, epoch=epoch, monitor=monitor, value=value)
        else:
            waited += 1
            if patience is not None and waited >= patience:
                if progress:
                    bar.write(f"early stop: no improvement of {monitor} for {patience} epochs")
                break
    bar.close()
    if checkpoint is not None and history.best_epoch is not None:
        load_checkpoint(model, checkpoint)  # back to the best epoch's weights
    return history


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


def train_speedrun(model: SpeedRunNet, images: torch.Tensor, labels: torch.Tensor, *,
                   mean: tuple[float, ...], std: tuple[float, ...], epochs: int,
                   device: torch.device, budget_s: float | None = None, batch_size: int = 256,
                   lr: float = 0.2, weight_decay: float = 5e-4, label_smoothing: float = 0.2,
                   ema_decay: float = 0.5, ema_every: int = 5, flip: bool = True,
                   channels_last: bool = True, amp_dtype: torch.dtype | None = None) -> EMA:
    """The speed-run recipe: whitening init, in-memory augmentation, Nesterov SGD, label smoothing, EMA.

    `images` uint8 [N, 3, H, W] and `labels` int64 [N] are the training set. The whitening layer
    is set from the (normalised) images, then the model trains for `epochs` epochs with a
    warm-up/linear-decay learning rate, or fewer when `budget_s` seconds run out first (the
    schedule then follows the clock, so training always ends inside the budget). `flip=False`
    turns off the mirror augmentation (for data where left and right matter). Returns the
    `EMA` of the weights; evaluate it with `flip_tta`, on inputs in `channels_last` if it was used.
    """
    start = time.perf_counter()  # the budget counts the set-up too
    loader = BatchAugmenter(images, labels, batch_size, mean, std, flip=flip, channels_last=channels_last)
    model.init_whitening(loader.images[:5000])
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)  # NHWC: faster convolutions on CPU and GPU
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    ema, step, total = EMA(model, ema_decay), 0, epochs * len(loader)
    model.train()
    for x, y in (batch for _ in range(epochs) for batch in loader):
        clock = (time.perf_counter() - start) / budget_s if budget_s else 0.0
        progress = max(step / total, clock)
        if progress >= 1:
            break
        for group in optimizer.param_groups:
            group["lr"] = lr * _triangle(progress)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with _amp(device, amp_dtype):
            loss = loss_fn(model(x), y)  # [] mean over the batch
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if step % ema_every == 0:
            ema.update(model)
    return ema
