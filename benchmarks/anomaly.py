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
measure what the receptive-field alignment of the heat-maps changes.
"""

from __future__ import annotations

import argparse
import json
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
    print(json.dumps({"summary": True, "align": args.align, "best_pixel": best["method"],
                      **{f"{r['method']}_pixel_auroc": r["pixel_auroc"] for r in rows},
                      **{f"{r['method']}_pro": r["pro"] for r in rows}, **speedups(rows)}))
    for name in [m for m in args.methods.split(",") if m in ("patchcore", "padim")] if args.onnx else []:
        print(json.dumps(onnx_row(name, data, args)), flush=True)
    return rows


if __name__ == "__main__":
    main()
