"""Anomaly scoring: from per-pixel anomaly maps to image scores, and the detectors of labs 5-7.

Every detector in the course ends the same way: an anomaly map per image (how unusual each
pixel looks) and one score per image (how unusual the whole image looks). The helpers at the top
turn maps into smoothed maps and image scores; the detectors below (PatchCore, PaDiM) share them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_blur(maps: torch.Tensor, sigma: float = 4.0) -> torch.Tensor:
    """Smooth anomaly maps with a Gaussian of standard deviation `sigma` pixels.

    `maps` is [N, H, W] (or [H, W]); the result has the same shape. Smoothing removes the
    single-pixel noise of reconstruction errors and the blockiness of upsampled patch maps.
    The kernel is separable (one 1-D pass per axis) and reflect-padded, so borders stay fair.
    """
    if sigma <= 0:
        return maps
    squeeze = maps.dim() == 2
    x = maps[None] if squeeze else maps  # [N, H, W]
    radius = max(1, int(math.ceil(4 * sigma)))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()  # [2r+1]
    x = x[:, None]  # [N, 1, H, W]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    x = x[:, 0]  # [N, H, W]
    return x[0] if squeeze else x


def image_scores(maps: torch.Tensor, reduction: str = "max", top_k: float = 0.01) -> torch.Tensor:
    """Reduce anomaly maps [N, H, W] to one score per image [N].

    `reduction` is `"max"` (the most anomalous pixel), `"mean"` (the average pixel) or `"topk"`
    (the mean of the `top_k` fraction of highest pixels: a compromise that ignores single noisy
    pixels but still notices small defects).
    """
    flat = maps.flatten(1)  # [N, H*W]
    if reduction == "max":
        return flat.max(dim=1).values
    if reduction == "mean":
        return flat.mean(dim=1)
    if reduction == "topk":
        k = max(1, int(round(top_k * flat.shape[1])))
        return flat.topk(k, dim=1).values.mean(dim=1)
    raise ValueError(f"reduction must be 'max', 'mean' or 'topk', not {reduction!r}")
