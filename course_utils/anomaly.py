"""Anomaly scoring: from per-pixel anomaly maps to image scores, and the detectors of labs 5-7.

Every detector in the course ends the same way: an anomaly map per image (how unusual each
pixel looks) and one score per image (how unusual the whole image looks). The helpers at the top
turn maps into smoothed maps and image scores; the detectors below (PatchCore, PaDiM) share them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn


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


# --- Labs 5-6: reconstruction scoring ---
# An autoencoder trained on good images reproduces good images well and defects badly, so the
# difference between input and reconstruction is an anomaly map. These helpers compute it for
# pixels (squared error, SSIM) and for feature maps, and bring every map to the image's size.


@torch.no_grad()
def run_in_batches(model: nn.Module, inputs: torch.Tensor, batch_size: int = 32,
                   device: torch.device | None = None) -> torch.Tensor:
    """Apply `model` in eval mode to `inputs` [N, ...] in batches; outputs [N, ...] on the CPU.

    Used for reconstructions (`ConvAutoencoder`: images in, images out) and for pretrained
    features (`MultiLayerFeatures`: images in, feature maps out).
    """
    device = device or next(model.parameters()).device
    model.eval().to(device)
    outputs = [model(inputs[i:i + batch_size].to(device)).float().cpu()  # [b, ...]
               for i in range(0, len(inputs), batch_size)]
    return torch.cat(outputs)  # [N, ...]


def reconstruction_error_map(images: torch.Tensor, recons: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Per-pixel anomaly maps [N, H, W] from images and their reconstructions [N, C, H, W].

    `kind="mse"`: squared error averaged over the colour channels; `"ssim"`: 1 - SSIM (high
    where the local structure differs, even if the colours are close); `"l1"`: absolute error.
    """
    if images.shape != recons.shape:
        raise ValueError(f"images {tuple(images.shape)} and reconstructions {tuple(recons.shape)} "
                         "must have the same shape: did the autoencoder change the image size?")
    if kind == "mse":
        return ((images - recons) ** 2).mean(dim=1)  # [N, H, W]
    if kind == "l1":
        return (images - recons).abs().mean(dim=1)  # [N, H, W]
    if kind == "ssim":
        from course_utils.losses import ssim

        return 1 - ssim(images, recons, reduction="none")  # [N, H, W]
    raise ValueError(f"kind must be 'mse', 'l1' or 'ssim', not {kind!r}")


def feature_error_map(features: torch.Tensor, recons: torch.Tensor) -> torch.Tensor:
    """Anomaly maps [N, h, w] of a feature autoencoder: squared error per position, channel mean.

    `features` and `recons` are [N, C, h, w] (standardised features and their reconstruction).
    """
    return ((features - recons) ** 2).mean(dim=1)  # [N, h, w]


def channel_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std [1, C, 1, 1] of feature maps [N, C, h, w] of good images.

    Standardise with `(f - mean) / std` so that every channel counts alike in the feature error
    (raw EfficientNet channels differ in scale by orders of magnitude).
    """
    mean = features.mean(dim=(0, 2, 3), keepdim=True)  # [1, C, 1, 1]
    std = features.std(dim=(0, 2, 3), keepdim=True) + 1e-6  # [1, C, 1, 1]
    return mean, std


def to_image_maps(maps: torch.Tensor, size: int | tuple[int, int], sigma: float = 4.0) -> torch.Tensor:
    """Resize anomaly maps [N, h, w] to the image size [N, H, W] (bilinear) and smooth them.

    `sigma` is the Gaussian blur in output pixels (0 = none). Image-level and pixel-level AUROC
    are computed on these maps.
    """
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(maps.shape[-2:]) != size:
        maps = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return gaussian_blur(maps, sigma)  # [N, H, W]


# --- Lab 7: PatchCore and PaDiM ---
# Neither detector trains anything. A pretrained CNN already describes every patch of an image;
# PatchCore keeps a memory bank of the patches of good images and calls a patch anomalous when
# its nearest neighbour in the bank is far away; PaDiM fits one Gaussian per patch position and
# measures how many standard deviations (Mahalanobis distance) a patch lies from it.


def _check_images(images: torch.Tensor) -> None:
    """Raise a clear error unless `images` is a float tensor [N, 3, H, W] with values in [0, 1]."""
    if not torch.is_tensor(images) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"Expected images as a tensor [N, 3, H, W], got {shape}; stack them with torch.stack.")
    if not images.is_floating_point() or images.min() < -0.01 or images.max() > 1.01:
        raise ValueError("Expected float images with values in [0, 1]; for uint8 images use images.float() / 255.")


def patch_embedding(feature_maps: Sequence[torch.Tensor], neighbourhood: int = 3) -> torch.Tensor:
    """Local patch features from feature maps of several depths of a CNN.

    `feature_maps` are [B, C_i, h_i, w_i], shallowest first. Each map is averaged over a
    `neighbourhood` x `neighbourhood` window (so a patch also sees its neighbours; 1 = off), the
    deeper maps are upsampled to the size of the first, and all are concatenated along channels:
    the result is [B, sum(C_i), h_0, w_0], one feature vector per patch of the first map.
    """
    size = feature_maps[0].shape[-2:]
    pad = neighbourhood // 2
    pooled = [F.avg_pool2d(f, neighbourhood, 1, pad, count_include_pad=False) for f in feature_maps]  # [B, C_i, h_i, w_i]
    resized = [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in pooled]  # [B, C_i, h_0, w_0]
    return torch.cat(resized, dim=1)  # [B, sum C_i, h_0, w_0]


def squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """All squared Euclidean distances between rows of x [n, D] and rows of y [m, D], as [n, m].

    Uses |x - y|^2 = |x|^2 - 2 x.y + |y|^2, so the work is one matrix product.
    """
    dist = torch.addmm((y * y).sum(1)[None], x, y.T, alpha=-2)  # [n, m]: |y|^2 - 2 x.y
    return dist.add_((x * x).sum(1, keepdim=True)).clamp_min_(0)  # [n, m]


def nearest_neighbours(queries: torch.Tensor, bank: torch.Tensor, k: int = 1,
                       chunk_size: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """The `k` nearest rows of bank [M, D] to each row of queries [Q, D], by brute force.

    Returns (distances [Q, k], indices [Q, k]), nearest first, Euclidean. Queries go in chunks of
    `chunk_size` so the distance matrix in memory stays at most [chunk_size, M].
    """
    found = [squared_distances(q, bank).topk(k, dim=1, largest=False) for q in queries.split(chunk_size)]
    distances = torch.cat([f.values for f in found]).sqrt_()  # [Q, k]
    return distances, torch.cat([f.indices for f in found])  # [Q, k], [Q, k]


def random_projection(x: torch.Tensor, dim: int, seed: int = 0) -> torch.Tensor:
    """Project x [N, D] to [N, dim] with a random Gaussian matrix (scaled so lengths are kept).

    By the Johnson-Lindenstrauss lemma all pairwise distances survive approximately, which is all
    a coreset search needs. Returns x itself when D <= dim.
    """
    if x.shape[1] <= dim:
        return x
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(x.shape[1], dim, generator=generator) / math.sqrt(dim)  # [D, dim]
    return x @ matrix.to(x)  # [N, dim]


def greedy_coreset(features: torch.Tensor, n: int, projection_dim: int = 64, seed: int = 0) -> torch.Tensor:
    """Indices [n] of a k-center greedy coreset of features [N, D].

    Start from a random point, then repeatedly add the point farthest from everything chosen so
    far: the chosen points cover the whole set, rare patches included. Runs on a random projection
    to `projection_dim` dimensions and keeps a running vector of each point's squared distance to
    its nearest chosen point, so one step is one matrix-vector product over all N points.
    """
    if not 0 < n <= len(features):
        raise ValueError(f"Cannot choose {n} of {len(features)} points: use 1 <= n <= {len(features)}.")
    z = random_projection(features, projection_dim, seed)  # [N, d]
    z_t = z.T.contiguous()  # [d, N]: each step reads memory in order
    sq_norms = (z * z).sum(1)  # [N]
    min_dist = torch.full_like(sq_norms, float("inf"))  # [N]
    chosen = torch.empty(n, dtype=torch.long, device=z.device)
    idx = torch.randint(len(z), (), generator=torch.Generator().manual_seed(seed)).to(z.device)
    with _one_cpu_thread(z.device):
        for i in range(n):
            chosen[i] = idx
            dist = (z[idx] @ z_t).mul_(-2).add_(sq_norms).add_(sq_norms[idx])  # [N]: |z - z_idx|^2
            torch.minimum(min_dist, dist, out=min_dist)  # [N]
            idx = min_dist.argmax()  # the point worst covered so far
    return chosen


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run a loop of small CPU tensor operations on one thread, then restore the thread count.

    Each step of the coreset loop is a few operations on one vector; with several threads
    every operation waits for all of them, which on a busy CPU costs more than the work itself
    (measured: 20 ms instead of 0.03 ms per operation on a loaded 2-core machine).
    """
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def reweighted_scores(patches: torch.Tensor, distances: torch.Tensor, nearest: torch.Tensor,
                      bank: torch.Tensor, num_neighbors: int = 9) -> torch.Tensor:
    """PatchCore's image scores [N] from test patches [N, P, D], their nearest-neighbour distances
    [N, P] and indices [N, P] into the memory bank [M, D].

    Take each image's worst patch (distance s*) and its nearest bank entry m*. If m* sits in a
    dense part of the bank, the patch is about as far from m*'s neighbours as from m* and the
    score is damped (by up to 1 - 1/k); if m* is isolated (already a rare normal pattern), the
    patch is much closer to m* than to its neighbours and the score stays near s*:
    s = (1 - softmax(d)[0]) * s*, with d the patch's distances to m* and to m*'s
    k - 1 = `num_neighbors` - 1 nearest neighbours in the bank.
    """
    rows = torch.arange(len(patches), device=patches.device)
    worst = distances.argmax(dim=1)  # [N]
    s_star = distances[rows, worst]  # [N]
    if num_neighbors <= 1:
        return s_star
    _, support = nearest_neighbours(bank[nearest[rows, worst]], bank, min(num_neighbors, len(bank)))  # [N, k], m* first
    to_support = (patches[rows, worst][:, None] - bank[support]).norm(dim=-1)  # [N, k]
    return (1 - to_support.softmax(dim=1)[:, 0]) * s_star  # [N]


def gaussian_per_position(features: torch.Tensor, regularization: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """PaDiM's model: one Gaussian per patch position, fitted to features [N, C, h, w] of N good images.

    Returns (mean [P, C], precision [P, C, C]) with P = h * w; precision is the inverse of the
    covariance plus `regularization` times the identity (which keeps it invertible).
    """
    n, c, h, w = features.shape
    if n < 2:
        raise ValueError("A covariance needs at least 2 good images; pass more training images.")
    x = features.flatten(2).permute(2, 0, 1)  # [P, N, C]
    mean = x.mean(dim=1)  # [P, C]
    centred = x - mean[:, None]  # [P, N, C]
    cov = centred.transpose(1, 2) @ centred / (n - 1)  # [P, C, C]
    cov += regularization * torch.eye(c, device=cov.device, dtype=cov.dtype)  # [P, C, C]
    return mean, torch.linalg.inv(cov)  # [P, C], [P, C, C]


def mahalanobis_maps(features: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """Mahalanobis distance maps [N, h, w] of features [N, C, h, w] to per-position Gaussians.

    `mean` [P, C] and `precision` [P, C, C] come from `gaussian_per_position`; all positions are
    computed at once: sqrt(delta^T precision delta) with delta the feature minus its position's mean.
    """
    n, c, h, w = features.shape
    delta = features.flatten(2).permute(2, 0, 1) - mean[:, None]  # [P, N, C]
    squared = ((delta @ precision) * delta).sum(-1)  # [P, N]
    return squared.clamp_min_(0).sqrt_().T.reshape(n, h, w)  # [N, h, w]


class _PatchDetector:
    """What PatchCore and PaDiM share: a frozen feature extractor, batching, and map smoothing."""

    def __init__(self, backbone: nn.Module | None, layers: Sequence[str], sigma: float,
                 batch_size: int, device: torch.device | str | None) -> None:
        from course_utils.backbones import FeatureExtractor, pretrained_backbone

        self.device = torch.device(device) if device is not None else torch.device("cpu")
        backbone = backbone if backbone is not None else pretrained_backbone("efficientnet_lite0")
        self.extractor = FeatureExtractor(backbone, layers).to(self.device)
        self.layers, self.sigma, self.batch_size = tuple(layers), sigma, batch_size

    def _features(self, images: torch.Tensor, neighbourhood: int) -> torch.Tensor:
        """Patch embeddings [N, D, h, w] of images [N, 3, H, W], computed batch by batch on the device.

        Also records `self.stage_channels`, how many of the D channels each layer contributes.
        """
        _check_images(images)
        out = []
        for batch in images.split(self.batch_size):
            maps = self.extractor(batch.to(self.device))  # {layer: [b, C, h, w]}
            self.stage_channels = [maps[name].shape[1] for name in self.layers]
            out.append(patch_embedding([maps[name] for name in self.layers], neighbourhood))  # [b, D, h, w]
        return torch.cat(out)  # [N, D, h, w]

    def _to_image_maps(self, patch_maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Upsample patch maps [N, h, w] to image size [N, H, W] and smooth them with a Gaussian."""
        maps = F.interpolate(patch_maps[:, None], size=size, mode="bilinear", align_corners=False)  # [N, 1, H, W]
        return gaussian_blur(maps[:, 0], self.sigma)  # [N, H, W]


class PatchCore(_PatchDetector):
    """PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022).

    `fit(images)` stores the patch features of good images [N, 3, H, W] (values in [0, 1]) in a
    memory bank, thinned to `coreset_ratio` of its size by greedy coreset selection.
    `predict(images)` returns (scores [N], maps [N, H, W]): a patch's anomaly is the distance to
    its nearest neighbour in the bank; the image score is the worst patch's distance, re-weighted
    by how crowded the bank is around that patch's neighbour.
    """

    def __init__(self, backbone: nn.Module | None = None, layers: Sequence[str] = ("blocks.2", "blocks.3"),
                 coreset_ratio: float = 0.01, num_neighbors: int = 9, projection_dim: int = 64,
                 sigma: float = 4.0, batch_size: int = 32, device: torch.device | str | None = None,
                 seed: int = 0) -> None:
        if not 0 < coreset_ratio <= 1:
            raise ValueError(f"coreset_ratio must be in (0, 1], got {coreset_ratio}.")
        super().__init__(backbone, layers, sigma, batch_size, device)
        self.coreset_ratio, self.num_neighbors = coreset_ratio, num_neighbors
        self.projection_dim, self.seed = projection_dim, seed
        self.memory_bank: torch.Tensor | None = None  # [M, D] after fit
        self.stage_scales: torch.Tensor | None = None  # [S] mean feature length of each stage, after fit

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch features [N, D, h, w] of images [N, 3, H, W]: two stages, 3x3 neighbourhoods, each
        stage divided by its mean feature length on the good images (`stage_scales`, set by `fit`)."""
        features = self._features(images, neighbourhood=3)  # [N, D, h, w]
        if self.stage_scales is None:  # fit: measure each stage on the good images
            self.stage_scales = torch.stack([part.norm(dim=1).mean() for part in features.split(self.stage_channels, dim=1)])  # [S]
        scales = self.stage_scales.repeat_interleave(torch.tensor(self.stage_channels, device=features.device))  # [D]
        return features / scales.view(1, -1, 1, 1)  # [N, D, h, w]: every stage counts alike in distances

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> "PatchCore":
        """Build the memory bank [M, D] from good images [N, 3, H, W]; M = coreset_ratio * N * h * w."""
        self.stage_scales = None
        features = self.embed(images)  # [N, D, h, w]
        patches = features.permute(0, 2, 3, 1).flatten(0, 2)  # [N*h*w, D]
        n = max(1, round(self.coreset_ratio * len(patches)))
        keep = greedy_coreset(patches, n, self.projection_dim, self.seed) if n < len(patches) else slice(None)
        self.memory_bank = patches[keep].contiguous()  # [M, D]
        return self

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image scores [N] and smoothed anomaly maps [N, H, W] (on the CPU) for images [N, 3, H, W]."""
        if self.memory_bank is None:
            raise RuntimeError("PatchCore has no memory bank yet: call fit(good_images) first.")
        features = self.embed(images)  # [N, D, h, w]
        n, d, h, w = features.shape
        patches = features.permute(0, 2, 3, 1).reshape(n, h * w, d)  # [N, P, D]
        distances, nearest = nearest_neighbours(patches.flatten(0, 1), self.memory_bank)  # [N*P, 1] each
        distances, nearest = distances.view(n, h * w), nearest.view(n, h * w)  # [N, P]
        scores = reweighted_scores(patches, distances, nearest, self.memory_bank, self.num_neighbors)  # [N]
        maps = self._to_image_maps(distances.view(n, h, w), images.shape[-2:])  # [N, H, W]
        return scores.cpu(), maps.cpu()


class PaDiM(_PatchDetector):
    """PaDiM (Defard et al., "PaDiM: a Patch Distribution Modeling Framework", ICPR 2021).

    `fit(images)` fits, at every patch position of good images [N, 3, H, W] (values in [0, 1]),
    a Gaussian (mean, covariance) over a random subset of `n_features` feature channels.
    `predict(images)` returns (scores [N], maps [N, H, W]): a patch's anomaly is its Mahalanobis
    distance to the Gaussian of its position; an image's score is the maximum of its map.
    """

    def __init__(self, backbone: nn.Module | None = None,
                 layers: Sequence[str] = ("blocks.1", "blocks.2", "blocks.3"), n_features: int = 100,
                 regularization: float = 0.01, sigma: float = 4.0, batch_size: int = 32,
                 device: torch.device | str | None = None, seed: int = 0) -> None:
        super().__init__(backbone, layers, sigma, batch_size, device)
        self.n_features, self.regularization, self.seed = n_features, regularization, seed
        self.channels: torch.Tensor | None = None  # [C] indices of the kept channels
        self.mean: torch.Tensor | None = None  # [P, C] after fit
        self.precision: torch.Tensor | None = None  # [P, C, C] inverse covariances after fit

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Features [N, C, h, w] of images [N, 3, H, W]: all stages upsampled, a random channel subset."""
        features = self._features(images, neighbourhood=1)  # [N, D, h, w]
        if self.channels is None:
            generator = torch.Generator().manual_seed(self.seed)
            self.channels = torch.randperm(features.shape[1], generator=generator)[: self.n_features]
        return features[:, self.channels.to(features.device)]  # [N, C, h, w]

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> "PaDiM":
        """Fit mean [P, C] and inverse covariance [P, C, C] per patch position from good images."""
        self.channels = None
        features = self.embed(images)  # [N, C, h, w]
        self.mean, self.precision = gaussian_per_position(features, self.regularization)  # [P, C], [P, C, C]
        return self

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image scores [N] and smoothed anomaly maps [N, H, W] (on the CPU) for images [N, 3, H, W]."""
        if self.precision is None:
            raise RuntimeError("PaDiM has no Gaussians yet: call fit(good_images) first.")
        features = self.embed(images)  # [N, C, h, w]
        if features.shape[2] * features.shape[3] != len(self.mean):
            raise ValueError("PaDiM compares patch positions: give test images the size of the training images.")
        distances = mahalanobis_maps(features, self.mean, self.precision)  # [N, h, w]
        maps = self._to_image_maps(distances, images.shape[-2:])  # [N, H, W]
        return image_scores(maps, "max").cpu(), maps.cpu()
