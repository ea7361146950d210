"""Export a fitted PatchCore or PaDiM to ONNX: the whole predict pipeline as one graph.

    cu.export.to_onnx(detector, "bottle.onnx", image_size=128)     # images [1, 3, 128, 128] -> scores [1], maps [1, 128, 128]
    session = cu.export.onnx_session("bottle.onnx")
    scores, maps = cu.export.predict_onnx(session, images)

ONNX (Open Neural Network Exchange) is a file format for computation graphs that many runtimes
execute without Python or PyTorch: onnxruntime on a CPU or GPU, OpenVINO, TensorRT, phones and
browsers. The graph holds everything `predict` does: the backbone's features, the stacking of
stages, the distance of every patch to the memory bank (PatchCore, with its re-weighted image
score) or the Mahalanobis distance to each position's Gaussian (PaDiM), the placement of the
cells on the image, the Gaussian blur and the image score. It is traced for one input shape
(`batch_size` images of `image_size`). Needs the optional packages `onnx` and `onnxruntime`
(`pip install "course-utils[export]"`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from course_utils import anomaly
from course_utils.data.images import _size_pair

TOLERANCE = 1e-3
"""How close the exported maps are to PyTorch's: |onnx - torch| <= TOLERANCE x max |torch map| (0.1 % of the
map's range; float32 rounding in a different operation order, amplified by the square root of small distances)."""


def _require(package: str) -> None:
    """Raise a clear error when an optional export package is missing."""
    import importlib.util

    if importlib.util.find_spec(package) is None:
        raise ImportError(f"ONNX export needs the package {package!r}: pip install onnx onnxruntime "
                          "(or pip install -e \".[export]\" in the course folder).")


class PredictGraph(nn.Module):
    """A fitted PatchCore or PaDiM as a plain module: images [B, 3, H, W] -> (scores [B], maps [B, H, W]).

    The same steps, functions and fitted buffers as the detector's `predict`, without its batching
    loop (`run_in_batches`) and with the brute-force nearest-neighbour search (not faiss), so that
    tracing records one static graph. The unit tests check that both give the same maps.
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        from course_utils.detectors import PaDiM, PatchCore

        if not isinstance(detector, (PatchCore, PaDiM)):
            raise TypeError(f"ONNX export covers PatchCore and PaDiM, not {type(detector).__name__}.")
        detector._require_fit()
        self.detector = detector.cpu().eval()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores [B] and smoothed anomaly maps [B, H, W] of images [B, 3, H, W] in [0, 1]."""
        from course_utils.detectors import PatchCore

        det = self.detector
        if isinstance(det, PatchCore):
            return self._patchcore(images)
        features = det.embedder(images)[:, det.channels]  # [B, C, h, w]
        maps = det._to_image_maps(anomaly.mahalanobis_maps(features, det.mean, det.precision), images.shape[-2:])
        return anomaly.image_scores(maps, det.reduction, det.top_k), maps  # [B], [B, H, W]

    def _patchcore(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """PatchCore's predict: nearest bank entry of every patch, the map, and the re-weighted score of the worst patch."""
        det, bank = self.detector, self.detector.memory_bank  # bank [M, D]
        features = det._scaled(det.embedder(images))  # [B, D, h, w]
        b, d, h, w = features.shape
        patches = features.permute(0, 2, 3, 1).reshape(b, h * w, d)  # [B, P, D]
        distances, nearest = anomaly.nearest_neighbours(patches.reshape(b * h * w, d), bank, backend="torch")  # [B*P, 1]
        distances, nearest = distances.view(b, h * w), nearest.view(b, h * w)  # [B, P] each
        scores = anomaly.reweighted_scores(patches, distances, nearest, bank, det.num_neighbors)  # [B]
        return scores, det._to_image_maps(distances.view(b, h, w), images.shape[-2:])  # [B], [B, H, W]


def to_onnx(detector: nn.Module, path: str | Path, image_size: int | tuple[int, int] | None = None,
            batch_size: int = 1, opset: int = 17) -> Path:
    """Export a fitted PatchCore or PaDiM to the ONNX file `path`: input "images" [batch_size, 3, H, W] float in [0, 1],
    outputs "scores" [batch_size] and "maps" [batch_size, H, W].

    `image_size` (S or (H, W); default: the training size, which PaDiM requires) fixes the input
    shape: the graph is traced with TorchScript's exporter at that shape. The file is checked
    with `onnx.checker`. Returns the path.
    """
    _require("onnx")
    import onnx

    size = _size(detector, image_size)
    graph = PredictGraph(detector)
    example = torch.rand(batch_size, 3, *size, generator=torch.Generator().manual_seed(0))  # [B, 3, H, W]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on Python numbers taken from shapes: shapes are fixed here
        torch.onnx.export(graph, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=["images"], output_names=["scores", "maps"])
    onnx.checker.check_model(str(path))
    return path


def _size(detector: nn.Module, image_size: int | tuple[int, int] | None) -> tuple[int, int]:
    """(H, W) from `image_size` or, when None, the detector's training size."""
    if image_size is None:
        image_size = tuple(int(v) for v in detector.fit_size.tolist())
        if min(image_size) <= 0:
            raise ValueError("The detector records no training size: pass image_size=(H, W).")
    return _size_pair(image_size)


def onnx_session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session for an exported detector, on `threads` threads (default: torch's thread count)."""
    _require("onnxruntime")
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def predict_onnx(session, images: torch.Tensor):
    """Run an exported detector: `Prediction(scores [N], maps [N, H, W])` for images [N, 3, H, W], N = its batch size."""
    from course_utils.detectors import Prediction

    expected = session.get_inputs()[0].shape  # [B, 3, H, W]
    if list(images.shape) != list(expected):
        raise ValueError(f"This ONNX file takes images of shape {expected}, got {list(images.shape)}: resize them, "
                         "or export again with the image_size and batch_size you need.")
    scores, maps = session.run(["scores", "maps"], {"images": images.detach().cpu().float().numpy()})
    return Prediction(torch.from_numpy(scores), torch.from_numpy(maps))


def latency(detector: nn.Module, path: str | Path, images: torch.Tensor, repeats: int = 10) -> dict[str, np.ndarray]:
    """Seconds per call at the exported batch size, PyTorch `detector.predict` vs onnxruntime, on the same images.

    Returns {"pytorch": [repeats], "onnxruntime": [repeats]} from `cu.device.time_runs` (after a
    warm-up each), both on the CPU with torch's thread count, plus "max_map_difference" (one
    number, the largest |map difference| relative to the largest PyTorch map value).
    """
    from course_utils.device import time_runs

    session = onnx_session(path)
    device, detector.device = detector.device, torch.device("cpu")  # both on the CPU, even where a GPU is present
    try:
        reference, exported = detector.predict(images), predict_onnx(session, images)
        difference = float((reference.maps - exported.maps).abs().max() / reference.maps.abs().max().clamp_min(1e-12))
        return {"pytorch": time_runs(lambda: detector.predict(images), repeat=repeats),
                "onnxruntime": time_runs(lambda: predict_onnx(session, images), repeat=repeats),
                "max_map_difference": np.array(difference)}
    finally:
        detector.device = device
