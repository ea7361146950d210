"""Anomaly detectors side by side on one MVTec-layout folder: one JSON line per method, then a table.

    python benchmarks/anomaly.py --data ../shared/data/mvtec_bottle_320 \
        --methods ae_mse,ae_ssim,ae_feature,feature_ae

DIR is any MVTec AD layout (train/good, test/<defect>, ground_truth/<defect>/*_mask.png), RGB
or grayscale, PNG or JPG, any size: `course_utils.data.load_anomaly_data` reads and resizes it.
Each method is a runner in `METHODS`: it gets the data and the options, fits on the good training
images, and returns anomaly maps [M, S, S] and image scores [M] for the test images, plus the
fit and predict seconds. This script adds the AUROCs and the peak memory and prints them.
Adding a detector (lab 7: patchcore, padim, ...) is one function and one line in `METHODS`.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install
import course_utils as cu  # noqa: E402
from course_utils import anomaly, losses, models  # noqa: E402


@dataclass
class Detection:
    """What a runner returns: test anomaly maps [M, S, S], image scores [M], and timings."""

    maps: torch.Tensor
    scores: torch.Tensor
    fit_seconds: float
    predict_seconds: float
    note: str = ""


Runner = Callable[["cu.data.AnomalyData", argparse.Namespace], Detection]


# --------------------------------------------------------------------------------------------
# Lab 5-6 runners: pixel autoencoders with three losses, and the feature autoencoder
# --------------------------------------------------------------------------------------------

def _train_for(model: torch.nn.Module, inputs: torch.Tensor, loss_fn: Callable,
               args: argparse.Namespace, epochs: int) -> int:
    """Train `model` to reproduce `inputs` [N, ...] for `epochs` epochs or `args.max_fit_s`
    seconds, whichever comes first; returns the number of epochs done."""
    loader = DataLoader(TensorDataset(inputs, inputs), batch_size=args.batch_size, shuffle=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    start, done = time.perf_counter(), 0
    while done < epochs and time.perf_counter() - start < args.max_fit_s:
        cu.train.fit(model, loader, epochs=1, device=args.device, optimizer=optimizer,
                     loss_fn=loss_fn, progress=False)
        done += 1
    return done


def _pixel_autoencoder(data, args: argparse.Namespace, loss_fn: Callable, map_kind: str,
                       feature_loss: losses.FeatureLoss | None = None) -> Detection:
    """Train a `ConvAutoencoder` with `loss_fn` on the good images; score with `map_kind` maps."""
    size = args.ae_size
    train = F.interpolate(data.train_images, size=size, mode="bilinear", antialias=True)  # [N, 3, s, s]
    test = F.interpolate(data.test_images, size=size, mode="bilinear", antialias=True)  # [M, 3, s, s]
    cu.seed_everything(args.seed)
    model = models.ConvAutoencoder(widths=args.ae_widths, latent_channels=args.ae_latent)
    start = time.perf_counter()
    epochs = _train_for(model, train, loss_fn, args, args.ae_epochs)
    fit_s = time.perf_counter() - start

    start = time.perf_counter()
    recons = anomaly.run_in_batches(model, test, device=args.device)  # [M, 3, s, s]
    if map_kind == "feature":
        maps = feature_loss.feature_map(recons, test)  # [M, s, s]
    else:
        maps = anomaly.reconstruction_error_map(test, recons, kind=map_kind)  # [M, s, s]
    maps = anomaly.to_image_maps(maps, data.test_masks.shape[-1], sigma=args.sigma)  # [M, S, S]
    scores = cu.anomaly.image_scores(maps, "max")  # [M]
    return Detection(maps, scores, fit_s, time.perf_counter() - start, f"{epochs} epochs at {size}px")


def run_ae_mse(data, args: argparse.Namespace) -> Detection:
    """(a) Plain convolutional autoencoder, MSE loss, squared-error maps."""
    return _pixel_autoencoder(data, args, torch.nn.MSELoss(), "mse")


def run_ae_ssim(data, args: argparse.Namespace) -> Detection:
    """(b) The same autoencoder trained with SSIM + MSE, scored by 1 - SSIM maps."""
    return _pixel_autoencoder(data, args, losses.SSIMLoss(mse_weight=1.0), "ssim")


def run_ae_feature(data, args: argparse.Namespace) -> Detection:
    """(c) The same autoencoder trained with MSE + feature loss, scored by feature distance."""
    feature_loss = losses.FeatureLoss(stages=(1, 2, 3))

    def loss_fn(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(output, target) + args.feature_weight * feature_loss(output, target)

    return _pixel_autoencoder(data, args, loss_fn, "feature", feature_loss)


def run_feature_ae(data, args: argparse.Namespace) -> Detection:
    """(d) Reconstruct pretrained multi-layer features; the feature error is the anomaly map."""
    cu.seed_everything(args.seed)
    start = time.perf_counter()
    features = models.MultiLayerFeatures(cu.backbones.pretrained_backbone(), args.feature_layers,
                                         scale_to=args.feature_scale_to)
    train = anomaly.run_in_batches(features, data.train_images, device=args.device)  # [N, C, h, w]
    mean, std = anomaly.channel_stats(train)  # [1, C, 1, 1] each
    model = models.FeatureAutoencoder(train.shape[1], latent_channels=args.fae_latent)
    epochs = _train_for(model, (train - mean) / std, torch.nn.MSELoss(), args, args.fae_epochs)
    fit_s = time.perf_counter() - start

    start = time.perf_counter()
    test = anomaly.run_in_batches(features, data.test_images, device=args.device)  # [M, C, h, w]
    test = (test - mean) / std
    recons = anomaly.run_in_batches(model, test, device=args.device)  # [M, C, h, w]
    maps = anomaly.feature_error_map(test, recons)  # [M, h, w]
    maps = anomaly.to_image_maps(maps, data.test_masks.shape[-1], sigma=args.sigma)  # [M, S, S]
    scores = cu.anomaly.image_scores(maps, "max")  # [M]
    return Detection(maps, scores, fit_s, time.perf_counter() - start, f"{epochs} epochs")


# --------------------------------------------------------------------------------------------
# Lab 7 runners: PatchCore and PaDiM from scratch (course_utils.anomaly), and anomalib's
# --------------------------------------------------------------------------------------------

def _fit_and_predict(model, data) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Time `model.fit(train images)` and `model.predict(test images)`; (scores, maps, fit s, predict s)."""
    start = time.perf_counter()
    model.fit(data.train_images)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    scores, maps = model.predict(data.test_images)  # [M], [M, S, S]
    return scores, maps, fit_s, time.perf_counter() - start


def run_patchcore(data, args: argparse.Namespace) -> Detection:
    """Lab 7: the course's PatchCore (two stages, 3x3 neighbourhoods, greedy coreset, re-weighting)."""
    model = anomaly.PatchCore(layers=args.patchcore_layers, coreset_ratio=args.coreset_ratio,
                              sigma=args.sigma, device=args.device, seed=args.seed)
    scores, maps, fit_s, predict_s = _fit_and_predict(model, data)
    return Detection(maps, scores, fit_s, predict_s, f"bank {len(model.memory_bank)} x {model.memory_bank.shape[1]}")


def run_padim(data, args: argparse.Namespace) -> Detection:
    """Lab 7: the course's PaDiM (a Gaussian per patch position over a random channel subset)."""
    model = anomaly.PaDiM(layers=args.padim_layers, n_features=args.padim_features,
                          sigma=args.sigma, device=args.device, seed=args.seed)
    scores, maps, fit_s, predict_s = _fit_and_predict(model, data)
    return Detection(maps, scores, fit_s, predict_s, f"{len(model.mean)} Gaussians of {model.mean.shape[1]}-d")


def _anomalib_fit_predict(model: torch.nn.Module, data, args: argparse.Namespace, fit: Callable[[], None]
                          ) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Drive an anomalib torch model directly on the in-memory tensors (no files, no downloads).

    Training mode: every batch of ImageNet-normalised good images adds its embeddings to the
    model's store; then `fit()` (coreset or Gaussians). Eval mode: each batch returns scores
    and anomaly maps. The course's detectors get exactly the same images, so the timings
    compare algorithms, not data loading.
    """
    normalize, batches = cu.backbones.imagenet_normalize, args.batch_size * 2
    torch.manual_seed(args.seed)
    model = model.to(args.device).train()
    start = time.perf_counter()
    with torch.no_grad():
        for batch in data.train_images.split(batches):
            model(normalize(batch.to(args.device)))
    fit()
    fit_s = time.perf_counter() - start
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        outputs = [model(normalize(batch.to(args.device))) for batch in data.test_images.split(batches)]
    scores = torch.cat([o.pred_score.reshape(-1).cpu() for o in outputs])  # [M]
    maps = torch.cat([o.anomaly_map.reshape(len(o.pred_score), *o.anomaly_map.shape[-2:]).cpu() for o in outputs])
    return scores, maps, fit_s, time.perf_counter() - start  # [M], [M, S, S]


def run_anomalib_patchcore(data, args: argparse.Namespace) -> Detection:
    """Lab 7: anomalib 2.7's PatchcoreModel with the bundled backbone, same layers and coreset ratio."""
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    model = PatchcoreModel(layers=list(args.patchcore_layers), backbone=cu.backbones.pretrained_backbone())
    scores, maps, fit_s, predict_s = _anomalib_fit_predict(
        model, data, args, lambda: model.subsample_embedding(args.coreset_ratio))
    return Detection(maps, scores, fit_s, predict_s, f"anomalib bank {len(model.memory_bank)}")


def run_anomalib_padim(data, args: argparse.Namespace) -> Detection:
    """Lab 7: anomalib 2.7's PadimModel with the bundled backbone, same layers and channel count."""
    from anomalib.models.image.padim.torch_model import PadimModel

    model = PadimModel(layers=list(args.padim_layers), backbone=cu.backbones.pretrained_backbone(),
                       n_features=args.padim_features)
    scores, maps, fit_s, predict_s = _anomalib_fit_predict(model, data, args, model.fit)
    return Detection(maps, scores, fit_s, predict_s, "anomalib")


def speedups(rows: list[dict]) -> dict[str, float]:
    """Lab 7: how many times faster the course's detectors fit and predict than anomalib's, same run."""
    by_name = {r["method"]: r for r in rows}
    out = {}
    for ours in ("patchcore", "padim"):
        theirs = by_name.get(f"anomalib_{ours}")
        if ours in by_name and theirs:
            for step in ("fit", "predict"):
                out[f"{ours}_{step}_speedup"] = round(theirs[f"{step}_s"] / max(by_name[ours][f"{step}_s"], 0.1), 1)
    return out


METHODS: dict[str, Runner] = {
    "ae_mse": run_ae_mse,
    "ae_ssim": run_ae_ssim,
    "ae_feature": run_ae_feature,
    "feature_ae": run_feature_ae,
    "patchcore": run_patchcore,
    "padim": run_padim,
    "anomalib_patchcore": run_anomalib_patchcore,
    "anomalib_padim": run_anomalib_padim,
}


# --------------------------------------------------------------------------------------------
# Measuring: peak memory while a runner runs, AUROCs, the output
# --------------------------------------------------------------------------------------------

class PeakRSS:
    """Context manager sampling this process's resident memory every 20 ms; `.peak_mb` after."""

    def __enter__(self) -> "PeakRSS":
        import psutil

        self._process, self.peak_mb, self._stop = psutil.Process(), 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self._process.memory_info().rss / 2**20)
            time.sleep(0.02)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample_once()

    def _sample_once(self) -> None:
        self.peak_mb = max(self.peak_mb, self._process.memory_info().rss / 2**20)


def run_method(name: str, data, args: argparse.Namespace) -> dict:
    """Run one registered method and return its JSON row."""
    with PeakRSS() as memory:
        result = METHODS[name](data, args)
    return {
        "method": name,
        "data": data.name,
        "image_auroc": round(cu.metrics.image_auroc(data.test_labels, result.scores), 4),
        "pixel_auroc": round(cu.metrics.pixel_auroc(data.test_masks, result.maps), 4),
        "fit_s": round(result.fit_seconds, 1),
        "predict_s": round(result.predict_seconds, 1),
        "peak_rss_mb": round(memory.peak_mb),
        "device": str(args.device),
        "note": result.note,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; every size has a default that meets the lab's targets on a 2-core CPU."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, type=Path, help="an MVTec-layout category folder")
    p.add_argument("--methods", default="ae_mse,ae_ssim,ae_feature,feature_ae",
                   help=f"comma-separated, from: {', '.join(METHODS)}")
    p.add_argument("--image-size", type=int, default=320,
                   help="images and masks are resized to this many pixels (320: the bottle copy's own size)")
    p.add_argument("--ae-size", type=int, default=64, help="pixel autoencoders work at this size")
    p.add_argument("--ae-epochs", type=int, default=60)
    p.add_argument("--ae-widths", default="16,32,64,64", help="encoder channels per halving")
    p.add_argument("--ae-latent", type=int, default=16, help="bottleneck channels")
    p.add_argument("--feature-weight", type=float, default=0.1)
    p.add_argument("--feature-layers", default="blocks.1,blocks.2,blocks.3")
    p.add_argument("--feature-scale-to", default="blocks.2", help="feature maps at this layer's size")
    p.add_argument("--fae-epochs", type=int, default=12)
    p.add_argument("--fae-latent", type=int, default=64)
    p.add_argument("--patchcore-layers", default="blocks.2,blocks.3", help="lab 7: two backbone stages")
    p.add_argument("--coreset-ratio", type=float, default=0.01, help="lab 7: memory bank fraction kept")
    p.add_argument("--padim-layers", default="blocks.1,blocks.2,blocks.3")
    p.add_argument("--padim-features", type=int, default=100, help="lab 7: random channels PaDiM keeps")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--sigma", type=float, default=4.0, help="Gaussian smoothing of maps, pixels")
    p.add_argument("--max-fit-s", type=float, default=600.0, help="training time cap per method")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: the fastest)")
    args = p.parse_args(argv)
    args.feature_layers = tuple(args.feature_layers.split(","))
    args.ae_widths = tuple(int(w) for w in args.ae_widths.split(","))
    args.patchcore_layers = tuple(args.patchcore_layers.split(","))
    args.padim_layers = tuple(args.padim_layers.split(","))
    unknown = [m for m in args.methods.split(",") if m not in METHODS]
    if unknown:
        p.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    if not args.data.is_dir():
        p.error(f"--data {args.data} is not a folder; point it at an MVTec category "
                "(with train/good and test/ inside).")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    """Load the data once, run each method, print its JSON line, then a summary table."""
    args = parse_args(argv)
    args.device = cu.pick_device(args.device)
    start = time.perf_counter()
    data = cu.data.load_anomaly_data(args.data, image_size=args.image_size)
    print(f"# {data.name}: {len(data.train_images)} good training images, "
          f"{int(data.test_labels.sum())}/{len(data.test_labels)} defective test images, "
          f"{args.image_size}px, loaded in {time.perf_counter() - start:.1f}s, "
          f"{torch.get_num_threads()} threads", flush=True)
    rows = []
    for name in args.methods.split(","):
        rows.append(run_method(name, data, args))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'method':<20}{'image AUROC':>12}{'pixel AUROC':>12}{'fit s':>8}{'predict s':>10}{'peak MB':>9}")
    for r in rows:
        print(f"{r['method']:<20}{r['image_auroc']:>12.3f}{r['pixel_auroc']:>12.3f}"
              f"{r['fit_s']:>8.0f}{r['predict_s']:>10.1f}{r['peak_rss_mb']:>9}")
    best = max(rows, key=lambda r: r["pixel_auroc"])
    print(json.dumps({"summary": True, "best_pixel": best["method"],
                      **{f"{r['method']}_pixel_auroc": r["pixel_auroc"] for r in rows}, **speedups(rows)}))
    return rows


if __name__ == "__main__":
    main()
