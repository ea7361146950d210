"""Losses that judge images the way people do: SSIM (structure) and a feature (perceptual) loss.

Mean squared error compares pixels one by one. It punishes an image shifted by one pixel more
than a blurred one, although the shifted image looks right and the blurred one does not. Lab 6
fixes that in two ways:

- `ssim` / `SSIMLoss`: compare local means, contrasts and correlations in an 11x11 window
  (Wang et al., 2004), so that structure counts, not exact pixel values;
- `FeatureLoss`: compare images in the feature space of the ImageNet-trained EfficientNet-Lite0,
  at several depths (Johnson et al., 2016, "Perceptual losses for real-time style transfer and
  super-resolution"), optionally with their Gram matrices (texture statistics, Gatys et al.).

Lab 7 adds `contrastive_loss` (Hadsell et al., 2006): a margin loss on pairs that trains an
embedding in which similar things are close (few-shot learning with a metric).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from course_utils.backbones import imagenet_normalize, pretrained_backbone


def _gaussian_window(window: int, sigma: float, channels: int, like: torch.Tensor) -> torch.Tensor:
    """A normalised 2-D Gaussian kernel, one copy per channel: [C, 1, window, window]."""
    t = torch.arange(window, dtype=like.dtype, device=like.device) - (window - 1) / 2
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.sum()  # [window]
    return (g[:, None] * g[None, :]).expand(channels, 1, window, window).contiguous()


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5,
         data_range: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """Structural similarity of two image batches x, y [B, C, H, W] with values in [0, data_range].

    For every pixel, a Gaussian window (`window` x `window`, std `sigma`) gives the local means
    mu_x, mu_y, variances and covariance; SSIM = luminance term (2 mu_x mu_y + C1) / (mu_x^2 +
    mu_y^2 + C1) times contrast-structure term (2 cov + C2) / (var_x + var_y + C2). 1 means
    identical, 0 unrelated. `reduction="mean"` returns a scalar, `"image"` one value per image
    [B], `"none"` the SSIM map [B, H, W] (averaged over channels; borders reflect-padded, so the
    map has the image's size: that map is an anomaly map when y is a reconstruction of x).
    """
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ssim needs two batches of the same shape [B, C, H, W], got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}.")
    if min(x.shape[-2:]) < window:
        raise ValueError(f"Images of {tuple(x.shape[-2:])} pixels are smaller than the SSIM window "
                         f"({window}); pass a smaller window=.")
    c = x.shape[1]
    kernel = _gaussian_window(window, sigma, c, x)  # [C, 1, w, w]

    def local_mean(t: torch.Tensor) -> torch.Tensor:
        t = F.pad(t, [window // 2] * 4, mode="reflect")  # [B, C, H+w-1, W+w-1]
        return F.conv2d(t, kernel, groups=c)  # [B, C, H, W]

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = local_mean(x), local_mean(y)  # [B, C, H, W]
    var_x = local_mean(x * x) - mu_x ** 2
    var_y = local_mean(y * y) - mu_y ** 2
    cov = local_mean(x * y) - mu_x * mu_y
    luminance = (2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1)
    structure = (2 * cov + c2) / (var_x + var_y + c2)
    ssim_map = (luminance * structure).mean(dim=1)  # [B, H, W]
    if reduction == "none":
        return ssim_map
    if reduction == "image":
        return ssim_map.flatten(1).mean(dim=1)  # [B]
    if reduction == "mean":
        return ssim_map.mean()
    raise ValueError(f"reduction must be 'mean', 'image' or 'none', not {reduction!r}")


class SSIMLoss(nn.Module):
    """1 - SSIM, optionally plus `mse_weight` times the MSE: a loss for reconstructions [B, C, H, W].

    SSIM alone ignores a uniform brightness offset in flat regions; a little MSE keeps colours
    right. `SSIMLoss(mse_weight=1.0)(recon, target)` returns a scalar.
    """

    def __init__(self, window: int = 11, mse_weight: float = 0.0) -> None:
        super().__init__()
        self.window = window
        self.mse_weight = mse_weight

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss of `output` against `target`, both [B, C, H, W] in [0, 1]."""
        loss = 1 - ssim(output, target, window=self.window)
        if self.mse_weight:
            loss = loss + self.mse_weight * F.mse_loss(output, target)
        return loss


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Channel-by-channel correlations of feature maps [B, C, h, w] -> [B, C, C].

    Entry (i, j) is the average over positions of channel i times channel j: which features
    fire together, wherever they are. It describes texture and style, not layout.
    """
    f = features.flatten(2)  # [B, C, h*w]
    return f @ f.transpose(1, 2) / f.shape[-1]  # [B, C, C]


class FeatureLoss(nn.Module):
    """A perceptual loss: distances between EfficientNet-Lite0 features of output and target.

    The frozen ImageNet network is run stage by stage; the feature maps after the stages listed
    in `stages` are compared (mean squared difference, times `weights[i]`). EfficientNet-Lite0
    for an H x W image (stage: stride, channels, what it sees):

    - stem    /2   32  edges and colour blobs (always run, never compared)
    - stage 0 /2   16  edges, colour contrasts
    - stage 1 /4   24  corners, fine textures (a 1-pixel shift barely changes them)
    - stage 2 /8   40  texture patterns, small motifs
    - stage 3 /16  80  object parts (a rim, a thread, a crack)
    - stage 4 /16 112, stage 5 /32 192, stage 6 /32 320: ever larger parts and object identity

    Shallow stages keep the loss sharp, deep stages make it forgiving of pixel exactness but
    strict about content. `style_weight > 0` adds the Gram-matrix (texture) distance of each
    stage. Inputs are images [B, 3, H, W] in [0, 1]; the result is a scalar. `feature_map(output,
    target)` gives the per-pixel version [B, H, W], usable as an anomaly map: each stage's
    cells are placed at their measured receptive-field centres (`cu.anomaly.stage_geometry`;
    `align=False`: the old `align_corners=False` upsampling).
    """

    def __init__(self, stages: Sequence[int] = (1, 2, 3), weights: Sequence[float] | None = None,
                 style_weight: float = 0.0, backbone: nn.Module | None = None, align: bool = True) -> None:
        super().__init__()
        if not stages or min(stages) < 0 or max(stages) > 6:
            raise ValueError(f"stages must be EfficientNet-Lite0 stage numbers 0..6, got {stages}.")
        weights = [1.0] * len(stages) if weights is None else list(weights)
        if len(weights) != len(stages):
            raise ValueError(f"Give one weight per stage: {len(stages)} stages, {len(weights)} weights.")
        net = backbone if backbone is not None else pretrained_backbone("efficientnet_lite0")
        from course_utils.anomaly import stage_geometry

        strides, offsets = stage_geometry(net, [f"blocks.{s}" for s in stages])  # [S], [S, 2]
        self.geometry = [(float(s), tuple(o.tolist())) for s, o in zip(strides, offsets)]
        self.align = align
        self.stem = nn.Sequential(net.conv_stem, net.bn1)  # conv + BatchNorm + ReLU6
        self.blocks = net.blocks[: max(stages) + 1]  # no need to run deeper than we compare
        self.requires_grad_(False).eval()
        self.stages, self.weights, self.style_weight = tuple(stages), weights, style_weight

    def train(self, mode: bool = True) -> "FeatureLoss":
        """Stay in eval mode: the network's BatchNorm must keep its ImageNet statistics."""
        return super().train(False)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps [B, C_s, H/stride, W/stride] of images [B, 3, H, W], one per compared stage."""
        x = self.stem(imagenet_normalize(images))  # [B, 32, H/2, W/2]
        out = []
        for i, block in enumerate(self.blocks):
            x = block(x)  # stage i, e.g. stage 2: [B, 40, H/8, W/8]
            if i in self.stages:
                out.append(x)
        return out

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar: weighted feature distance (+ style term) of `output` to `target`, [B, 3, H, W]."""
        loss = output.new_zeros(())
        with torch.no_grad():
            target_feats = self.features(target)  # the target needs no gradient
        for w, fo, ft in zip(self.weights, self.features(output), target_feats):
            loss = loss + w * F.mse_loss(fo, ft)
            if self.style_weight:
                loss = loss + self.style_weight * w * F.mse_loss(gram_matrix(fo), gram_matrix(ft))
        return loss

    @torch.no_grad()
    def feature_map(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-pixel weighted feature distance [B, H, W] of `output` to `target` [B, 3, H, W]."""
        from course_utils.anomaly import to_image_maps

        size = tuple(target.shape[-2:])
        total = target.new_zeros(target.shape[0], *size)  # [B, H, W]
        pairs = zip(self.weights, self.features(output), self.features(target), self.geometry)
        for w, fo, ft, (stride, offset) in pairs:
            d = ((fo - ft) ** 2).mean(dim=1)  # [B, h, w]
            total += w * to_image_maps(d, size, sigma=0, stride=stride, offset=offset, align=self.align)  # [B, H, W]
        return total


def contrastive_loss(distances: torch.Tensor, similar: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """The contrastive loss of Hadsell, Chopra and LeCun (2006), averaged over pairs.

    `distances` [P] are the embedding distances of P pairs, `similar` [P] is 1 for a pair that
    should be close and 0 for one that should be at least `margin` apart:
    $\\ell = s\\,d^2 + (1 - s)\\max(0, m - d)^2$. Similar pairs are pulled together; dissimilar
    pairs are pushed out only until they are `margin` apart, after which they cost nothing (so the
    embedding cannot win by blowing everything apart).
    """
    if distances.shape != similar.shape:
        raise ValueError(f"distances {tuple(distances.shape)} and similar {tuple(similar.shape)} must have "
                         "the same shape: one distance and one 0/1 label per pair.")
    similar = similar.to(distances.dtype)
    pull = similar * distances**2  # [P]
    push = (1 - similar) * (margin - distances).clamp(min=0) ** 2  # [P]
    return (pull + push).mean()
