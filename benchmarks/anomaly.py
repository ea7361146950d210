"""Anomaly detectors side by side on one MVTec-layout folder: one JSON line per method, then a table.

    python benchmarks/anomaly.py --data ../shared/data/mvtec_bottle_320 \
        --methods patchcore,padim,feature_ae,ae_mse [--align off]

DIR is any MVTec AD layout (train/good, test/<defect>, ground_truth/<defect>/*_mask.png), RGB
or grayscale, PNG or JPG, any size: `course_utils.data.load_anomaly_data` reads and resizes it.
Every method is a detector of `course_utils.detectors` built with the labs' settings (`METHODS`):
`ae_mse` is lab 5's autoencoder, `ae_ssim`/`ae_feature` lab 6 (b)/(c), `feature_ae` lab 6 (d),
`patchcore`/`padim` lab 7, `anomalib_*` anomalib's implementations on the same backbone. The
script fits each on the good training images, predicts the test images, and prints
`cu.metrics.evaluate` (image and pixel AUROC, PRO up to 30% FPR), the seconds and the peak memory.
`--align off` places feature cells the old way (`F.interpolate(align_corners=False)`), to
measure what the receptive-field alignment of the heat-maps changes. `patchcore_exact` is
PatchCore with the exact greedy coreset, to set beside `patchcore`'s linear-time one.

Scaling (issue 14): `--scaling 100,200,400,800` fits PatchCore and PaDiM on that many good
images (the folder's training images used up to four times: as they are, flipped left-right,
flipped up-down, turned 90 degrees), each run in its own process, and prints per size: fit
seconds, predict images/s on the test images, peak memory (the process's maximum resident set),
then how fit time grows (a straight-line fit and the ratio per doubling). `--resize-study`
crops the images to 240 x 320 (non-square) and compares the detectors' `resize` modes at
`--study-size` px, maps at the images' own size. `--profile METHOD` profiles one predict.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install
import course_utils as cu
from course_utils import detectors

Factory = Callable[[argparse.Namespace], detectors.Detector]


def _autoencoder(args: argparse.Namespace, **kwargs) -> detectors.Detector:
    """Lab 5's pixel autoencoder (lab 6 (a)-(c) change only the loss and the error map)."""
    return detectors.ReconstructionDetector(epochs=args.ae_epochs, image_size=args.ae_size, seed=args.seed,
                                            device=args.device, **kwargs)


METHODS: dict[str, Factory] = {
    "ae_mse": lambda a: _autoencoder(a),
    "ae_ssim": lambda a: _autoencoder(a, loss="ssim", error="ssim", reduction="max"),
    "ae_feature": lambda a: _autoencoder(a, loss="feature", error="feature", reduction="max"),
    "feature_ae": lambda a: detectors.FeatureAEDetector(epochs=a.fae_epochs, align=a.align, seed=a.seed,
                                                        device=a.device),
    "patchcore": lambda a: detectors.PatchCore(align=a.align, seed=a.seed, device=a.device),
    "patchcore_exact": lambda a: detectors.PatchCore(align=a.align, seed=a.seed, device=a.device, coreset_chunk=None),
    "padim": lambda a: detectors.PaDiM(align=a.align, seed=a.seed, device=a.device),
    "anomalib_patchcore": lambda a: detectors.AnomalibDetector("patchcore", seed=a.seed, device=a.device),
    "anomalib_padim": lambda a: detectors.AnomalibDetector("padim", seed=a.seed, device=a.device),
}


def _note(detector: detectors.Detector) -> str:
    """A short description of what the detector learned."""
    if isinstance(detector, detectors.PatchCore):
        return f"bank {tuple(detector.memory_bank.shape)}"
    if isinstance(detector, detectors.PaDiM):
        return f"{len(detector.mean)} Gaussians of {detector.mean.shape[1]}-d, shrinkage {detector.shrinkage_weights.mean():.2f}"
    if detector.history is not None:
        return f"{len(detector.history)} epochs, final loss {detector.history.train_loss[-1]:.4g}"
    return ""


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
            self._sample_once()
            time.sleep(0.02)

    def _sample_once(self) -> None:
        self.peak_mb = max(self.peak_mb, self._process.memory_info().rss / 2**20)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample_once()


def run_method(name: str, data, args: argparse.Namespace) -> dict:
    """Fit and evaluate one method; its row: evaluate() output, seconds, memory, settings."""
    with PeakRSS() as memory:
        detector = METHODS[name](args).fit(data.train_images)
        prediction = detector.predict(data.test_images)
    result = cu.metrics.evaluate(data, prediction, interval=False)
    return {
        "method": name,
        "data": data.name,
        "image_auroc": round(result["image_auroc"], 4),
        "pixel_auroc": round(result["pixel_auroc"], 4),
        "pro": round(result["pro"], 4),
        "per_defect": {k: round(v, 4) for k, v in result["per_defect"].items()},
        "fit_s": round(detector.fit_seconds, 1),
        "predict_s": round(detector.predict_seconds, 1),
        "peak_rss_mb": round(memory.peak_mb),
        "align": args.align,
        "device": str(args.device),
        "note": _note(detector),
    }


def onnx_row(name: str, data, args: argparse.Namespace, repeats: int = 10) -> dict:
    """`--onnx`: fit `name` (patchcore or padim) again, export it to ONNX, and time one image at batch size 1.

    PyTorch's `predict` against onnxruntime on the CPU (`cu.export.latency`: median and fastest
    of `repeats` runs after a warm-up), and the largest map difference relative to the map's maximum.
    """
    import tempfile

    import numpy as np

    from course_utils import export

    detector = METHODS[name](args).fit(data.train_images).cpu()
    with tempfile.TemporaryDirectory() as folder:
        path = export.to_onnx(detector, Path(folder) / f"{name}.onnx")
        times = export.latency(detector, path, data.test_images[:1], repeats=repeats)
        size_mb = path.stat().st_size / 2**20
    return {"method": name, "onnx": True, "image_size": args.image_size, "onnx_mb": round(size_mb, 1),
            **{f"{k}_ms_median": round(1000 * float(np.median(v)), 1) for k, v in times.items() if v.ndim},
            **{f"{k}_ms_min": round(1000 * float(v.min()), 1) for k, v in times.items() if v.ndim},
            "max_map_difference": float(times["max_map_difference"]), "threads": torch.get_num_threads()}


def _augmented(images: torch.Tensor, n: int) -> torch.Tensor:
    """n images [n, 3, H, W] from images [N, 3, H, W]: all N as they are, then flipped left-right,
    flipped up-down and turned 90 degrees, in that order, until there are n (at most 4 N)."""
    if n > 4 * len(images):
        raise ValueError(f"--scaling asks for {n} images but 4 x {len(images)} = {4 * len(images)} is the most.")
    views = [images, images.flip(-1), images.flip(-2), images.rot90(1, dims=(-2, -1))]
    return torch.cat(views)[:n]  # [n, 3, H, W]


def scaling_worker(args: argparse.Namespace) -> dict:
    """One scaling run in this process: fit `args.worker` on `args.n_train` images, predict the test images."""
    import resource

    data = cu.data.load_anomaly_data(args.data, image_size=args.image_size, dtype=torch.uint8)
    train = _augmented(data.train_images, args.n_train)  # [n, 3, S, S] uint8
    detector = METHODS[args.worker](args).fit(train)
    prediction = detector.predict(data.test_images)
    result = cu.metrics.evaluate(data, prediction, interval=False)
    return {"method": args.worker, "n_train": args.n_train, "fit_s": round(detector.fit_seconds, 1),
            "predict_images_per_s": round(len(data.test_images) / detector.predict_seconds, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "image_auroc": round(result["image_auroc"], 4), "pixel_auroc": round(result["pixel_auroc"], 4),
            "note": _note(detector)}


def growth_line(sizes: list[int], seconds: list[float]) -> str:
    """How fit time grows with the number of images: least-squares line, R^2, and the time ratio per doubling."""
    import numpy as np

    x, y = np.asarray(sizes, float), np.asarray(seconds, float)
    slope, intercept = np.polyfit(x, y, 1)
    r2 = 1 - ((y - (slope * x + intercept)) ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-12)
    ratios = ", ".join(f"{b}/{a}: x{tb / ta:.2f}" for a, b, ta, tb in zip(x.astype(int), x[1:].astype(int), y, y[1:]))
    return (f"fit s ~ {intercept:.1f} + {slope * 100:.2f} per 100 images (R^2 {r2:.3f}); "
            f"time ratios per step ({ratios}; x{x[-1] / x[-2]:.0f} images: {x[-1] / x[-2]:.1f} = linear)")


def run_scaling(args: argparse.Namespace) -> list[dict]:
    """PatchCore and PaDiM at each size of `--scaling`, each run in a fresh process; prints the table."""
    import subprocess

    sizes = [int(n) for n in args.scaling.split(",")]
    rows = []
    for method in ("patchcore", "padim"):
        for n in sizes:
            command = [sys.executable, __file__, "--data", str(args.data), "--worker", method, "--n-train", str(n),
                       "--image-size", str(args.image_size), "--seed", str(args.seed)]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), f"| load {_load()}", flush=True)
    print(f"\n{'method':10} {'train images':>12} {'fit s':>7} {'predict img/s':>14} {'peak MB':>8}")
    for r in rows:
        print(f"{r['method']:10} {r['n_train']:12d} {r['fit_s']:7.1f} {r['predict_images_per_s']:14.1f} "
              f"{r['peak_rss_mb']:8d}")
    for method in ("patchcore", "padim"):
        mine = [r for r in rows if r["method"] == method]
        print(f"{method}: " + growth_line([r["n_train"] for r in mine], [r["fit_s"] for r in mine]))
    return rows


def run_resize_study(args: argparse.Namespace) -> list[dict]:
    """The folder's images cropped to 240 x 320 (non-square), PatchCore and PaDiM at `--study-size` with each
    `resize` mode; metrics on maps at the images' own 240 x 320 size."""
    data = cu.data.load_anomaly_data(args.data, image_size=args.image_size, dtype=torch.uint8)
    top = args.image_size // 8  # keep the middle 3/4 of the rows
    rows = slice(top, args.image_size - top)
    wide = cu.data.AnomalyData(data.train_images[:, :, rows], data.test_images[:, :, rows], data.test_labels,
                               data.test_masks[:, rows], data.test_defects, data.name + "_wide")
    print(f"# {wide.name}: images {tuple(wide.test_images.shape[-2:])}, model size {args.study_size}", flush=True)
    results = []
    for method in args.methods.split(","):
        for mode in cu.data.RESIZE_MODES:
            kind = detectors.PatchCore if method == "patchcore" else detectors.PaDiM
            detector = kind(seed=args.seed, image_size=args.study_size, resize=mode).fit(wide)
            prediction = detector.predict(wide)
            metrics = cu.metrics.evaluate(wide, prediction, interval=False)
            results.append({"method": method, "resize": mode, "image_auroc": round(metrics["image_auroc"], 4),
                            "pixel_auroc": round(metrics["pixel_auroc"], 4), "pro": round(metrics["pro"], 4),
                            "maps": list(prediction.maps.shape), "fit_s": round(detector.fit_seconds, 1)})
            print(json.dumps(results[-1]), flush=True)
    return results


def run_profile(args: argparse.Namespace) -> None:
    """torch profiler table of one `predict` of 32 test images by `args.profile` (fitted on 60 images)."""
    from torch.profiler import ProfilerActivity, profile

    data = cu.data.load_anomaly_data(args.data, image_size=args.image_size, n_train=60)
    detector = METHODS[args.profile](args).fit(data.train_images)
    test = data.test_images[:32]
    detector.predict(test[:4])  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        detector.predict(test)
        seconds = time.perf_counter() - start
    print(f"{args.profile}: predict {len(test)} images in {seconds:.2f} s = {len(test) / seconds:.1f} images/s")
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=15, max_name_column_width=36))


def _load() -> str:
    """The 1/5/15-minute load averages, as `uptime` prints them."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; the detectors' own defaults are the labs' full-mode settings."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, type=Path, help="an MVTec-layout category folder")
    p.add_argument("--methods", default="ae_mse,feature_ae,patchcore,padim",
                   help=f"comma-separated, from: {', '.join(METHODS)}")
    p.add_argument("--image-size", type=int, default=320,
                   help="images and masks are resized to this many pixels (320: the bottle copy's own size)")
    p.add_argument("--ae-size", type=int, default=128,
                   help="pixel autoencoders work at this size (lab 5's full mode: 128); maps are resized back")
    p.add_argument("--ae-epochs", type=int, default=80, help="lab 5's full mode: 80")
    p.add_argument("--fae-epochs", type=int, default=40, help="lab 6 (d)'s full mode: 40")
    p.add_argument("--align", choices=("on", "off"), default="on",
                   help="off: feature maps upsampled the old way (align_corners=False), for a before/after")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--onnx", action="store_true",
                   help="also export patchcore/padim to ONNX and time batch-1 latency, PyTorch vs onnxruntime (CPU)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: the fastest)")
    p.add_argument("--scaling", default=None, help="e.g. 100,200,400,800: the scaling run (see above)")
    p.add_argument("--resize-study", action="store_true", help="compare resize modes on non-square images")
    p.add_argument("--study-size", type=int, default=256, help="the detectors' image_size in --resize-study")
    p.add_argument("--profile", default=None, help="a method whose predict to profile")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # one scaling run (a subprocess)
    p.add_argument("--n-train", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.align = args.align == "on"
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
    if args.worker:
        print(json.dumps(scaling_worker(args)))
        return []
    print(f"# {cu.device.device_report(args.device)} | load {_load()}", flush=True)
    if args.scaling:
        return run_scaling(args)
    if args.resize_study:
        return run_resize_study(args)
    if args.profile:
        run_profile(args)
        return []
    start = time.perf_counter()
    data = cu.data.load_anomaly_data(args.data, image_size=args.image_size)
    print(f"# {data.name}: {len(data.train_images)} good training images, "
          f"{int(data.test_labels.sum())}/{len(data.test_labels)} defective test images, "
          f"{args.image_size}px, loaded in {time.perf_counter() - start:.1f}s, "
          f"{torch.get_num_threads()} threads, align {'on' if args.align else 'off'}", flush=True)
    rows = []
    for name in args.methods.split(","):
        rows.append(run_method(name, data, args))
        print(json.dumps(rows[-1]), flush=True)
    print()
    print(cu.metrics.results_table([{**r, "name": r["method"], "notes": r["note"]} for r in rows]))
    best = max(rows, key=lambda r: r["pixel_auroc"])
    print(f"# load {_load()}")
    print(json.dumps({"summary": True, "align": args.align, "best_pixel": best["method"],
                      **{f"{r['method']}_pixel_auroc": r["pixel_auroc"] for r in rows},
                      **{f"{r['method']}_pro": r["pro"] for r in rows}, **speedups(rows)}))
    for name in [m for m in args.methods.split(",") if m in ("patchcore", "padim")] if args.onnx else []:
        print(json.dumps(onnx_row(name, data, args)), flush=True)
    return rows


if __name__ == "__main__":
    main()
