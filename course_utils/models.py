"""The networks the labs train: the slides' CIFAR-10 `Net`, better small CNNs, a speed-run net.

Lab 2 builds `sigmoid_boxes` by hand (no training): the universal approximation construction.

Lab 4 starts from the slides' `Net` (62,006 parameters) and improves it one change at a time:
`BetterNet` adds width, BatchNorm, optional dropout and residual blocks; `SpeedRunNet` follows
the CIFAR-10 speed records (a frozen patch-whitening first layer, BatchNorm without learnable
scale, GELU, scaled-down logits) and `whitening_weights`, which sets its first layer; the
recipe that trains it fast is `cu.train.train_speedrun`. Labs 5-6 append their autoencoders
below; lab 2 appends `layer_statistics`, the signal's size through a deep stack under a given
initialisation.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# --- Lab 2: a network built by hand ---


def sigmoid_boxes(edges: Sequence[float], heights: Sequence[float], steepness: float) -> nn.Sequential:
    """A one-hidden-layer sigmoid network, weights set by hand, that draws one box per interval.

    Box i covers [edges[i], edges[i + 1]] at height heights[i]: it is the difference of two steep
    sigmoids, heights[i] * (sigmoid(k (x - edges[i])) - sigmoid(k (x - edges[i + 1]))), with k =
    `steepness`. So the network is Linear(1, 2n) -> Sigmoid -> Linear(2n, 1) for n boxes, the
    construction behind the universal approximation theorem (lab 2). Input [B, 1], output [B, 1].
    """
    edges_t = torch.as_tensor(edges, dtype=torch.float64)  # [n + 1]
    heights_t = torch.as_tensor(heights, dtype=torch.float64)  # [n]
    if edges_t.ndim != 1 or heights_t.ndim != 1 or len(edges_t) != len(heights_t) + 1:
        raise ValueError(f"sigmoid_boxes needs one more edge than heights (n boxes: n + 1 edges); got "
                         f"{len(edges_t)} edges and {len(heights_t)} heights")
    n = len(heights_t)
    hidden, output = nn.Linear(1, 2 * n, dtype=torch.float64), nn.Linear(2 * n, 1, dtype=torch.float64)
    with torch.no_grad():
        steps_at = torch.stack([edges_t[:-1], edges_t[1:]], dim=1).flatten()  # [2n]: left, right edge of each box
        hidden.weight.fill_(steepness)  # [2n, 1]
        hidden.bias.copy_(-steepness * steps_at)  # unit j: sigmoid(k (x - steps_at[j]))
        output.weight.copy_(torch.stack([heights_t, -heights_t], dim=1).flatten()[None])  # [1, 2n]: up, then down
        output.bias.zero_()
    return nn.Sequential(hidden, nn.Sigmoid(), output)


# --- Lab 4: classifiers ---


class Net(nn.Module):
    """The slides' CIFAR-10 network (the PyTorch tutorial's): two 5x5 convs, max-pool, three FC layers.

    Input: normalised images [B, 3, 32, 32]; output: class logits [B, 10]. 62,006 parameters.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)
        self.pool = nn.MaxPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, 10] of images [B, 3, 32, 32]."""
        x = self.pool(F.relu(self.conv1(x)))  # [B, 6, 14, 14]
        x = self.pool(F.relu(self.conv2(x)))  # [B, 16, 5, 5]
        x = x.flatten(1)  # [B, 400] (the slides write x.view(-1, 16 * 5 * 5))
        x = F.relu(self.fc1(x))  # [B, 120]
        x = F.relu(self.fc2(x))  # [B, 84]
        return self.fc3(x)  # [B, 10]


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (weights and biases with `requires_grad`) of `model`."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 convolution (padding 1, no bias) + BatchNorm + ReLU: [B, c_in, H, W] -> [B, c_out, H, W]."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    """Two `conv_bn` layers with a skip connection: x + f(x), shape [B, C, H, W] unchanged.

    The skip path lets the gradient flow straight through, so deeper networks still train.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels), conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W] -> x + body(x) [B, C, H, W]."""
        return x + self.body(x)


class BetterNet(nn.Module):
    """A wider CNN with BatchNorm: one `conv_bn` + 2x2 max-pool per stage, then global pooling.

    `widths=(32, 64, 128)` gives three stages (32 -> 16 -> 8 -> 4 pixels); `residual=True` adds a
    `ResidualBlock` after each stage's conv; `dropout` drops features before the classifier.
    Input: images [B, 3, 32, 32] (any size works: the head pools globally); output: logits
    [B, n_classes].
    """

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128), n_classes: int = 10,
                 dropout: float = 0.0, residual: bool = False) -> None:
        super().__init__()
        layers, c_in = [], 3
        for width in widths:
            layers.append(conv_bn(c_in, width))  # [B, width, H, W]
            if residual:
                layers.append(ResidualBlock(width))  # [B, width, H, W]
            layers.append(nn.MaxPool2d(2))  # [B, width, H/2, W/2]
            c_in = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(c_in, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, n_classes] of images [B, 3, H, W]."""
        return self.head(self.features(x))  # [B, C, H/8, W/8] -> [B, n_classes]


# --- Lab 4: the speed-run network and its recipe ---


def whitening_weights(images: torch.Tensor, patch_size: int = 2, eps: float = 5e-4) -> torch.Tensor:
    """Conv weights that whiten image patches: the patches' PCA, each direction scaled to variance 1.

    `images` [N, C, H, W] (normalised float) -> weight [2 * C*k*k, C, k, k] for `k = patch_size`.
    The first C*k*k filters are the eigenvectors of the patches' covariance divided by
    sqrt(eigenvalue + eps), largest variance first; the second half are their negatives, so that
    a following GELU/ReLU keeps both signs. Convolving the images with the first half gives
    patch features that are uncorrelated with (about) unit variance.
    """
    c, k = images.shape[1], patch_size
    patches = images.float().unfold(2, k, 1).unfold(3, k, 1)  # [N, C, H-k+1, W-k+1, k, k]
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k)  # [P, C*k*k]
    patches = patches - patches.mean(0)  # [P, C*k*k]
    covariance = patches.T @ patches / len(patches)  # [C*k*k, C*k*k]
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending: [D], [D, D]
    filters = eigenvectors.T.flip(0) / (eigenvalues.flip(0) + eps).sqrt()[:, None]  # [D, D]
    filters = filters.reshape(-1, c, k, k)  # [D, C, k, k]
    return torch.cat([filters, -filters])  # [2D, C, k, k]


def _frozen_scale_bn(channels: int, momentum: float) -> nn.BatchNorm2d:
    """BatchNorm whose scale stays 1 (only the shift is learned), as in the speed records."""
    bn = nn.BatchNorm2d(channels, momentum=momentum)
    bn.weight.requires_grad_(False)
    return bn


class SpeedBlock(nn.Module):
    """conv 3x3 -> max-pool 2 -> BN -> GELU -> conv 3x3 -> BN -> GELU: [B, c_in, H, W] -> [B, c_out, H/2, W/2]."""

    def __init__(self, c_in: int, c_out: int, bn_momentum: float = 0.4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn1 = _frozen_scale_bn(c_out, bn_momentum)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = _frozen_scale_bn(c_out, bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, c_in, H, W] -> [B, c_out, H/2, W/2]."""
        x = F.max_pool2d(self.conv1(x), 2)  # [B, c_out, H/2, W/2]: pool first, 4x cheaper BN
        x = F.gelu(self.bn1(x))  # [B, c_out, H/2, W/2]
        return F.gelu(self.bn2(self.conv2(x)))  # [B, c_out, H/2, W/2]


class SpeedRunNet(nn.Module):
    """A compact CNN in the spirit of the CIFAR-10 speed records (Page's ResNet-9, hlb-CIFAR10, airbench).

    A 2x2 patch-whitening conv (set it with `init_whitening`, then it is frozen; 24 channels),
    GELU, three `SpeedBlock`s of `widths`, global max-pool and a bias-free linear layer whose
    logits are multiplied by `logit_scale` (small logits train better with label smoothing).
    Input: normalised images [B, 3, 32, 32]; output: logits [B, n_classes].
    """

    def __init__(self, widths: tuple[int, int, int] = (64, 128, 256), n_classes: int = 10,
                 logit_scale: float = 1 / 9, bn_momentum: float = 0.4) -> None:
        super().__init__()
        self.whiten = nn.Conv2d(3, 24, kernel_size=2)
        self.blocks = nn.Sequential(SpeedBlock(24, widths[0], bn_momentum),
                                    SpeedBlock(widths[0], widths[1], bn_momentum),
                                    SpeedBlock(widths[1], widths[2], bn_momentum))
        self.head = nn.Linear(widths[2], n_classes, bias=False)
        self.logit_scale = logit_scale

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor) -> "SpeedRunNet":
        """Set the first layer to whiten 2x2 patches of `images` [N, 3, H, W] (normalised) and freeze it."""
        weight = whitening_weights(images, patch_size=2)  # [24, 3, 2, 2]
        self.whiten.weight.copy_(weight.to(self.whiten.weight))
        self.whiten.bias.zero_()
        self.whiten.requires_grad_(False)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, n_classes] of images [B, 3, 32, 32]."""
        x = F.gelu(self.whiten(x))  # [B, 24, 31, 31]
        x = self.blocks(x)  # [B, w3, 3, 3]
        x = torch.amax(x, dim=(2, 3))  # [B, w3]
        return self.head(x) * self.logit_scale  # [B, n_classes]


# --- Labs 5-6: autoencoders ---

def _down(c_in: int, c_out: int) -> nn.Sequential:
    """Halve the resolution: 3x3 conv with stride 2, BatchNorm, LeakyReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2, inplace=True))


def _up(c_in: int, c_out: int) -> nn.Sequential:
    """Double the resolution without checkerboards: nearest upsampling, then a 3x3 conv."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                         nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2, inplace=True))


class ConvAutoencoder(nn.Module):
    """A convolutional autoencoder: encoder, narrow bottleneck, upsample+conv decoder.

    `ConvAutoencoder(in_channels=3, widths=(32, 64, 128, 128), latent_channels=16)` maps images
    [B, 3, H, W] in [0, 1] (H, W divisible by 2**len(widths)) to reconstructions of the same
    shape in [0, 1]. The encoder halves the resolution at each width; the bottleneck is a 1x1
    conv down to `latent_channels` maps at H/16 x W/16 (the information the decoder gets); the
    decoder mirrors the encoder with nearest upsampling + conv (no transposed convolutions, so no
    checkerboard artefacts). `noise_std > 0` makes it a denoising autoencoder: during training
    only, Gaussian noise is added to the input, while the target stays the clean image.
    """

    def __init__(self, in_channels: int = 3, widths: tuple[int, ...] = (32, 64, 128, 128),
                 latent_channels: int = 16, noise_std: float = 0.0) -> None:
        super().__init__()
        self.noise_std = noise_std
        chans = [in_channels, *widths]
        self.encoder = nn.Sequential(*[_down(a, b) for a, b in zip(chans, chans[1:])])
        self.bottleneck = nn.Sequential(nn.Conv2d(widths[-1], latent_channels, 1),
                                        nn.LeakyReLU(0.2, inplace=True),
                                        nn.Conv2d(latent_channels, widths[-1], 1),
                                        nn.LeakyReLU(0.2, inplace=True))
        back = [*widths[::-1], widths[0]]
        self.decoder = nn.Sequential(*[_up(a, b) for a, b in zip(back, back[1:])],
                                     nn.Conv2d(widths[0], in_channels, 3, padding=1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct images [B, C, H, W] in [0, 1]; same shape out."""
        step = 2 ** len(self.encoder)
        if x.shape[-1] % step or x.shape[-2] % step:
            raise ValueError(f"ConvAutoencoder halves the image {len(self.encoder)} times: height and "
                             f"width must be multiples of {step}, got {tuple(x.shape[-2:])}; resize "
                             f"the images (e.g. image_size=128).")
        if self.training and self.noise_std > 0:
            x = (x + self.noise_std * torch.randn_like(x)).clamp(0, 1)  # [B, C, H, W] noisy input
        z = self.encoder(x)  # [B, widths[-1], H/16, W/16] (4 widths)
        z = self.bottleneck(z)  # [B, widths[-1], H/16, W/16] after a latent_channels squeeze
        return self.decoder(z)  # [B, C, H, W]


class FeatureAutoencoder(nn.Module):
    """An autoencoder over pretrained feature maps, the strongest detector of lab 6.

    Instead of pixels it reconstructs the (standardised) features [B, C, h, w] of a frozen
    ImageNet CNN (see `MultiLayerFeatures`). It sees one feature vector at a time: 1x1
    convolutions squeeze C channels to `latent_channels` and back, so it learns which feature
    combinations occur on good parts; a defect produces feature vectors it cannot reproduce.
    Input and output have the same shape [B, C, h, w].
    """

    def __init__(self, in_channels: int, hidden: int = 256, latent_channels: int = 64) -> None:
        super().__init__()

        def block(a: int, b: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(a, b, 1), nn.BatchNorm2d(b), nn.ReLU(inplace=True))

        self.encoder = nn.Sequential(block(in_channels, hidden), block(hidden, latent_channels))
        self.decoder = nn.Sequential(block(latent_channels, hidden), nn.Conv2d(hidden, in_channels, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Reconstruct feature maps [B, C, h, w]; same shape out."""
        z = self.encoder(features)  # [B, latent, h, w]
        return self.decoder(z)  # [B, C, h, w]


class MultiLayerFeatures(nn.Module):
    """Frozen pretrained features from several depths, stacked into one map per image.

    `MultiLayerFeatures(backbone, layers=("blocks.1", "blocks.2", "blocks.3"))(images)` takes
    images [B, 3, H, W] in [0, 1], reads each layer (shallow = edges and colours, deep = parts),
    averages each over a `pool` x `pool` neighbourhood (so every vector also describes its
    surroundings), brings all to the grid of `scale_to` (default: the first layer) and
    concatenates: [B, sum of channels, H/s, W/s] (s = that layer's stride, 4 for "blocks.1").
    It measures once where each layer's cells look (`cu.anomaly.stage_geometry`) and places
    every cell there (`align=False`: the old `align_corners=False` resizing). `channels`,
    `out_stride` and `out_offset` describe the output: channels per layer, and the output
    grid's stride and receptive-field offset (y, x) in pixels, for `cu.anomaly.to_image_maps`.
    The stacking is `cu.anomaly.patch_embedding`, shared with PatchCore and PaDiM.
    """

    def __init__(self, backbone: nn.Module, layers: tuple[str, ...] = ("blocks.1", "blocks.2", "blocks.3"),
                 pool: int = 3, scale_to: str | None = None, align: bool = True) -> None:
        super().__init__()
        from course_utils.anomaly import stage_geometry
        from course_utils.backbones import FeatureExtractor, inference_copy

        self.extractor = FeatureExtractor(inference_copy(backbone), layers)  # BatchNorm folded: faster, same features
        self.layers, self.pool, self.align = tuple(layers), pool, align
        self.scale_to = scale_to or self.layers[0]
        if self.scale_to not in self.layers:
            raise ValueError(f"scale_to={self.scale_to!r} must be one of the layers {self.layers}.")
        strides, offsets = stage_geometry(backbone, self.layers)  # [S], [S, 2]
        self.register_buffer("strides", strides)
        self.register_buffer("offsets", offsets)
        device = next(backbone.parameters()).device
        probe = self.extractor(torch.zeros(1, 3, 64, 64, device=device))  # {layer: [1, C, h, w]}
        self.channels = tuple(probe[name].shape[1] for name in self.layers)

    @property
    def out_stride(self) -> float:
        """Stride in pixels of the output grid (that of `scale_to`)."""
        return float(self.strides[self.layers.index(self.scale_to)])

    @property
    def out_offset(self) -> tuple[float, float]:
        """Receptive-field centre offset (y, x) in pixels of the output grid's cells."""
        y, x = self.offsets[self.layers.index(self.scale_to)].tolist()
        return y, x

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Stacked features [B, C_total, h, w] of images [B, 3, H, W] in [0, 1]."""
        from course_utils.anomaly import patch_embedding

        feats = self.extractor(images.contiguous(memory_format=torch.channels_last))  # {layer: [B, C_i, h_i, w_i]}
        return patch_embedding([feats[name] for name in self.layers], self.pool, self.strides, self.offsets,
                               self.layers.index(self.scale_to), self.align)  # [B, C_total, h, w]


# --- Lab 2: initialisation ---


def layer_statistics(depth: int, width: int, std: float, activation=torch.relu, batch: int = 512,
                     seed: int = 0) -> dict[str, list[float]]:
    """Standard deviation of the activations and of the gradients at every layer of a deep stack.

    Builds `depth` bias-free `Linear(width, width)` layers with weights drawn from N(0, std^2), each
    followed by `activation`, feeds a standard-normal batch [batch, width] forwards and backpropagates
    a fixed random read-out of the last layer's outputs (so the gradient arriving at the top has std 1,
    independent across examples, whatever the activations' size). Returns `{"activation": [depth],
    "gradient": [depth]}`: the std of each layer's output and of dLoss/d(that output), first layer
    first, in float64 (the extremes of a bad initialisation underflow float32). Same architecture and
    parameter count for every `std`: only the initial scale differs.
    """
    if depth < 1 or width < 1 or std <= 0:
        raise ValueError(f"layer_statistics needs depth >= 1, width >= 1 and std > 0, got {depth}, {width}, {std}.")
    generator = torch.Generator().manual_seed(seed)
    weights = [torch.randn(width, width, generator=generator, dtype=torch.float64) * std
               for _ in range(depth)]  # depth x [width, width]
    h = torch.randn(batch, width, generator=generator, dtype=torch.float64, requires_grad=True)  # [batch, width]
    outputs = []
    for w in weights:
        h = activation(h @ w.T)  # [batch, width]
        h.retain_grad()
        outputs.append(h)
    readout = torch.randn(batch, width, generator=generator, dtype=torch.float64)  # [batch, width]
    (h * readout).sum().backward()  # dLoss/d(last output) = readout: std 1, independent across examples
    return {"activation": [out.std().item() for out in outputs],
            "gradient": [out.grad.std().item() for out in outputs]}


# --- Lab 4, part 2: what a layer costs; LeNet, AlexNet, an Inception block; deep stacks; two heads ---

_COUNTED = (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def layer_costs(model: nn.Module, input_shape: tuple[int, ...]) -> list[dict]:
    """Parameters and multiply-adds of every convolution, dense and pooling layer for one input.

    Runs one zero input of `input_shape` (e.g. `(3, 224, 224)`, without the batch axis) through
    `model` with forward hooks and returns one dict per layer, in the order they ran: `layer` (its
    name), `kind` (the class name), `output` (the output shape without the batch axis),
    `parameters` (weights and biases) and `macs` (multiply-adds for one image: a convolution does
    `C_in/groups * k_h * k_w` of them per output value, a dense layer `in_features` per output;
    additions of biases and pooling comparisons are not counted).
    """
    if len(input_shape) not in (1, 3):
        raise ValueError(f"input_shape is one input without the batch axis, e.g. (3, 224, 224); got {input_shape}")
    rows: list[dict] = []

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            per_output = 0
            if isinstance(module, nn.Conv2d):
                per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            elif isinstance(module, nn.Linear):
                per_output = module.in_features
            rows.append({"layer": name, "kind": type(module).__name__, "output": tuple(output.shape[1:]),
                         "parameters": sum(p.numel() for p in module.parameters()),
                         "macs": per_output * output[0].numel()})
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, _COUNTED)]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))  # [1, ...]: one input
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return rows


def lenet5(in_channels: int = 1, n_classes: int = 10) -> nn.Sequential:
    """LeNet-5 as the slides (deck 002) count it: 32x32 input, two 5x5 convs (6, 16), dense 400-120-84-10.

    Max-pooling and ReLU stand in for the original's subsampling layers and tanh, and conv2 sees all
    6 input maps (LeNet-5's partial connection table is left out): the costs are those of the slides'
    table. With `in_channels=3` this is the lab's `Net`. Layer names: conv1, pool1, conv2, pool2, fc1-fc3.
    """
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(in_channels, 6, 5)), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),  # [B, 6, 14, 14]
        ("conv2", nn.Conv2d(6, 16, 5)), ("relu2", nn.ReLU()), ("pool2", nn.MaxPool2d(2)),  # [B, 16, 5, 5]
        ("flatten", nn.Flatten()),  # [B, 400]
        ("fc1", nn.Linear(400, 120)), ("relu3", nn.ReLU()),
        ("fc2", nn.Linear(120, 84)), ("relu4", nn.ReLU()),
        ("fc3", nn.Linear(84, n_classes))]))


def alexnet(n_classes: int = 1000) -> nn.Sequential:
    """AlexNet (Krizhevsky et al., 2012) on 224x224 images, in one tower, as the slides (deck 002) count it.

    conv1 11x11/4 (96) -> 3x3/2 max-pool -> conv2 5x5 (256) -> pool -> conv3, conv4 3x3 (384) ->
    conv5 3x3 (256) -> pool -> dense 4096, 4096, `n_classes`. At 224 px without padding conv1 gives
    54x54 maps and the last pool 5x5x256 = 6,400 features (the paper's 227 px gives 55x55 and 6x6).
    The paper split conv2, conv4 and conv5 over two GPUs (grouped convolutions); here they are whole,
    as in the slides' counts. Local response normalisation (no parameters) is left out. Layer names:
    conv1-conv5, pool1, pool2, pool5, dense1-dense3.
    """
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 96, 11, stride=4)), ("relu1", nn.ReLU()),  # [B, 96, 54, 54]
        ("pool1", nn.MaxPool2d(3, 2)),  # [B, 96, 26, 26]
        ("conv2", nn.Conv2d(96, 256, 5, padding=2)), ("relu2", nn.ReLU()),  # [B, 256, 26, 26]
        ("pool2", nn.MaxPool2d(3, 2)),  # [B, 256, 12, 12]
        ("conv3", nn.Conv2d(256, 384, 3, padding=1)), ("relu3", nn.ReLU()),  # [B, 384, 12, 12]
        ("conv4", nn.Conv2d(384, 384, 3, padding=1)), ("relu4", nn.ReLU()),  # [B, 384, 12, 12]
        ("conv5", nn.Conv2d(384, 256, 3, padding=1)), ("relu5", nn.ReLU()),  # [B, 256, 12, 12]
        ("pool5", nn.MaxPool2d(3, 2)),  # [B, 256, 5, 5]
        ("flatten", nn.Flatten()),  # [B, 6400]
        ("drop1", nn.Dropout(0.5)), ("dense1", nn.Linear(256 * 5 * 5, 4096)), ("relu6", nn.ReLU()),  # [B, 4096]
        ("drop2", nn.Dropout(0.5)), ("dense2", nn.Linear(4096, 4096)), ("relu7", nn.ReLU()),  # [B, 4096]
        ("dense3", nn.Linear(4096, n_classes))]))  # [B, n_classes]


class InceptionBlock(nn.Module):
    """GoogLeNet's Inception block (Szegedy et al., 2015): four branches side by side, concatenated.

    1x1 conv (`c1`); 1x1 reduction to `r3` then 3x3 (`c3`); 1x1 reduction to `r5` then 5x5 (`c5`);
    3x3 max-pool then 1x1 (`cp`). [B, c_in, H, W] -> [B, c1 + c3 + c5 + cp, H, W]. The defaults are
    block 3a: 192 -> 64 + 128 + 32 + 32 = 256 channels. The 1x1 reductions make the 3x3 and 5x5
    convolutions cheap: they see `r3` and `r5` channels instead of `c_in`.
    """

    def __init__(self, c_in: int = 192, c1: int = 64, r3: int = 96, c3: int = 128, r5: int = 16, c5: int = 32,
                 cp: int = 32) -> None:
        super().__init__()
        relu = nn.ReLU
        self.branch1 = nn.Sequential(nn.Conv2d(c_in, c1, 1), relu())
        self.branch3 = nn.Sequential(nn.Conv2d(c_in, r3, 1), relu(), nn.Conv2d(r3, c3, 3, padding=1), relu())
        self.branch5 = nn.Sequential(nn.Conv2d(c_in, r5, 1), relu(), nn.Conv2d(r5, c5, 5, padding=2), relu())
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, 1, padding=1), nn.Conv2d(c_in, cp, 1), relu())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, c_in, H, W] -> the four branches concatenated along channels [B, c1 + c3 + c5 + cp, H, W]."""
        branches = (self.branch1, self.branch3, self.branch5, self.branch_pool)
        return torch.cat([branch(x) for branch in branches], dim=1)  # [B, c1 + c3 + c5 + cp, H, W]


class DeepStack(nn.Module):
    """A deep stack of `depth` identical 3x3 conv + ReLU layers, plain or with skip connections.

    Made to look at gradients, not to train well: no BatchNorm, PyTorch's default initialisation.
    Each layer is conv(relu(x)); `residual=True` makes it x + conv(relu(x)). [B, 3, H, W] -> stem -> layers ->
    global average pool -> logits [B, n_classes]. `self.layers[i].weight` is the i-th conv.
    """

    def __init__(self, depth: int = 20, width: int = 16, residual: bool = False, n_classes: int = 10) -> None:
        super().__init__()
        self.residual = residual
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.layers = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in range(depth))
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, n_classes] of images [B, 3, H, W]."""
        x = self.stem(x)  # [B, width, H, W]
        for conv in self.layers:
            h = conv(F.relu(x))  # [B, width, H, W]
            x = x + h if self.residual else h
        return self.head(x.mean((2, 3)))  # [B, width] -> [B, n_classes]


def layer_gradient_norms(model: DeepStack, images: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """The gradient norm of each stacked layer's weight after one backward pass of the cross-entropy.

    `images` [B, 3, H, W], `labels` [B]. Returns one float per layer of `model.layers`, first layer
    first. Gradients that shrink towards the first layers are the vanishing-gradient problem.
    """
    model.zero_grad()
    F.cross_entropy(model(images), labels).backward()
    return [conv.weight.grad.norm().item() for conv in model.layers]


class ClassifyAndLocate(nn.Module):
    """A network with one trunk and two heads: class logits and a bounding box.

    Not a chain of layers (`nn.Sequential` cannot express it): `forward` returns a pair. The trunk
    is `conv_bn` + 2x2 max-pool per stage. The class head keeps each map's largest value (what the
    object is does not depend on where it is) and gives logits [B, n_classes]; the box head averages
    the maps to a 4x4 grid (pooling to 1x1 would throw the position away), flattens it and gives,
    through a sigmoid, [B, 4] = (x0, y0, x1, y1) as fractions of the image side.
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64), n_classes: int = 10) -> None:
        super().__init__()
        layers, c_in = [], 3
        for width in widths:
            layers += [conv_bn(c_in, width), nn.MaxPool2d(2)]  # [B, width, H/2, W/2]
            c_in = width
        self.trunk = nn.Sequential(*layers)
        self.classify = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(c_in, n_classes))
        self.locate = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(c_in * 16, 4), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [B, 3, H, W] -> (logits [B, n_classes], boxes [B, 4] in [0, 1])."""
        maps = self.trunk(x)  # [B, C, H / 2^stages, W / 2^stages]: shared by both heads
        return self.classify(maps), self.locate(maps)  # [B, n_classes], [B, 4]
