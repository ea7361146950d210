"""Lab 4 benchmark, several processes: the lab's recipe trained data-parallel with torchrun.

    torchrun --standalone --nproc_per_node=2 benchmarks/cifar10_ddp.py --data ../shared/data/cifar10_test.npz
    python benchmarks/cifar10_ddp.py --data ../shared/data/cifar10_test.npz          # one process

Same data split as `benchmarks/cifar10.py` (8,000 train / 2,000 validation, seed 0) and the same
recipe (`SpeedRunNet` + `cu.train.train_speedrun`) for a fixed number of epochs, no time budget,
so that one and several processes do the same work. `--batch` is the global batch: each of the
W processes takes `batch / W` images per step (the learning rate stays the recipe's). With
`--model net` it trains the slides' Net with `cu.train.fit` instead. GPUs use NCCL (one GPU per
process), CPUs gloo. Rank 0 prints JSON lines: the set-up, then images/s of each process and in
total, training seconds and the final validation accuracy (EMA weights with flip TTA).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import course_utils as cu
from course_utils import models
from course_utils.data import CIFAR10_MEAN, CIFAR10_STD, load_cifar10, make_loaders

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cifar10 import accuracy, emit, normalised


def train_recipe(data, args, device: torch.device, per_process: int) -> tuple[torch.nn.Module, int, bool]:
    """SpeedRunNet + train_speedrun for --epochs epochs; returns (EMA model, images this process saw, channels_last)."""
    ema = cu.train.train_speedrun(models.SpeedRunNet(args.widths), data.train_x, data.train_y, mean=CIFAR10_MEAN,
                                  std=CIFAR10_STD, epochs=args.epochs, device=device, batch_size=per_process,
                                  lr=args.lr, amp_dtype=cu.device.amp_dtype(device))
    steps = args.epochs * ((len(data.train_y) // cu.device.world_size()) // per_process)
    return ema, steps * per_process, True


def train_net(data, args, device: torch.device, per_process: int) -> tuple[torch.nn.Module, int, bool]:
    """The slides' Net with cu.train.fit (Adam 1e-3) for --epochs epochs; returns (model, images seen, False)."""
    net = models.Net()
    train_loader, _ = make_loaders(data, batch_size=per_process)
    history = cu.train.fit(net, train_loader, epochs=args.epochs, device=device, progress=False,
                           optimizer=torch.optim.Adam(net.parameters(), lr=0.001))
    return net, sum(history.steps) * per_process, False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True,
                        help="CIFAR-10 source for cu.data.load_cifar10 (npz, batches folder, ImageFolder)")
    parser.add_argument("--model", default="recipe", choices=["recipe", "net"])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128, help="global batch size (split over the processes)")
    parser.add_argument("--lr", type=float, default=0.15, help="recipe peak learning rate")
    parser.add_argument("--widths", default="32,64,128")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (one GPU per process under torchrun)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (CPU)")
    args = parser.parse_args()
    args.widths = tuple(int(w) for w in args.widths.split(","))
    torch.set_num_threads(args.threads)
    device = cu.device.init_distributed(args.device)  # joins torchrun's group (gloo/NCCL) if there is one
    world, main_process = cu.device.world_size(), cu.device.is_main_process()
    if args.batch % world:
        raise SystemExit(f"--batch {args.batch} must be divisible by the {world} processes.")
    per_process = args.batch // world
    data = load_cifar10(args.data, n_valid=2000, seed=0)
    if main_process:
        emit(run="setup", data=str(args.data), train=len(data.train_y), valid=len(data.valid_y), processes=world,
             backend=torch.distributed.get_backend() if world > 1 else "none", device=str(device),
             threads_per_process=torch.get_num_threads(), global_batch=args.batch, epochs=args.epochs,
             torch=torch.__version__)
    cu.seed_everything(0)
    start = time.perf_counter()
    model, seen, channels_last = {"recipe": train_recipe, "net": train_net}[args.model](data, args, device, per_process)
    seconds = time.perf_counter() - start
    mine = torch.zeros(world, dtype=torch.float64)
    mine[cu.device.rank()] = seen / seconds
    speeds = cu.device.all_reduce(*mine, device=device)  # every process's images/s
    seconds = cu.device.all_reduce(seconds, device=device, op="max")[0]
    if main_process:
        valid_x = normalised(data.valid_x, channels_last=channels_last).to(device)
        acc = accuracy(model.to(device), valid_x, data.valid_y.to(device), tta=args.model == "recipe")
        emit(run=args.model, processes=world, images_per_s_per_process=[round(s) for s in speeds],
             images_per_s_total=round(sum(speeds)), train_s=round(seconds, 1), valid_accuracy=round(acc, 4))
    cu.device.finish_distributed()


if __name__ == "__main__":
    main()
