"""Anomaly scoring: the pieces the detectors of labs 5-7 are built from.

Every detector in the course ends the same way: an anomaly map per image (how unusual each
pixel looks) and one score per image (how unusual the whole image looks). Here: smoothing and
image scores; reconstruction and feature errors; the one batched-inference loop
(`run_in_batches`); where a feature cell looks (`stage_geometry`) and the one map
post-processor that puts it there (`to_image_maps`); the one patch embedding; PatchCore's
nearest neighbours, coreset and re-weighting; PaDiM's shrunk Gaussians. The detectors
themselves (`PatchCore`, `PaDiM`, ...) live in `course_utils.detectors` (re-exported here).
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

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
def run_in_batches(model: nn.Module | Callable, inputs: torch.Tensor, batch_size: int = 32,
                   device: torch.device | str | None = None, to_cpu: bool = True) -> Any:
    """Apply `model` to `inputs` [N, ...] in batches of `batch_size`; outputs [N, ...] on the CPU.

    The one batched-inference loop of the course: reconstructions (`ConvAutoencoder`: images in,
    images out), pretrained features (`FeatureExtractor`: images in, a dict of feature maps out)
    and the detectors' embeddings all go through it. `model` is an `nn.Module` (put in eval mode
    and moved to `device`, by default the device of its parameters) or any function of a batch.
    Outputs may be tensors or dicts of tensors; `to_cpu=False` keeps them on `device` (float32).
    """
    if isinstance(model, nn.Module):
        device = device or next(model.parameters(), torch.empty(0)).device
        model.eval().to(device)
    device = torch.device(device or "cpu")

    def run(batch: torch.Tensor) -> Any:
        out = model(batch.to(device))  # [b, ...] or {name: [b, ...]}
        move = (lambda t: t.float().cpu()) if to_cpu else (lambda t: t.float())
        return {k: move(v) for k, v in out.items()} if isinstance(out, dict) else move(out)

    outputs = [run(batch) for batch in inputs.split(batch_size)]
    if isinstance(outputs[0], dict):
        return {k: torch.cat([o[k] for o in outputs]) for k in outputs[0]}  # {name: [N, ...]}
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


def _pair(value: float | Sequence[float] | torch.Tensor) -> tuple[float, float]:
    """(y, x) from one number (both axes) or two numbers."""
    if torch.is_tensor(value):
        value = value.tolist()
    if isinstance(value, (int, float)):
        return float(value), float(value)
    return float(value[0]), float(value[1])


def place_cells(maps: torch.Tensor, size: int | tuple[int, int], stride: float | Sequence[float],
                offset: float | Sequence[float] = 0.0, out_stride: float | Sequence[float] = 1.0,
                out_offset: float | Sequence[float] = 0.0, align: bool = True) -> torch.Tensor:
    """Resample feature maps [N, C, h, w] onto a grid of `size` [N, C, H, W], cell centres where they belong.

    Cell (i, j) of a stage with `stride` s looks at the image around pixel (s*i + offset_y,
    s*j + offset_x) (its receptive-field centre, measured by `stage_geometry`); output cell (p, q)
    sits at (out_stride*p + out_offset_y, ...) (out_stride 1, offset 0: image pixels). Values are
    interpolated linearly between cell centres and held constant beyond the outermost ones.
    `align=False` ignores the geometry and does what `F.interpolate(..., align_corners=False)`
    does, which puts cell i at s*i + (s - 1)/2: for a stride-16 stage 7.5 px too far down-right.
    """
    size = (size, size) if isinstance(size, int) else tuple(size)
    if not align:
        return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)  # [N, C, H, W]
    (sy, sx), (oy, ox) = _pair(stride), _pair(offset)
    (ty, tx), (py, px) = _pair(out_stride), _pair(out_offset)
    h, w = maps.shape[-2:]

    def normalised(n_out: int, n_in: int, step: float, start: float, s: float, o: float) -> torch.Tensor:
        u = (start + step * torch.arange(n_out, dtype=maps.dtype, device=maps.device) - o) / s  # cell coordinate
        return 2 * u / (n_in - 1) - 1 if n_in > 1 else torch.zeros_like(u)  # grid_sample's [-1, 1]

    gy = normalised(size[0], h, ty, py, sy, oy)  # [H]
    gx = normalised(size[1], w, tx, px, sx, ox)  # [W]
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)  # [H, W, 2] as (x, y)
    grid = grid.expand(len(maps), *grid.shape)  # [N, H, W, 2]
    return F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=True)  # [N, C, H, W]


def to_image_maps(maps: torch.Tensor, size: int | tuple[int, int], sigma: float = 4.0,
                  stride: float | Sequence[float] | None = None, offset: float | Sequence[float] = 0.0,
                  align: bool = True) -> torch.Tensor:
    """Bring anomaly maps [N, h, w] to the image size [N, H, W] and smooth them: the course's one map post-processor.

    Pixel maps (of images resized to h x w) are resized bilinearly (`stride=None`). Feature maps
    pass the `stride` and measured `offset` of their stage, so each cell lands on the pixel it
    looks at (`place_cells`; `align=False` gives the old, shifted upsampling for comparison).
    `sigma` is the Gaussian blur in output pixels (0 = none). Image-level and pixel-level AUROC
    are computed on these maps.
    """
    size = (size, size) if isinstance(size, int) else tuple(size)
    if stride is not None:
        maps = place_cells(maps[:, None], size, stride, offset, align=align)[:, 0]  # [N, H, W]
    elif tuple(maps.shape[-2:]) != size:
        maps = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]  # [N, H, W]
    return gaussian_blur(maps, sigma)  # [N, H, W]


def _central_cells(maps: torch.Tensor, cells: int = 2) -> torch.Tensor:
    """The central `cells` x `cells` cells [n, C, cells, cells] of feature maps [n, C, h, w]."""
    i, j = maps.shape[-2] // 2 - cells // 2, maps.shape[-1] // 2 - cells // 2
    return maps[:, :, i:i + cells, j:j + cells]


def input_gradient_maps(backbone: nn.Module, layers: Sequence[str], images: torch.Tensor,
                        cells: int = 1) -> dict[str, torch.Tensor]:
    """How much each input pixel moves the central cells of each layer: {layer: [H, W]}.

    `images` [n, 3, H, W] in [0, 1] are ImageNet-normalised and run through `backbone`; for each
    layer we take the central `cells` x `cells` cells of its feature map (all channels) and return
    |d sum|cells| / d pixel|, summed over the images and the colour channels. Where the map is non-zero,
    the pixel lies in the cells' receptive field; how the weight spreads shows which of those pixels
    matter (the effective receptive field). One forward pass, one backward pass per layer.
    """
    from course_utils.backbones import imagenet_normalize

    modules = dict(backbone.named_modules())
    missing = [name for name in layers if name not in modules]
    if missing:
        raise ValueError(f"layers {missing} are not in the backbone; e.g. {[n for n in modules if n.count('.') == 1][:8]}")
    x = images.detach().to(next(backbone.parameters()).device).requires_grad_(True)  # [n, 3, H, W]
    outputs: dict[str, torch.Tensor] = {}
    hooks = [modules[name].register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, o))
             for name in layers]
    try:
        with torch.enable_grad():
            backbone(imagenet_normalize(x))
            central = {name: _central_cells(outputs[name], cells) for name in layers}  # [n, C, c, c] each
    finally:
        for hook in hooks:
            hook.remove()
    maps = {}
    for name in layers:
        (grad,) = torch.autograd.grad(central[name].abs().sum(), x, retain_graph=True)  # [n, 3, H, W]
        maps[name] = grad.abs().sum(dim=(0, 1)).cpu()  # [H, W]
    return maps


def receptive_field_extent(weight: torch.Tensor, mass: float = 1.0) -> tuple[int, int]:
    """(height, width) in pixels of the part of a gradient map [H, W] that holds its central `mass` share.

    With `mass=1` it is the extent of the non-zero gradient: the receptive field, measured (clipped by
    the image's border when the field is larger than the image). With e.g. `mass=0.9` it is the
    distance between the 5 % and 95 % points of the weight summed along each axis: the *effective*
    receptive field, usually much smaller, because the centre is reached by many more paths.
    """
    if weight.dim() != 2 or not 0 < mass <= 1:
        raise ValueError(f"need a gradient map [H, W] and 0 < mass <= 1; got {tuple(weight.shape)} and {mass}")
    extent = []
    for axis in (1, 0):  # rows (sum over columns), then columns
        profile = weight.double().sum(dim=axis)  # [H] or [W]
        if mass == 1.0:
            where = torch.nonzero(profile > 0).flatten()
            extent.append(int(where[-1] - where[0] + 1) if len(where) else 0)
        else:
            cumulative = profile.cumsum(0) / profile.sum()  # [H] or [W], rising to 1
            low = int(torch.searchsorted(cumulative, torch.tensor((1 - mass) / 2, dtype=cumulative.dtype)))
            high = int(torch.searchsorted(cumulative, torch.tensor((1 + mass) / 2, dtype=cumulative.dtype)))
            extent.append(high - low + 1)
    return extent[0], extent[1]


_GEOMETRY_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def stage_geometry(backbone: nn.Module, layers: Sequence[str], image_size: int = 128, n_images: int = 4,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Measured stride [S] and receptive-field centre offset [S, 2] (y, x pixels) of each layer of `backbone`.

    Cell i of a stage with stride s is centred at pixel s*i + offset. We measure where it looks:
    the gradient of the central 2x2 cells of each layer with respect to `n_images` random images
    (`input_gradient_maps`); the centroid of its magnitude is the centre. For EfficientNet-Lite0 the
    offsets are negative (about -0.5, -3, -5 px for blocks.1-3): its learned kernels weigh the up-left
    more. Results are cached per backbone object, so measuring costs one backward pass per backbone.
    """
    cache = _GEOMETRY_CACHE.setdefault(backbone, {})
    missing = [name for name in layers if name not in cache]
    if missing:
        x = torch.rand(n_images, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))
        modules = dict(backbone.named_modules())
        sizes: dict[str, tuple[int, int]] = {}
        hooks = [modules[name].register_forward_hook(lambda m, i, o, name=name: sizes.__setitem__(name, o.shape[-2:]))
                 for name in missing]
        try:
            weights = input_gradient_maps(backbone, missing, x, cells=2)  # {layer: [S, S]}
        finally:
            for hook in hooks:
                hook.remove()
        pixels = torch.arange(image_size, dtype=torch.float32)  # [S]
        for name in missing:
            h, w = sizes[name]
            stride = image_size / h
            weight = weights[name]  # [S, S]: how much each pixel moves the four cells
            cy = (weight.sum(1) * pixels).sum() / weight.sum()  # centroid row
            cx = (weight.sum(0) * pixels).sum() / weight.sum()  # centroid column
            # the four cells' centre is cell (h/2 - 0.5, w/2 - 0.5), at pixel stride * that + offset
            cache[name] = (stride, (cy.item() - stride * (h // 2 - 0.5), cx.item() - stride * (w // 2 - 0.5)))
    strides = torch.tensor([cache[name][0] for name in layers])  # [S]
    offsets = torch.tensor([cache[name][1] for name in layers])  # [S, 2]
    return strides, offsets


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


def patch_embedding(feature_maps: Sequence[torch.Tensor], neighbourhood: int = 3,
                    strides: Sequence[float] | torch.Tensor | None = None,
                    offsets: Sequence[Sequence[float]] | torch.Tensor | None = None,
                    scale_to: int = 0, align: bool = True) -> torch.Tensor:
    """Local patch features from feature maps of several depths of a CNN: the course's one embedding.

    `feature_maps` are [B, C_i, h_i, w_i]. Each map is averaged over a `neighbourhood` x
    `neighbourhood` window (so a patch also sees its neighbours; 1 = off; borders average only
    the cells that exist), brought to the grid of map number `scale_to` (finer maps are first
    average-pooled by the stride ratio, coarser maps interpolated), and all are concatenated along
    channels: [B, sum(C_i), h, w], one feature vector per cell of that map. `strides` [S] and
    `offsets` [S, 2] (from `stage_geometry`) place every cell at its receptive-field centre;
    without them strides are read from the map sizes and offsets taken as 0. `align=False`
    reproduces the old `F.interpolate(align_corners=False)` stacking.
    """
    heights = [f.shape[-2] for f in feature_maps]
    if strides is None:
        strides = [heights[0] / h for h in heights]  # in units of the first map's cells
    strides = [float(s) for s in strides]
    offsets = [(0.0, 0.0)] * len(feature_maps) if offsets is None else [_pair(o) for o in offsets]
    size, target = feature_maps[scale_to].shape[-2:], strides[scale_to]
    pad = neighbourhood // 2
    out = []
    for f, stride, offset in zip(feature_maps, strides, offsets):
        f = F.avg_pool2d(f, neighbourhood, 1, pad, count_include_pad=False)  # [B, C_i, h_i, w_i]
        if tuple(f.shape[-2:]) == tuple(size):
            out.append(f)
            continue
        factor = round(target / stride)
        if factor > 1:  # a finer map: average each factor x factor block first (no aliasing)
            if not align:
                out.append(F.adaptive_avg_pool2d(f, size))  # [B, C_i, h, w]
                continue
            f = F.avg_pool2d(f, factor, factor, ceil_mode=True)  # [B, C_i, ~h, ~w]
            offset = tuple(o + stride * (factor - 1) / 2 for o in offset)
            stride = stride * factor
        out.append(place_cells(f, size, stride, offset, target, offsets[scale_to], align=align))  # [B, C_i, h, w]
    return torch.cat(out, dim=1)  # [B, sum C_i, h, w]


def squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """All squared Euclidean distances between rows of x [n, D] and rows of y [m, D], as [n, m].

    Uses |x - y|^2 = |x|^2 - 2 x.y + |y|^2, so the work is one matrix product.
    """
    dist = torch.addmm((y * y).sum(1)[None], x, y.T, alpha=-2)  # [n, m]: |y|^2 - 2 x.y
    return dist.add_((x * x).sum(1, keepdim=True)).clamp_min_(0)  # [n, m]


def faiss_available() -> bool:
    """True when the optional `faiss` package (PyPI `faiss-cpu`, the course's `fast` extra) imports."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


FAISS_MIN_WORK = 2e7  # queries x bank rows from which `backend="auto"` hands the search to faiss (measured faster)


def nearest_neighbours(queries: torch.Tensor, bank: torch.Tensor, k: int = 1, chunk_size: int | None = None,
                       backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """The `k` nearest rows of bank [M, D] to each row of queries [Q, D]: exact, Euclidean.

    Returns (distances [Q, k], indices [Q, k]), nearest first. `backend="torch"`: brute force,
    queries in chunks of `chunk_size` (default: as many as keep the distance matrix
    [chunk_size, M] at 2^24 numbers, 64 MB), so memory stays flat however many queries;
    `"faiss"`: faiss's exact `IndexFlatL2` (same answers, its own fused kernels; needs
    `pip install faiss-cpu`); `"auto"`: faiss for large CPU searches (at least
    `FAISS_MIN_WORK` query-bank pairs) when it is installed, else torch.
    """
    if backend not in ("auto", "torch", "faiss"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'faiss', not {backend!r}.")
    large = len(queries) * len(bank) >= FAISS_MIN_WORK and queries.device.type == "cpu"
    if backend == "faiss" or (backend == "auto" and large and faiss_available()):
        return _faiss_search(queries, bank, k)
    chunk_size = chunk_size or max(256, 2**24 // max(1, len(bank)))
    chunks = queries.split(chunk_size) if len(queries) > chunk_size else (queries,)  # one chunk: a plain graph for ONNX
    found = [squared_distances(q, bank).topk(k, dim=1, largest=False) for q in chunks]
    distances = torch.cat([f.values for f in found]).sqrt_()  # [Q, k]
    return distances, torch.cat([f.indices for f in found])  # [Q, k], [Q, k]


def distance_contrast(queries: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Nearest over farthest Euclidean distance from each query [Q, D] to the points [N, D], as [Q].

    Near 0: a query's nearest point is much closer than its farthest, so "nearest" singles something
    out. Near 1: every point is about as far away as every other, and nearest-neighbour methods lose
    their footing (the curse of dimensionality, lab 1). Keep the queries out of `points`, or the
    nearest distance is 0.
    """
    if queries.ndim != 2 or points.ndim != 2 or queries.shape[1] != points.shape[1]:
        raise ValueError(f"distance_contrast needs queries [Q, D] and points [N, D] with the same D; got "
                         f"{tuple(queries.shape)} and {tuple(points.shape)}: flatten each example into one row")
    dist = squared_distances(queries, points).sqrt()  # [Q, N]
    return dist.min(dim=1).values / dist.max(dim=1).values  # [Q]


def _faiss_search(queries: torch.Tensor, bank: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`nearest_neighbours` by faiss's exact flat L2 index (on the CPU); a clear error when faiss is missing."""
    try:
        import faiss
    except ImportError:
        raise ImportError("backend='faiss' needs faiss: pip install faiss-cpu (or the course's extra: "
                          "pip install -e '.[fast]'), or use backend='torch'.") from None
    faiss.omp_set_num_threads(torch.get_num_threads())
    index = faiss.IndexFlatL2(bank.shape[1])
    index.add(bank.detach().float().cpu().contiguous().numpy())
    squared, indices = index.search(queries.detach().float().cpu().contiguous().numpy(), k)  # [Q, k] each
    distances = torch.from_numpy(squared).clamp_min_(0).sqrt_().to(queries.device)  # [Q, k]
    return distances, torch.from_numpy(indices).to(queries.device)  # [Q, k], [Q, k]


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


def greedy_coreset(features: torch.Tensor, n: int, projection_dim: int = 64, seed: int = 0,
                   chunk_size: int | None = None) -> torch.Tensor:
    """Indices [n] of a k-center greedy coreset of features [N, D].

    Start from a random point, then repeatedly add the point farthest from everything chosen so
    far: the chosen points cover the whole set, rare patches included. Runs on a random projection
    to `projection_dim` dimensions and keeps a running vector of each point's squared distance to
    its nearest chosen point, so one step is one matrix-vector product over all N points: the
    exact greedy costs N x n, which grows with the square of the number of training images.

    `chunk_size` (e.g. 65536) makes it linear-time and approximate (`chunked_coreset`): the points
    are taken a chunk at a time, each chunk's greedy starting from the distances to the points
    already chosen, so every step scans one chunk instead of all N.
    """
    if not 0 < n <= len(features):
        raise ValueError(f"Cannot choose {n} of {len(features)} points: use 1 <= n <= {len(features)}.")
    z = random_projection(features, projection_dim, seed)  # [N, d]
    if chunk_size is not None and chunk_size < len(z):
        return chunked_coreset(z, n, chunk_size, seed)
    first = torch.randint(len(z), (), generator=torch.Generator().manual_seed(seed)).item()
    min_dist = torch.full((len(z),), float("inf"), device=z.device, dtype=z.dtype)  # [N]
    return _greedy_steps(z, min_dist, n, first)


def _greedy_steps(z: torch.Tensor, min_dist: torch.Tensor, n: int, first: int) -> torch.Tensor:
    """n steps of greedy k-center on z [N, d] from `first`; `min_dist` [N] (updated in place) holds each
    point's squared distance to what was chosen before. Returns the chosen indices [n]."""
    z_t = z.T.contiguous()  # [d, N]: each step reads memory in order
    sq_norms = (z * z).sum(1)  # [N]
    chosen = torch.empty(n, dtype=torch.long, device=z.device)
    idx = torch.tensor(first, device=z.device)
    with _one_cpu_thread(z.device):
        for i in range(n):
            chosen[i] = idx
            dist = (z[idx] @ z_t).mul_(-2).add_(sq_norms).add_(sq_norms[idx])  # [N]: |z - z_idx|^2
            torch.minimum(min_dist, dist, out=min_dist)  # [N]
            idx = min_dist.argmax()  # the point worst covered so far
    return chosen


def chunked_coreset(z: torch.Tensor, n: int, chunk_size: int = 65536, seed: int = 0) -> torch.Tensor:
    """Approximate greedy k-center: indices [n] of z [N, d], one chunk of `chunk_size` points at a time.

    The points are shuffled (seeded) and cut into chunks; each chunk gets its share of the n
    selections. A chunk first measures how far each of its points is from the points chosen in
    earlier chunks (one matrix product, `nearest_neighbours`), so it only adds what they do not
    cover yet, then runs the exact greedy steps on its own points. One step costs a chunk, not
    all N: the greedy loop grows linearly with the data (the matrix products grow with N x n,
    but run at full BLAS speed).
    """
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(z), generator=generator).to(z.device)  # [N]
    n_chunks = math.ceil(len(z) / chunk_size)
    quotas = torch.linspace(0, n, n_chunks + 1).round().long().diff().tolist()  # selections per chunk
    chosen: list[torch.Tensor] = []
    for c, quota in enumerate(quotas):
        members = order[c * chunk_size:(c + 1) * chunk_size]  # [c_n]
        if quota == 0:
            continue
        part = z[members]  # [c_n, d]
        if chosen:
            picked = z[torch.cat(chosen)]  # [k, d]
            min_dist = nearest_neighbours(part, picked, backend="torch")[0][:, 0].square_()  # [c_n]
            first = int(min_dist.argmax())
        else:
            min_dist = torch.full((len(part),), float("inf"), device=z.device, dtype=z.dtype)  # [c_n]
            first = int(torch.randint(len(part), (), generator=generator))
        chosen.append(members[_greedy_steps(part, min_dist, quota, first)])
    return torch.cat(chosen)  # [n]


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
    worst = distances.argmax(dim=1, keepdim=True)  # [N, 1]: each image's worst patch
    s_star = distances.gather(1, worst)[:, 0]  # [N]
    k = min(num_neighbors, len(bank))
    if k <= 1:
        return s_star
    m_star = nearest.gather(1, worst)[:, 0]  # [N]: the worst patch's nearest bank entry
    _, support = nearest_neighbours(bank[m_star], bank, k, backend="torch")  # [N, k], m* first
    worst_patch = patches.gather(1, worst[:, :, None].expand(-1, 1, patches.shape[-1]))  # [N, 1, D]
    to_support = (worst_patch - bank[support]).norm(dim=-1)  # [N, k]
    return (1 - to_support.softmax(dim=1)[:, 0]) * s_star  # [N]


class Gaussians(NamedTuple):
    """PaDiM's fitted model: `mean` [P, C], `precision` [P, C, C] (inverse covariance) and the
    `shrinkage` [P] applied at each of the P positions."""

    mean: torch.Tensor
    precision: torch.Tensor
    shrinkage: torch.Tensor


def ledoit_wolf_shrinkage(centred: torch.Tensor) -> torch.Tensor:
    """Ledoit-Wolf weights [P] for centred samples [P, N, C] (N samples of C numbers at P places).

    With few samples (N <= C) a sample covariance S is singular: directions the N samples did not
    vary in get variance 0, so new good samples look infinitely unusual there. Shrinking towards
    a scaled identity, (1 - a) S + a (trace(S) / C) I, fixes that; Ledoit and Wolf (2004) give the
    weight a that minimises the expected squared error of the estimate, from the data alone:
    a = min(b, d) / d with d = |S - mu I|^2 / C and b = (mean_k |x_k|^4 - |S|^2) / (C N).
    """
    n = centred.shape[1]
    cov = centred.transpose(1, 2) @ centred / n  # [P, C, C] (the 1/N estimate, as in the paper)
    fourth = ((centred * centred).sum(-1) ** 2).mean(1)  # [P] mean_k |x_k|^4
    return _ledoit_wolf_weight(cov, fourth, n)


def _ledoit_wolf_weight(cov: torch.Tensor, fourth: torch.Tensor, n: int) -> torch.Tensor:
    """The Ledoit-Wolf weight [P] from the 1/N covariances [P, C, C] and mean_k |x_k - mean|^4 [P] of n samples."""
    c = cov.shape[-1]
    mu = cov.diagonal(dim1=1, dim2=2).sum(-1) / c  # [P]
    cov_sq = (cov * cov).sum(dim=(1, 2))  # [P] |S|_F^2
    d = (cov_sq - c * mu ** 2) / c  # [P] |S - mu I|_F^2 / C
    b = ((fourth - cov_sq) / (c * n)).clamp_min(0)  # [P]
    return torch.where(d > 0, torch.minimum(b, d) / d.clamp_min(1e-12), torch.ones_like(d))  # [P]


class GaussianSums:
    """PaDiM's fit, batch by batch: running float64 sums of features [b, C, h, w], never all N at once.

    `add(features)` adds a batch; `gaussians(...)` turns the sums into `Gaussians`. Kept per
    position (P = h * w): the count, the sum of x, of x x^T, and, for the Ledoit-Wolf weight, of
    |x|^2 x and |x|^4, all of x minus the first batch's mean (a shift that keeps the float64
    sums accurate). Memory: P x C x C float64, however many images.
    """

    def __init__(self) -> None:
        self.n = 0
        self.shift = self.s1 = self.s2 = self.s3 = self.s4 = None

    def add(self, features: torch.Tensor) -> None:
        """Add a batch of feature maps [b, C, h, w] of good images."""
        x = features.flatten(2).permute(2, 0, 1).double().contiguous()  # [P, b, C]
        # contiguous: bmm on the permuted layout copies matrix by matrix (measured 60x slower)
        if self.shift is None:
            self.shift = x.mean(dim=1, keepdim=True)  # [P, 1, C]
            p, _, c = x.shape
            self.s1 = x.new_zeros(p, c)  # [P, C]
            self.s2 = x.new_zeros(p, c, c)  # [P, C, C]
            self.s3 = x.new_zeros(p, c)  # [P, C]
            self.s4 = x.new_zeros(p)  # [P]
        elif x.shape[0] != self.s1.shape[0] or x.shape[2] != self.s1.shape[1]:
            raise ValueError(f"Features of {x.shape[0]} positions x {x.shape[2]} channels do not match the "
                             f"first batch's {self.s1.shape[0]} x {self.s1.shape[1]}: give all images one size.")
        y = x - self.shift  # [P, b, C]
        sq = (y * y).sum(-1)  # [P, b] |y|^2
        self.n += x.shape[1]
        self.s1 += y.sum(1)
        self.s2.baddbmm_(y.transpose(1, 2), y)  # [P, C, C] += y^T y
        self.s3 += (sq[..., None] * y).sum(1)  # [P, C]
        self.s4 += (sq * sq).sum(1)  # [P]

    def gaussians(self, regularization: float = 0.01, shrinkage: float | str = "ledoit_wolf",
                  chunk: int = 256) -> Gaussians:
        """`Gaussians(mean [P, C], precision [P, C, C], shrinkage [P])` from the sums (float32), `chunk` positions at a time."""
        n = self.n
        if n < 2:
            raise ValueError("A covariance needs at least 2 good images; pass more training images.")
        if not (shrinkage == "ledoit_wolf" or (isinstance(shrinkage, (int, float)) and 0 <= shrinkage <= 1)):
            raise ValueError(f"shrinkage must be 'ledoit_wolf' or a number in [0, 1], not {shrinkage!r}.")
        p, c = self.s1.shape
        mean, precision = torch.empty(p, c, device=self.s1.device), torch.empty(p, c, c, device=self.s1.device)
        weights = torch.empty(p, device=self.s1.device)
        eye = torch.eye(c, device=self.s1.device, dtype=torch.float64)  # [C, C]
        with _one_cpu_thread(self.s1.device):  # P small inverses: one thread is 20x faster on a busy CPU (measured)
            for rows in torch.arange(p, device=self.s1.device).split(chunk):
                self._gaussians_at(rows, regularization, shrinkage, eye, mean, precision, weights)
        return Gaussians(mean, precision, weights)  # [P, C], [P, C, C], [P]

    def _gaussians_at(self, rows: torch.Tensor, regularization: float, shrinkage: float | str, eye: torch.Tensor,
                      mean: torch.Tensor, precision: torch.Tensor, weights: torch.Tensor) -> None:
        """Fill mean, precision and weights at positions `rows` from the sums."""
        n = self.n
        m = self.s1[rows] / n  # [p, C] mean of y
        s2 = self.s2[rows]  # [p, C, C]
        cov = s2 / n - m[:, :, None] * m[:, None, :]  # [p, C, C] the 1/N covariance
        if shrinkage == "ledoit_wolf":
            weight = _ledoit_wolf_weight(cov, self._fourth_moment(rows, m) / n, n)  # [p]
        else:
            weight = torch.full((len(rows),), float(shrinkage), dtype=torch.float64, device=m.device)  # [p]
        cov = cov * (n / (n - 1))  # [p, C, C] unbiased
        scale = cov.diagonal(dim1=1, dim2=2).mean(-1)  # [p] average variance
        a = weight.view(-1, 1, 1)
        cov = (1 - a) * cov + a * scale.view(-1, 1, 1) * eye + regularization * eye  # [p, C, C]
        mean[rows] = (m + self.shift[rows, 0]).float()
        precision[rows] = torch.cholesky_inverse(torch.linalg.cholesky(cov)).float()  # cov is symmetric positive definite
        weights[rows] = weight.float()

    def _fourth_moment(self, rows: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """sum_k |y_k - m|^4 [p] at positions `rows`, from the sums (m [p, C] the mean of y there)."""
        s2, n = self.s2[rows], self.n
        m_sq = (m * m).sum(-1)  # [p] |m|^2
        trace = s2.diagonal(dim1=1, dim2=2).sum(-1)  # [p] sum_k |y_k|^2
        m_s2_m = (m[:, None, :] @ s2 @ m[:, :, None])[:, 0, 0]  # [p] sum_k (y_k . m)^2
        return (self.s4[rows] - 4 * (m * self.s3[rows]).sum(-1) + 2 * m_sq * trace
                + 4 * m_s2_m - 3 * n * m_sq ** 2)  # [p]


def gaussian_per_position(features: torch.Tensor, regularization: float = 0.01,
                          shrinkage: float | str = "ledoit_wolf") -> Gaussians:
    """PaDiM's model: one Gaussian per patch position, fitted to features [N, C, h, w] of N good images.

    Returns `Gaussians(mean [P, C], precision [P, C, C], shrinkage [P])` with P = h * w. The
    covariance at each position is the sample covariance S shrunk towards (trace(S) / C) I with
    weight a (`shrinkage="ledoit_wolf"`: a chosen from the data per position, see
    `ledoit_wolf_shrinkage`; a number: that a everywhere; 0: the paper's plain S), plus
    `regularization` times the identity (the paper's 0.01, which keeps it invertible). The
    work is `GaussianSums`, which `PaDiM.fit` feeds batch by batch.
    """
    sums = GaussianSums()
    sums.add(features)
    return sums.gaussians(regularization, shrinkage)


def mahalanobis_maps(features: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """Mahalanobis distance maps [N, h, w] of features [N, C, h, w] to per-position Gaussians.

    `mean` [P, C] and `precision` [P, C, C] come from `gaussian_per_position`; all positions are
    computed at once: sqrt(delta^T precision delta) with delta the feature minus its position's mean.
    """
    n, c, h, w = features.shape
    delta = (features.flatten(2).permute(2, 0, 1) - mean[:, None]).contiguous()  # [P, N, C]
    # contiguous: a permuted batch makes bmm copy its P matrices one by one (profiled: 63% of PaDiM's predict)
    squared = ((delta @ precision) * delta).sum(-1)  # [P, N]
    return squared.clamp_min_(0).sqrt_().T.reshape(n, h, w)  # [N, h, w]




def __getattr__(name: str) -> Any:
    """`cu.anomaly.PatchCore` and `cu.anomaly.PaDiM` live in `course_utils.detectors`; re-exported here."""
    if name in ("PatchCore", "PaDiM", "Prediction"):
        from course_utils import detectors

        return getattr(detectors, name)
    raise AttributeError(f"module 'course_utils.anomaly' has no attribute {name!r}")
