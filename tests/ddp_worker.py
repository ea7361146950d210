"""A worker for tests/test_ddp.py, started by `torchrun --nproc_per_node=2` (gloo on CPU).

    torchrun --standalone --nproc_per_node=2 tests/ddp_worker.py {train,fail,hang} OUT_DIR

- `train`: `cu.train.fit` on a tiny problem; each rank saves its final weights and history to
  OUT_DIR, and every call of `save_checkpoint` leaves a file saying which rank made it;
- `fail`:  rank 1 raises an error in its second training step;
- `hang`:  rank 1 is stuck (sleeps) instead of training; the group's timeout is 3 s.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import course_utils as cu
from course_utils import train

BATCH = 8  # per process: one optimiser step sees BATCH * world_size samples
EPOCHS = 2


def problem(n: int = 96, seed: int = 0) -> TensorDataset:
    """Two Gaussian blobs in 2-D: x [n, 2], y [n] in {0, 1}."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 2, generator=g) * 0.7 + (y[:, None] * 2 - 1) * 1.0  # [n, 2]
    return TensorDataset(x, y)


def model() -> nn.Module:
    """A small MLP with seeded weights."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2))


def run(mode: str, out: Path, batch_size: int = BATCH, checkpoint: Path | None = None) -> tuple[nn.Module, train.History]:
    """Train `model()` on `problem()` with plain SGD, no shuffling (the same global batches each run)."""
    net = model()
    loss_fn = nn.CrossEntropyLoss()
    if mode == "fail":
        calls = []

        def loss_fn(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            calls.append(1)
            if cu.device.rank() == 1 and len(calls) == 2:
                raise RuntimeError("rank 1 failed on purpose")
            return nn.functional.cross_entropy(outputs, targets)

    history = train.fit(net, DataLoader(problem(), batch_size), DataLoader(problem(40, 1), 16), epochs=EPOCHS,
                        device="cpu", optimizer=torch.optim.SGD(net.parameters(), lr=0.5), loss_fn=loss_fn,
                        metrics={"accuracy": cu.metrics.accuracy}, checkpoint=checkpoint, monitor="accuracy")
    return net, history


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    if mode == "hang":
        cu.device.init_distributed("cpu", timeout_s=3)
        if cu.device.rank() == 1:
            time.sleep(120)  # stuck: never joins the all-reduce
    original = train.save_checkpoint

    def save_and_record(*args, **kwargs):
        (out / f"saved_by_rank{cu.device.rank()}").touch()
        return original(*args, **kwargs)

    train.save_checkpoint = save_and_record
    net, history = run(mode, out, checkpoint=out / "best.pt")
    rank = cu.device.rank()
    torch.save(net.state_dict(), out / f"weights_rank{rank}.pt")
    (out / f"history_rank{rank}.json").write_text(json.dumps(
        {"world": cu.device.world_size(), "train_loss": history.train_loss, "valid_loss": history.valid_loss,
         "accuracy": history.metrics["accuracy"], "best_epoch": history.best_epoch}))
    cu.device.finish_distributed()


if __name__ == "__main__":
    main()
