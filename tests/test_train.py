"""Tests of course_utils.train: the loop learns, checkpoints round-trip, early stopping stops."""

import math
import time

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from course_utils import metrics
from course_utils import train as train_module
from course_utils.models import BetterNet, SpeedRunNet
from course_utils.train import (
    EMA,
    History,
    epochs_for_budget,
    evaluate,
    fit,
    flip_tta,
    load_checkpoint,
    predict,
    save_checkpoint,
    train_one_epoch,
    train_speedrun,
)

CPU = torch.device("cpu")


def blobs(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two Gaussian blobs in 2-D, well separated: x [n, 2], y [n] in {0, 1}."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 2, generator=g) * 0.5 + (y[:, None] * 2 - 1) * 2.0  # [n, 2]
    return x, y


def loaders(batch_size: int = 32):
    train = DataLoader(TensorDataset(*blobs(256, 0)), batch_size=batch_size, shuffle=True)
    valid = DataLoader(TensorDataset(*blobs(128, 1)), batch_size=64)
    return train, valid


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))


def test_fit_learns_a_separable_problem():
    train, valid = loaders()
    history = fit(mlp(), train, valid, epochs=8, device=CPU, metrics={"accuracy": metrics.accuracy},
                  progress=False)
    assert isinstance(history, History) and len(history) == 8
    assert history.train_loss[-1] < 0.5 * history.train_loss[0]
    assert history.valid_loss[-1] < history.valid_loss[0]
    assert history.metrics["accuracy"][-1] >= 0.97
    assert len(history.epoch_seconds) == 8 and all(s > 0 for s in history.epoch_seconds)
    assert history.best_epoch == min(range(8), key=history.valid_loss.__getitem__)


def test_train_one_epoch_reports_the_mean_sample_loss_and_steps_the_scheduler():
    train, _ = loaders(batch_size=50)  # 256 samples: the last batch is smaller
    model = mlp()
    before = evaluate(model, train, CPU)["loss"]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # no update: loss must equal evaluate's
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    loss = train_one_epoch(model, train, optimizer, nn.CrossEntropyLoss(), CPU, scheduler=scheduler)
    assert loss == pytest.approx(before, rel=1e-5)
    assert scheduler.last_epoch == len(train)  # stepped once per batch


def test_bf16_autocast_on_cpu_still_learns():
    train, valid = loaders()
    history = fit(mlp(), train, valid, epochs=5, device=CPU, amp_dtype=torch.bfloat16,
                  metrics={"accuracy": metrics.accuracy}, progress=False)
    assert history.metrics["accuracy"][-1] >= 0.95
    assert all(math.isfinite(v) for v in history.train_loss)


def test_checkpoint_round_trip_restores_identical_outputs(tmp_path):
    model, x = mlp(), torch.randn(10, 2)
    path = save_checkpoint(model, tmp_path / "sub" / "net.pt", epoch=3, note="hello")
    expected = model(x)
    other = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))
    assert not torch.equal(other(x), expected)
    extra = load_checkpoint(other, path)
    assert extra == {"epoch": 3, "note": "hello"}
    assert torch.equal(other(x), expected)


def test_load_checkpoint_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        load_checkpoint(mlp(), tmp_path / "missing.pt")
    path = save_checkpoint(nn.Linear(3, 3), tmp_path / "linear.pt")
    with pytest.raises(RuntimeError, match="different model architecture"):
        load_checkpoint(mlp(), path)


def test_early_stopping_stops_and_best_weights_come_back(tmp_path):
    train, valid = loaders()
    model = mlp()
    # lr so large that training diverges after the first epoch: validation loss stops improving
    optimizer = torch.optim.SGD(model.parameters(), lr=50.0)
    history = fit(model, train, valid, epochs=30, device=CPU, optimizer=optimizer,
                  checkpoint=tmp_path / "best.pt", patience=2, progress=False)
    assert len(history) < 30
    assert len(history) == history.best_epoch + 1 + 2  # stopped `patience` epochs after the best
    best_loss = history.valid_loss[history.best_epoch]
    assert evaluate(model, valid, CPU)["loss"] == pytest.approx(best_loss, rel=1e-5)
    assert load_checkpoint(mlp(), tmp_path / "best.pt")["epoch"] == history.best_epoch


def test_monitor_a_metric_and_bad_arguments():
    train, valid = loaders()
    history = fit(mlp(), train, valid, epochs=3, device=CPU, progress=False, monitor="accuracy",
                  metrics={"accuracy": metrics.accuracy})
    accuracy = history.metrics["accuracy"]
    assert accuracy[history.best_epoch] == max(accuracy)
    with pytest.raises(ValueError, match="valid_loader"):
        fit(mlp(), train, epochs=1, device=CPU, patience=2, progress=False)
    with pytest.raises(ValueError, match="monitor"):
        fit(mlp(), train, valid, epochs=1, device=CPU, monitor="f1", progress=False)
    with pytest.raises(ValueError, match="epochs"):
        fit(mlp(), train, valid, epochs=0, device=CPU, progress=False)


def test_fit_accepts_a_device_name():
    train, valid = loaders()
    history = fit(mlp(), train, valid, epochs=1, device="cpu", progress=False)
    assert len(history) == 1 and math.isfinite(history.valid_loss[0])


def test_predict_and_autoencoder_batches():
    x, _ = blobs(70)
    model = mlp()
    out = predict(model, DataLoader(TensorDataset(x, x), batch_size=32), CPU)
    assert out.shape == (70, 2) and torch.allclose(out, model(x), atol=1e-6)
    assert torch.allclose(predict(model, DataLoader(x, batch_size=32), CPU), out)
    autoencoder = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))
    loader = DataLoader(TensorDataset(x, x), batch_size=16, shuffle=True)
    history = fit(autoencoder, loader, loader, epochs=6, device=CPU, loss_fn=nn.MSELoss(), progress=False,
                  optimizer=torch.optim.Adam(autoencoder.parameters(), lr=1e-2))
    assert history.valid_loss[-1] < 0.3 * history.valid_loss[0]


def test_ema_moves_towards_the_model_and_flip_tta_is_flip_invariant() -> None:
    model = nn.Linear(2, 1)
    ema = EMA(model, decay=0.5)
    before = ema.model.weight.clone()
    with torch.no_grad():
        model.weight.add_(2.0)
    ema.update(model)
    torch.testing.assert_close(ema.model.weight, before + 1.0)
    net = BetterNet((4,))
    net.eval()
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(flip_tta(net, x), flip_tta(net, x.flip(-1)))


def test_train_speedrun_learns_and_keeps_its_time_budget():
    torch.manual_seed(0)
    labels = torch.arange(256) % 2  # [256]: class 1 images are bright, class 0 dark
    images = (torch.rand(256, 3, 32, 32) * 100 + labels[:, None, None, None] * 120).to(torch.uint8)
    model = SpeedRunNet((8, 16, 16))
    ema = train_speedrun(model, images, labels, mean=(0.5,) * 3, std=(0.25,) * 3, epochs=4,
                         device=torch.device("cpu"), batch_size=32, channels_last=False)
    x = (images.float() / 255 - 0.5) / 0.25  # [256, 3, 32, 32]
    assert metrics.accuracy(flip_tta(ema, x), labels) > 0.9
    start = time.perf_counter()
    train_speedrun(SpeedRunNet((8, 16, 16)), images, labels, mean=(0.5,) * 3, std=(0.25,) * 3,
                   epochs=10_000, budget_s=1.0, device=torch.device("cpu"), batch_size=32)
    assert time.perf_counter() - start < 3.0  # the clock ends training, not the epoch count


def test_epochs_for_budget_gives_a_faster_machine_more_epochs():
    # 10 steps in 10 s of a 100 s budget, 100 steps per epoch: 98 s usable (2 % margin), 88 s left
    assert epochs_for_budget(100, 10, 10, seconds_per_step=0.1, steps_per_epoch=100) == 8  # 10 + 880 steps
    assert epochs_for_budget(100, 10, 10, seconds_per_step=0.05, steps_per_epoch=100) == 17  # 10 + 1760 steps
    assert epochs_for_budget(100, 10, 10, seconds_per_step=0.05, steps_per_epoch=100, max_epochs=12) == 12
    assert epochs_for_budget(100, 99, 10, seconds_per_step=1.0, steps_per_epoch=100) == 1  # at least one epoch
    with pytest.raises(ValueError, match="seconds_per_step"):
        epochs_for_budget(100, 10, 10, seconds_per_step=0, steps_per_epoch=100)


class FakeClock:
    """Stands in for the `time` module inside course_utils.train: its `perf_counter` moves only when told."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class TickingNet(nn.Module):
    """A stand-in for SpeedRunNet whose every training step takes `step_s` seconds of a `FakeClock`.

    So the test does not depend on the speed (or the load) of the CPU it runs on. Images [B, 3, 4, 4]
    -> logits [B, 2] from the channel means; `init_whitening` does nothing.
    """

    def __init__(self, step_s: float, clock: FakeClock, slow_steps: int = 0) -> None:
        super().__init__()
        self.linear, self.step_s, self.clock, self.slow_steps = nn.Linear(3, 2), step_s, clock, slow_steps

    def init_whitening(self, images: torch.Tensor) -> "TickingNet":
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.clock.now += self.step_s * (2 if self.slow_steps > 0 else 1)  # the first `slow_steps` take twice as long
        self.slow_steps -= 1
        return self.linear(x.mean(dim=(2, 3)))  # [B, 3] -> [B, 2]


def ticking_run(monkeypatch, step_s: float, budget_s: float | None, epochs: int | None = None,
                slow_steps: int = 0, n: int = 64) -> tuple[EMA, float]:
    """train_speedrun on `n` tiny images in batches of 8 (n / 8 steps per epoch) on a fake clock; returns (EMA, fake seconds)."""
    clock = FakeClock()
    monkeypatch.setattr(train_module, "time", clock)
    images, labels = torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8), torch.arange(n) % 2
    ema = train_speedrun(TickingNet(step_s, clock, slow_steps), images, labels, mean=(0.5,) * 3, std=(0.25,) * 3,
                         epochs=epochs, budget_s=budget_s, device=CPU, batch_size=8, channels_last=False)
    return ema, clock.now


def test_train_speedrun_plans_its_epochs_from_timed_steps_and_ends_inside_the_budget(monkeypatch):
    fast, fast_s = ticking_run(monkeypatch, step_s=0.02, budget_s=3.0)  # 0.16 s per epoch
    slow, slow_s = ticking_run(monkeypatch, step_s=0.06, budget_s=3.0)  # 0.48 s per epoch: 3x slower
    assert fast.planned_epochs == 18 and slow.planned_epochs == 6  # whole epochs in 98 % of 3 s: 2.94 / 0.16, 2.94 / 0.48
    assert fast.epochs == 18 and slow.epochs == 6  # the plan was kept, inside the budget
    assert fast_s <= 3.0 and slow_s <= 3.0
    capped, capped_s = ticking_run(monkeypatch, step_s=0.02, budget_s=3.0, epochs=3)
    assert capped.planned_epochs == 3 and capped.epochs == 3 and capped_s < 0.5  # epochs= caps the plan
    late, late_s = ticking_run(monkeypatch, step_s=0.5, budget_s=3.0)  # the budget ends before the steps are timed
    assert late.planned_epochs is None and late_s == pytest.approx(3.0)  # the clock alone ended it: 6 steps
    fixed, _ = ticking_run(monkeypatch, step_s=0.0, budget_s=None, epochs=2)
    assert fixed.planned_epochs == 2 and fixed.epochs == 2
    with pytest.raises(ValueError, match="budget_s"):
        ticking_run(monkeypatch, step_s=0.0, budget_s=None, epochs=None)


def test_train_speedrun_plans_again_after_its_slow_first_steps(monkeypatch):
    # 40 steps per epoch; the first 12 steps take 0.04 s, the rest 0.02 s; budget 10 s
    ema, seconds = ticking_run(monkeypatch, step_s=0.02, budget_s=10.0, slow_steps=12, n=320)
    # first plan from steps 2-12 (0.04 s each): (9.8 - 0.48) / 0.04 + 12 = 245 steps -> 6 epochs;
    # second plan from steps 12-40 (0.02 s each): (9.8 - 1.04) / 0.02 + 40 = 478 steps -> 11 epochs
    assert ema.planned_epochs == 11 and ema.epochs == 11 and seconds <= 10.0


class SlowMLP(nn.Module):
    """The test MLP with a 2 ms pause per forward pass, so that one epoch takes a known minimum time on any CPU."""

    def __init__(self) -> None:
        super().__init__()
        self.net = mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.002)
        return self.net(x)


def test_fit_stops_when_its_time_budget_is_used_up():
    x, y = blobs(1024)
    train = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True)  # 256 steps per epoch: at least 0.5 s each
    _, valid = loaders()
    start = time.perf_counter()
    history = fit(SlowMLP(), train, valid, epochs=50, device=CPU, budget_s=0.2, progress=False)
    assert time.perf_counter() - start < 5.0  # 50 full epochs would take at least 25 s
    assert len(history) == 1 and 0 < history.steps[0] < len(train)  # stopped inside the first epoch
    assert len(history.valid_loss) == 1  # the cut epoch is still validated
    full = fit(mlp(), *loaders(), epochs=2, device=CPU, progress=False)
    assert full.steps == [8, 8]  # 256 samples in batches of 32, no budget: every step
    with pytest.raises(ValueError, match="budget_s"):
        fit(mlp(), *loaders(), epochs=1, device=CPU, budget_s=0, progress=False)


def test_fit_is_the_plain_loop_when_the_batches_are_the_same():
    def seeded_loader() -> DataLoader:  # the shuffle order from its own generator, not the global one
        return DataLoader(TensorDataset(*blobs(128, 0)), batch_size=16, shuffle=True,
                          generator=torch.Generator().manual_seed(0))

    plain, fitted, loss_fn = mlp(), mlp(), nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(plain.parameters(), lr=1e-2)
    loader = seeded_loader()
    for _ in range(3):
        for x, y in loader:
            optimizer.zero_grad()
            loss_fn(plain(x), y).backward()
            optimizer.step()
    _, valid = loaders()  # validation between epochs draws random numbers: it must not change the batches
    fit(fitted, seeded_loader(), valid, epochs=3, device=CPU, progress=False,
        optimizer=torch.optim.Adam(fitted.parameters(), lr=1e-2))
    for a, b in zip(plain.parameters(), fitted.parameters(), strict=True):
        assert torch.equal(a, b)


def test_optimizer_path_follows_gradient_descent_by_hand():
    import numpy as np

    from course_utils.train import optimizer_path

    def loss(theta):  # J = (w - 3)^2 + 10 b^2: gradient (2 (w - 3), 20 b)
        return (theta[0] - 3) ** 2 + 10 * theta[1] ** 2

    path = optimizer_path(loss, (0.0, 1.0), lambda params: torch.optim.SGD(params, lr=0.01), steps=5)
    assert path.shape == (6, 2) and np.allclose(path[0], [0.0, 1.0])
    w, b = 0.0, 1.0
    for _ in range(5):
        w, b = w - 0.01 * 2 * (w - 3), b - 0.01 * 20 * b
    assert np.allclose(path[-1], [w, b])
    adam = optimizer_path(loss, (0.0, 1.0), lambda params: torch.optim.Adam(params, lr=0.1), steps=1)
    assert np.allclose(adam[1], [0.1, 0.9])  # Adam's first step is lr * sign(gradient)
