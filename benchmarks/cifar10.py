"""Lab 4 benchmark: the slides' Net and the course's recipes on real CIFAR-10 images, side by side.

    python benchmarks/cifar10.py --data ../shared/data/cifar10_test.npz

The data (any source `cu.data.load_cifar10` accepts) is split 8,000 train / 2,000 validation with a
fixed seed. In one run it measures:
- `loop`:   the slides' Net, the tutorial's bare PyTorch loop vs `cu.train.fit` (same batches,
            Adam(lr=1e-3), one epoch each, alternated `--rounds` times): images/s and their ratio;
- `net`:    the slides' Net trained by `cu.train.fit` with a `--net-budget` seconds budget: validation accuracy;
- `recipe`: the course's best small network (`SpeedRunNet` + `train_speedrun`) within `--budget`
            seconds, once per seed (`--seeds`): validation accuracy (flip TTA, EMA weights), seconds
            and the epochs the recipe planned from its first timed steps (a faster CPU trains longer);
- `fastai`: the same network with fastai's `Learner.fit_one_cycle` under the same budget rule: a timed
            throw-away epoch chooses the epochs (`cu.train.epochs_for_budget`), a callback stops at the budget.
One JSON line per run, then a summary line: the median and the spread (min-max) over the seeds, and
the targets, which apply to the medians (every run must also end within its budget).

To see what a CPU without AVX512 does, restrict PyTorch's and oneDNN's kernels to AVX2 and train in
fp32 (what `--amp auto` picks on a CPU without native bf16; the flag itself cannot be hidden):

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/cifar10.py --data ... --amp none
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import course_utils as cu
from course_utils import models
from course_utils.data import CIFAR10_MEAN, CIFAR10_STD, ImageData, load_cifar10, make_loaders


def emit(**row) -> dict:
    """Print one JSON line and return it."""
    print(json.dumps(row), flush=True)
    return row


def bare_loop_epoch(net: nn.Module, loader, optimizer, criterion) -> int:
    """One epoch of the tutorial's loop (zero_grad, forward, loss, backward, step); returns images seen."""
    seen = 0
    for inputs, labels in loader:
        optimizer.zero_grad()
        outputs = net(inputs)
        loss = criterion(outputs, labels)
        loss.backward()
        optimizer.step()
        seen += len(labels)
    return seen


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, tta: bool = False) -> float:
    """Validation accuracy of `model` on normalised images [N, 3, 32, 32] (optionally with flip TTA)."""
    model.eval()
    logits = torch.cat([cu.train.flip_tta(model, x) if tta else model(x) for x in images.split(500)])
    return cu.metrics.accuracy(logits, labels)


def normalised(x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> CIFAR-normalised float [N, 3, H, W]."""
    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    x = (x.float() / 255 - mean) / std  # [N, 3, H, W]
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def run_loop(data: ImageData, args) -> dict:
    """Bare loop vs cu.train.fit on the slides' Net: images/s of each, alternated to cancel noise."""
    device = torch.device("cpu")
    speeds = {"bare": [], "fit": []}
    for round_ in range(args.rounds):
        for name in (("bare", "fit") if round_ % 2 == 0 else ("fit", "bare")):
            cu.seed_everything(round_)
            net = models.Net()
            train_loader, _ = make_loaders(data, batch_size=args.net_batch)
            optimizer = torch.optim.Adam(net.parameters(), lr=0.001)
            start = time.perf_counter()
            if name == "bare":
                seen = bare_loop_epoch(net, train_loader, optimizer, nn.CrossEntropyLoss())
            else:
                cu.train.fit(net, train_loader, epochs=1, device=device, optimizer=optimizer,
                             loss_fn=nn.CrossEntropyLoss(), progress=False)
                seen = len(data.train_y)
            speeds[name].append(seen / (time.perf_counter() - start))
    bare, fit = statistics.median(speeds["bare"]), statistics.median(speeds["fit"])
    return emit(run="loop", model="Net", batch_size=args.net_batch, rounds=args.rounds,
                bare_images_per_s=round(bare), fit_images_per_s=round(fit), ratio=round(fit / bare, 3))


def run_net(data: ImageData, args) -> dict:
    """The slides' Net (Adam 1e-3, cross-entropy) trained with `cu.train.fit` for --net-budget seconds."""
    cu.seed_everything(0)
    net = models.Net()
    train_loader, _ = make_loaders(data, batch_size=args.net_batch)
    start = time.perf_counter()
    history = cu.train.fit(net, train_loader, epochs=10_000, device="cpu", budget_s=args.net_budget,
                           optimizer=torch.optim.Adam(net.parameters(), lr=0.001), progress=False)
    seconds = time.perf_counter() - start
    acc = accuracy(net, normalised(data.valid_x), data.valid_y)
    return emit(run="net", model="Net", epochs=round(sum(history.steps) / len(train_loader), 2),
                train_s=round(seconds, 1), valid_accuracy=round(acc, 4))


def run_recipe(data: ImageData, args, seed: int) -> dict:
    """SpeedRunNet + train_speedrun within --budget seconds; accuracy of the EMA weights with flip TTA."""
    cu.seed_everything(seed)
    device = torch.device("cpu")
    model = models.SpeedRunNet(args.widths)
    start = time.perf_counter()
    ema = cu.train.train_speedrun(model, data.train_x, data.train_y, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                                  epochs=args.epochs, budget_s=args.budget, device=device,
                                  batch_size=args.batch, lr=args.lr, amp_dtype=args.amp)
    seconds = time.perf_counter() - start
    acc = accuracy(ema, normalised(data.valid_x, channels_last=True), data.valid_y, tta=True)
    return emit(run="recipe", seed=seed, model=f"SpeedRunNet{args.widths}", budget_s=args.budget,
                planned_epochs=ema.planned_epochs, epochs=round(ema.epochs, 2), train_s=round(seconds, 1),
                amp=str(args.amp), parameters=models.count_parameters(model), valid_accuracy=round(acc, 4))


def run_fastai(data: ImageData, args) -> dict:
    """The same network with fastai (DataLoaders from tensors, fit_one_cycle, label smoothing) in the same budget.

    As in the recipe, steps are timed first (here the steps of a throw-away first epoch, counted in the
    budget) and `cu.train.epochs_for_budget` chooses the epochs; a callback ends the fit at the budget in
    any case. In bf16 (`--amp`) a callback autocasts the forward pass and the loss, as the recipe does.
    """
    from fastai.callback.core import Callback, CancelFitException, CancelValidException
    from fastai.callback.schedule import fit_one_cycle  # noqa: F401 (adds Learner.fit_one_cycle)
    from fastai.data.core import Datasets
    from fastai.data.transforms import Categorize, IntToFloatTensor, Normalize
    from fastai.learner import Learner
    from fastai.losses import LabelSmoothingCrossEntropyFlat
    from fastai.optimizer import SGD
    from fastai.torch_core import TensorImage
    from fastai.vision.augment import Flip

    cu.seed_everything(0)
    x, y = torch.cat([data.train_x, data.valid_x]), torch.cat([data.train_y, data.valid_y])
    n_train = len(data.train_y)
    dsets = Datasets(range(len(x)), tfms=[[lambda i: TensorImage(x[i])],
                                          [lambda i: data.classes[int(y[i])], Categorize(vocab=data.classes)]],
                     splits=[list(range(n_train)), list(range(n_train, len(x)))])
    dls = dsets.dataloaders(bs=args.batch, device=torch.device("cpu"), drop_last=True, num_workers=0,
                            after_batch=[IntToFloatTensor(), Flip(), Normalize.from_stats(CIFAR10_MEAN, CIFAR10_STD)])

    class PlainChannelsLast(Callback):
        """fastai's tensor subclasses dispatch every op in Python: hand the model plain NHWC tensors."""

        def before_batch(self) -> None:
            x = self.learn.xb[0].as_subclass(torch.Tensor)  # [B, 3, 32, 32]
            self.learn.xb = (x.contiguous(memory_format=torch.channels_last),)

    class CpuAutocast(Callback):
        """Forward pass and loss in `dtype` on the CPU (fastai's MixedPrecision callback autocasts on CUDA only)."""

        def __init__(self, dtype: torch.dtype) -> None:
            self.autocast = torch.autocast("cpu", dtype=dtype)

        def before_batch(self) -> None:
            self.autocast.__enter__()

        def after_pred(self) -> None:
            self.learn.pred = self.learn.pred.float()

        def after_loss(self) -> None:
            self.autocast.__exit__(None, None, None)

    class Budget(Callback):
        """Time steps `warmup`..`warmup + probe` (then stop the fit if `probe_only`); stop at `deadline`; skip validation."""

        def __init__(self, deadline: float, probe_only: bool = False, warmup: int = 2, probe: int = 10) -> None:
            self.deadline, self.probe_only, self.warmup, self.probe, self.clock = deadline, probe_only, warmup, probe, []

        def before_batch(self) -> None:
            if self.training and self.epoch == 0 and self.iter in (self.warmup, self.warmup + self.probe):
                self.clock.append(time.perf_counter())
            if self.training and (time.perf_counter() >= self.deadline or self.probe_only and len(self.clock) == 2):
                raise CancelFitException()

        def before_validate(self) -> None:
            raise CancelValidException()  # the recipe does not validate during training either

    def learner(model: nn.Module, budget: Budget) -> Learner:
        precision = [CpuAutocast(args.amp)] if args.amp is not None else []  # the recipe's precision (--amp)
        return Learner(dls, model, loss_func=LabelSmoothingCrossEntropyFlat(eps=0.2),
                       cbs=[PlainChannelsLast(), budget, *precision],
                       opt_func=lambda params, lr: SGD(params, lr, mom=0.9, wd=5e-4))

    model = models.SpeedRunNet(args.widths).init_whitening(normalised(data.train_x[:5000]))
    model = model.to(memory_format=torch.channels_last)
    initial = copy.deepcopy(model.state_dict())
    start = time.perf_counter()  # the timed probe counts against the budget
    deadline = start + args.budget
    probe = Budget(deadline, probe_only=True, probe=len(dls.train) - 3)  # time steps 2 .. the epoch's last
    learn = learner(model, probe)
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, lr=args.lr / 25)  # a throw-away start at the one-cycle's initial lr, only to time steps
    epochs = 1  # if the budget ended during the probe
    if len(probe.clock) == 2:
        epochs = cu.train.epochs_for_budget(args.budget, time.perf_counter() - start, 0,
                                            (probe.clock[1] - probe.clock[0]) / probe.probe, len(dls.train))
    model.load_state_dict(initial)
    learn = learner(model, Budget(deadline))
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(epochs, lr_max=args.lr)
    seconds = time.perf_counter() - start
    acc = accuracy(learn.model, normalised(data.valid_x), data.valid_y, tta=True)
    return emit(run="fastai", model=f"SpeedRunNet{args.widths}", budget_s=args.budget, planned_epochs=epochs,
                epochs=round(learn.train_iter / len(dls.train), 2), train_s=round(seconds, 1), amp=str(args.amp),
                valid_accuracy=round(acc, 4))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, 
                        help="CIFAR-10 source for cu.data.load_cifar10 (npz, batches folder, ImageFolder)")
    parser.add_argument("--only", default="loop,net,recipe,fastai", help="comma-separated runs")
    parser.add_argument("--rounds", type=int, default=4, help="alternations of bare loop / fit")
    parser.add_argument("--net-batch", type=int, default=32)
    parser.add_argument("--net-budget", type=float, default=60.0, help="seconds of training for Net")
    parser.add_argument("--budget", type=float, default=180.0, help="seconds of training for the recipe")
    parser.add_argument("--epochs", type=int, default=None,
                        help="most recipe epochs (default: as many as fit the budget, planned from timed steps)")
    parser.add_argument("--seeds", type=int, default=3, help="recipe runs, seeds 0..N-1 (median and spread)")
    parser.add_argument("--batch", type=int, default=128,
                        help="recipe batch size (on 2 cores an epoch costs the same at 128 as at 256, with twice the steps)")
    parser.add_argument("--lr", type=float, default=0.15, help="recipe peak learning rate")
    parser.add_argument("--widths", default="32,64,128")
    parser.add_argument("--amp", default="auto", choices=["auto", "none", "bf16"],
                        help="auto: cu.device.amp_dtype (bf16 on CPUs with native bf16 instructions, else fp32)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--n-valid", type=int, default=2000, help="validation images split off the data (seed 0)")
    args = parser.parse_args()
    args.widths = tuple(int(w) for w in args.widths.split(","))
    args.amp = {"auto": cu.device.amp_dtype(torch.device("cpu")), "bf16": torch.bfloat16, "none": None}[args.amp]
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_cifar10(args.data, n_valid=args.n_valid, seed=0)
    emit(run="setup", data=str(args.data), train=len(data.train_y), valid=len(data.valid_y),
         threads=torch.get_num_threads(), torch=torch.__version__, cpu_model=cu.device.cpu_name(),
         cpu=torch.backends.cpu.get_cpu_capability(), cpu_bf16=cu.device.cpu_bf16_instructions(), amp=str(args.amp),
         **{name: os.environ[name] for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if name in os.environ})
    only = args.only.split(",")
    results = {name: [run(data, args)] for name, run in (("loop", run_loop), ("net", run_net)) if name in only}
    if "recipe" in only:
        results["recipe"] = [run_recipe(data, args, seed) for seed in range(args.seeds)]
    if "fastai" in only:
        results["fastai"] = [run_fastai(data, args)]
    emit(**summarise(results, args))


def spread(rows: list[dict], key: str) -> dict:
    """Median and range of `key` over the runs: {"median": m, "min": a, "max": b}."""
    values = [row[key] for row in rows]
    return {"median": round(statistics.median(values), 4), "min": min(values), "max": max(values)}


def summarise(results: dict[str, list[dict]], args) -> dict:
    """The summary line: each run's medians and spreads, and whether the targets hold (on the medians)."""
    summary = {"run": "summary"}
    if "loop" in results:
        ratio = results["loop"][0]["ratio"]
        summary.update(fit_vs_bare=ratio, fit_vs_bare_ok=ratio >= 0.95)
    if "net" in results:
        net = results["net"][0]
        summary.update(net_accuracy=net["valid_accuracy"],
                       net_ok=net["valid_accuracy"] >= 0.45 and net["train_s"] <= args.net_budget + 0.5)
    for name, target in (("recipe", 0.78), ("fastai", None)):
        if name in results:
            acc, secs = spread(results[name], "valid_accuracy"), spread(results[name], "train_s")
            within = secs["max"] <= args.budget + 0.5
            summary.update({f"{name}_runs": len(results[name]), f"{name}_accuracy": acc, f"{name}_s": secs,
                            f"{name}_within_budget": within})
            if target is not None:
                summary[f"{name}_ok"] = acc["median"] >= target and within
    return summary


if __name__ == "__main__":
    main()
