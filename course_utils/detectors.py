"""Every anomaly detector of labs 5-7 as one object with one interface.

    detector = cu.detectors.PatchCore().fit(good_images)       # images float [N, 3, H, W] in [0, 1]
    scores, maps = detector.predict(test_images)               # Prediction: [M] and [M, H, W]

A detector is an `nn.Module`: `fit(images)` learns from good images only and returns the
detector (it records `fit_seconds`, and `history` where something is trained); `predict(images)`
returns a `Prediction(scores [M], maps [M, H, W])` on the CPU, maps at the images' size and
smoothed. Both read the images a batch at a time (float or uint8 tensors, lists of images,
Datasets, `AnomalyData`), so memory does not grow with the number of images; `image_size=` and
`resize=` ("pad", "crop", "stretch") let every detector take images of any size and
shape and give each map back at its image's own size (a list when the sizes differ).
Everything `fit` learns is a registered buffer or parameter, so `state_dict()` saves a
fitted detector and `load_state_dict` into a fresh one with the same arguments predicts the same.

- `ReconstructionDetector`: a convolutional autoencoder on pixels (lab 5; lab 6 (a)-(c)).
- `FeatureAEDetector`: an autoencoder on pretrained features (lab 6 (d); the DFR idea of
  Shi et al., 2021).
- `PatchCore` (Roth et al., 2022) and `PaDiM` (Defard et al., 2021): lab 7.
- `AnomalibDetector`: anomalib 2.x's PatchCore or PaDiM behind the same interface (lab 7).

Defaults are the labs' full-mode settings; labs pass their fast-mode sizes (epochs, sigma).
The pieces (embedding, nearest neighbours, Gaussians, map post-processing) are in `cu.anomaly`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from course_utils import anomaly
from course_utils.anomaly import _check_images
from course_utils.data.images import _size_pair
from course_utils.deploy import Deployable
from course_utils.deploy import load as load  # cu.detectors.load(path): any saved detector


class Prediction(NamedTuple):
    """What `predict` returns: image `scores` [N] and anomaly `maps` [N, H, W] (CPU, smoothed, image size).

    When the images had different sizes, `maps` is a list of [H_i, W_i] maps, each at its image's own size."""

    scores: torch.Tensor
    maps: torch.Tensor | list[torch.Tensor]


Images = Union[torch.Tensor, Sequence[torch.Tensor], Dataset, Any]


def _source(images: Images, split: str) -> Images:
    """The images of `images`: a tensor, a list of [C, H, W] tensors, a Dataset, or an AnomalyData's `split`."""
    if hasattr(images, "train_images") and hasattr(images, "test_images"):
        return images.train_images if split == "train" else images.test_images
    if torch.is_tensor(images) or isinstance(images, (list, tuple, Dataset)):
        if len(images) == 0:
            raise ValueError("No images given: pass at least one image.")
        return images
    raise TypeError(f"Expected images as a tensor [N, 3, H, W], a list of [3, H, W] tensors, a Dataset or an "
                    f"AnomalyData, got {type(images).__name__}.")


def _item_image(item: Any) -> torch.Tensor:
    """The image tensor of one Dataset item (a tensor, a dict with "image", or an (image, ...) tuple)."""
    if isinstance(item, dict):
        item = item["image"]
    elif isinstance(item, (tuple, list)):
        item = item[0]
    return item


def _chunks(source: Images, batch_size: int) -> Iterator[list[torch.Tensor] | torch.Tensor]:
    """`source` a batch at a time: tensor slices [b, C, H, W], or lists of [C, H, W] images."""
    for start in range(0, len(source), batch_size):
        if torch.is_tensor(source):
            yield source[start:start + batch_size]  # [b, C, H, W]
        else:
            yield [_item_image(source[i]) for i in range(start, min(start + batch_size, len(source)))]


def as_float_rgb(images: torch.Tensor) -> torch.Tensor:
    """Images [..., C, H, W] as float RGB in [0, 1]: uint8 is divided by 255, 1 channel (grayscale) repeated
    to 3, 4 channels (RGBA) composited on black; anything else raises an error that says what to pass."""
    if images.dim() < 3:
        raise ValueError(f"Expected images [N, 3, H, W] or [3, H, W], got shape {tuple(images.shape)}.")
    if images.dtype == torch.uint8:
        images = images.float() / 255  # [..., C, H, W]
    elif not images.is_floating_point():
        raise ValueError(f"Expected float images in [0, 1] or uint8 images, got {images.dtype}.")
    channels = images.shape[-3]
    if channels == 1:
        images = images.expand(*images.shape[:-3], 3, *images.shape[-2:])  # grayscale -> 3 equal channels
    elif channels == 4:
        images = images[..., :3, :, :] * images[..., 3:, :, :]  # RGBA composited on black
    elif channels != 3:
        raise ValueError(f"Expected images [N, 3, H, W] (RGB; 1 = grayscale and 4 = RGBA are converted), "
                         f"got {channels} channels in shape {tuple(images.shape)}.")
    if images.min() < -0.01 or images.max() > 1.01:
        raise ValueError("Expected float images with values in [0, 1]; for uint8 images use images.float() / 255 "
                         "(or pass the uint8 tensor itself).")
    return images


class _Batches:
    """The images of `source` as model-ready float batches [b, 3, S, S] on the detector's device, one
    `batch_size` chunk at a time (re-iterable; `len` = the number of images; with `keep_sizes`
    each batch comes with its images' own sizes)."""

    def __init__(self, detector: "Detector", source: Images, keep_sizes: bool = False) -> None:
        self.detector, self.source, self.keep_sizes = detector, source, keep_sizes

    def __len__(self) -> int:
        return len(self.source)

    def __iter__(self) -> Iterator:
        for chunk in _chunks(self.source, self.detector.batch_size):
            batch, sizes = self.detector._model_input(chunk)  # [b, 3, S, S], b x (H, W)
            yield (batch, sizes) if self.keep_sizes else batch

    def stack(self) -> torch.Tensor:
        """All images at once [N, 3, S, S] on the CPU (for detectors that train over many epochs)."""
        return torch.cat([batch.cpu() for batch in self])


class Detector(Deployable, nn.Module):
    """What every detector shares: `fit` -> self, `predict` -> `Prediction`, timing, saving and loading.

    `fit` and `predict` take images as a float tensor [N, 3, H, W] in [0, 1], a uint8 tensor
    (0..255), a list of [3, H_i, W_i] images, a `Dataset` (items: images or dicts with
    "image", e.g. `cu.data.MVTecDataset`), or a `cu.data.AnomalyData` (fit: its training images,
    predict: its test images); grayscale and RGBA are converted. They read it `batch_size` images
    at a time, so memory does not grow with the number of images beyond what the detector keeps.
    Detectors with an `image_size` bring every image to that size by `resize` ("pad", "crop" or
    "stretch", `cu.data.fit_to_size`) and return each map at its image's own size.
    Subclasses implement `_fit(batches)` (an iterable over float batches [b, 3, S, S] on the
    device) and `_predict(images) -> (maps [b, S, S], scores [b] or None)` for one batch; when
    scores are None, they are the maps (at the images' own size) reduced by `reduction` ("max",
    "mean" or "topk": the mean of the `top_k` fraction of highest pixels).
    """

    def __init__(self, sigma: float, reduction: str, top_k: float, batch_size: int,
                 device: torch.device | str | None, image_size: int | tuple[int, int] | None = None,
                 resize: str = "pad") -> None:
        super().__init__()
        from course_utils.data.images import RESIZE_MODES

        if reduction not in ("max", "mean", "topk"):
            raise ValueError(f"reduction must be 'max', 'mean' or 'topk', not {reduction!r}")
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, not {resize!r}.")
        self.sigma, self.reduction, self.top_k, self.batch_size = sigma, reduction, top_k, batch_size
        self.model_size = None if image_size is None else _size_pair(image_size)
        self.resize = resize
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.register_buffer("fitted", torch.tensor(False))
        self.fit_seconds: float | None = None
        self.predict_seconds: float | None = None
        self.history = None  # a cu.train.History where fit trains a network

    def fit(self, images: Images) -> "Detector":
        """Learn from good images (see the class docstring for the accepted forms); returns the detector itself."""
        source = _source(images, "train")
        start = time.perf_counter()
        self.to(self.device)
        self._fit(_Batches(self, source))
        self.fitted.fill_(True)
        if torch.is_tensor(images) and images.dim() == 4:
            self.fit_size.copy_(torch.tensor(images.shape[-2:]))  # [H, W]: the size export and inspect default to
        self.fit_seconds = time.perf_counter() - start
        return self

    @torch.no_grad()
    def predict(self, images: Images) -> Prediction:
        """Image scores [N] and smoothed anomaly maps [N, H, W] (on the CPU), batch by batch.

        Maps are at each image's own size; when the sizes differ, `maps` is a list of [H_i, W_i]."""
        self._require_fit()
        source = _source(images, "test")
        start = time.perf_counter()
        self.to(self.device)
        scores, maps = [], []
        for part in self.predict_batches(source):
            scores.append(part.scores)
            maps.extend(part.maps)
        sizes = {tuple(m.shape) for m in maps}
        self.predict_seconds = time.perf_counter() - start
        return Prediction(torch.cat(scores), torch.stack(maps) if len(sizes) == 1 else maps)

    @torch.no_grad()
    def predict_batches(self, images: Images) -> Iterator[Prediction]:
        """`predict`, one batch of `batch_size` images at a time: a `Prediction` per batch (maps a list of
        [H_i, W_i]), for folders too large to keep every map in memory."""
        self._require_fit()
        self.to(self.device)
        for batch, sizes in _Batches(self, _source(images, "test"), keep_sizes=True):
            maps, scores = self._predict(batch)  # [b, S, S], [b] or None
            maps = self._maps_to_images(maps.float().cpu(), sizes)  # b x [H_i, W_i]
            if scores is None:
                scores = torch.cat([anomaly.image_scores(m[None], self.reduction, self.top_k) for m in maps])  # [b]
            yield Prediction(scores.float().cpu(), maps)

    def _maps_to_images(self, maps: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Maps [b, S, S] at the model's size back at each image's own size: b maps [H_i, W_i]."""
        from course_utils.data.images import map_to_image

        if self.model_size is None:
            return list(maps)
        if len(set(sizes)) == 1:
            return list(map_to_image(maps, sizes[0], self.resize))  # b x [H, W]
        return [map_to_image(m[None], size, self.resize)[0] for m, size in zip(maps, sizes)]

    def _model_input(self, images: list[torch.Tensor] | torch.Tensor) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """One chunk of images as a float batch [b, 3, S, S] on the device, and each image's own (H, W)."""
        from course_utils.data.images import fit_to_size

        if torch.is_tensor(images):
            images = as_float_rgb(images.to(self.device))  # [b, 3, H, W]
            sizes = [tuple(images.shape[-2:])] * len(images)
            if self.model_size is None or sizes[0] == self.model_size:
                return images, sizes
            images = list(images)
        images = [as_float_rgb(im.to(self.device)) for im in images]  # b x [3, H_i, W_i]
        sizes = [tuple(im.shape[-2:]) for im in images]
        if self.model_size is not None:
            images = [fit_to_size(im, self.model_size, self.resize) for im in images]  # b x [3, S, S]
        elif len(set(sizes)) > 1:
            raise ValueError(f"Images of different sizes ({sorted(set(sizes))[:3]}...): give the detector "
                             "image_size=... (and resize='pad', 'crop' or 'stretch') to bring them to one size.")
        return torch.stack(images), sizes  # [b, 3, S, S]

    def _fit(self, batches: "_Batches") -> None:
        raise NotImplementedError

    def _predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def _require_fit(self) -> None:
        """Raise a clear error when the detector has not been fitted (nor loaded) yet."""
        if not bool(self.fitted):
            raise RuntimeError(f"{type(self).__name__} is not fitted yet: call fit(good_images) first "
                               "(or load_state_dict from a fitted one).")

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Load a fitted detector's state; buffers that fit sizes from the data (memory bank, means,
        ...) are resized to the saved shapes first, so a fresh detector can load a fitted one."""
        buffers = dict(self.named_buffers())
        for key, value in state_dict.items():
            if key in buffers and buffers[key].shape != value.shape:
                owner, _, name = key.rpartition(".")
                module = self.get_submodule(owner) if owner else self
                module._buffers[name] = torch.empty_like(value, device=buffers[key].device)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


# --------------------------------------------------------------------------------------------
# Labs 5-6: autoencoders on pixels and on features
# --------------------------------------------------------------------------------------------


def _train(model: nn.Module, inputs: torch.Tensor, loss_fn: Callable, epochs: int, lr: float,
           batch_size: int, device: torch.device):
    """Train `model` to reproduce `inputs` [N, ...] with `cu.train.fit` (Adam, shuffled batches of (x, x))."""
    from torch.utils.data import DataLoader, TensorDataset

    from course_utils.train import fit

    loader = DataLoader(TensorDataset(inputs, inputs), batch_size=batch_size, shuffle=True)
    return fit(model, loader, epochs=epochs, device=device, loss_fn=loss_fn,
               optimizer=torch.optim.Adam(model.parameters(), lr=lr), progress=False)


class ReconstructionDetector(Detector):
    """An autoencoder trained on good images; the reconstruction error is the anomaly map (labs 5-6).

    `model=None` builds lab 5's `ConvAutoencoder(widths, latent_channels, noise_std)` afresh at
    every `fit`. `loss` trains it: "mse", "ssim" (1 - SSIM + MSE, lab 6 (b)), "feature" (MSE +
    `feature_weight` x the EfficientNet feature loss of `feature_stages`, lab 6 (c); the default
    1e-4 makes the two terms about equal on the first batch, lab 6 section 4), or a callable
    (recon, x) -> scalar. `error` scores it: "mse", "ssim" (1 - SSIM), "l1", "feature" (the
    feature loss's per-pixel map) or a callable (images, recons) -> [N, H, W]. `image_size`
    (None = the images' own size) and `resize` ("pad", "crop" or "stretch") bring every image to
    the autoencoder's working size, as in the feature detectors, so images of several sizes work;
    `sigma` is then in pixels of that size, and each map comes back at its image's own size.
    fit: `seed_everything(seed)`, build the default model, shuffled batches of `batch_size`,
    Adam(`lr`), `epochs` epochs of `cu.train.fit`; `epochs=0` with a given `model` keeps its
    trained weights. Image score: `reduction` of the smoothed map (default: the mean
    of the top 1 % of pixels, the rule lab 5 fixes in advance and keeps unless validation shows
    another one better beyond the noise).
    """

    def __init__(self, model: nn.Module | None = None, loss: str | Callable = "mse",
                 error: str | Callable = "mse", epochs: int = 80, lr: float = 1e-3, batch_size: int = 16,
                 sigma: float = 4.0, reduction: str = "topk", top_k: float = 0.01,
                 widths: tuple[int, ...] = (16, 32, 64, 64), latent_channels: int = 16, noise_std: float = 0.0,
                 feature_weight: float = 1e-4, feature_stages: Sequence[int] = (1, 2, 3),
                 image_size: int | tuple[int, int] | None = None, resize: str = "pad", seed: int = 0,
                 device: torch.device | str | None = None) -> None:
        super().__init__(sigma, reduction, top_k, batch_size, device, image_size, resize)
        from course_utils.models import ConvAutoencoder

        for name, value, kinds in (("loss", loss, ("mse", "ssim", "feature")),
                                   ("error", error, ("mse", "ssim", "l1", "feature"))):
            if not callable(value) and value not in kinds:
                raise ValueError(f"{name} must be one of {kinds} or a function, not {value!r}.")
        self._default_model = model is None
        self._model_args = dict(widths=tuple(widths), latent_channels=latent_channels, noise_std=noise_std)
        self.model = ConvAutoencoder(**self._model_args) if model is None else model
        self.loss, self.error, self.epochs, self.lr = loss, error, epochs, lr
        self.feature_weight, self.seed = feature_weight, seed
        from course_utils.losses import FeatureLoss

        # always built (frozen), so that `error` may be switched to "feature" after fit (lab 6's 2 x 2 ablation)
        self.feature_loss = FeatureLoss(stages=tuple(feature_stages))

    def _loss_fn(self) -> Callable:
        """The training loss named by `self.loss`."""
        from course_utils.losses import SSIMLoss

        if callable(self.loss):
            return self.loss
        if self.loss == "mse":
            return nn.MSELoss()
        if self.loss == "ssim":
            return SSIMLoss(mse_weight=1.0)
        return lambda recon, x: F.mse_loss(recon, x) + self.feature_weight * self.feature_loss(recon, x)

    def _working(self, images: Images) -> torch.Tensor:
        """Images [N, 3, H, W] (or a list) at the autoencoder's working size [N, 3, s, s], on the CPU."""
        return self._model_input(images)[0].cpu()

    def _fit(self, batches: _Batches) -> None:
        from course_utils.device import seed_everything
        from course_utils.models import ConvAutoencoder

        if self.epochs == 0:  # a model trained elsewhere (lab 5 section 8): keep its weights
            if self._default_model:
                raise ValueError("epochs=0 keeps the weights of a trained model: pass model=..., or epochs >= 1.")
            self.history = None
            return
        images = batches.stack()  # [N, 3, H, W]: training runs over all images for many epochs
        seed_everything(self.seed)
        if self._default_model:
            self.model = ConvAutoencoder(**self._model_args)  # fresh weights: fit twice, same result
        self.history = _train(self.model, images, self._loss_fn(), self.epochs, self.lr,
                              self.batch_size, self.device)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstructions [N, 3, s, s] of images [N, 3, H, W] (s = `image_size` or H), on the CPU."""
        self._require_fit()
        return anomaly.run_in_batches(self.model, self._working(images), self.batch_size, self.device)

    @torch.no_grad()
    def error_maps(self, images: torch.Tensor) -> torch.Tensor:
        """Raw (unsmoothed) error maps [N, s, s] of images [N, 3, H, W], by `error`, on the CPU."""
        x = self._working(images)  # [N, 3, s, s]
        recons = self.reconstruct(x)  # [N, 3, s, s]
        if callable(self.error):
            return self.error(x, recons)
        if self.error == "feature":
            pairs = torch.stack([recons, x], dim=1)  # [N, 2, 3, s, s]
            return anomaly.run_in_batches(lambda b: self.feature_loss.feature_map(b[:, 0], b[:, 1]), pairs,
                                          self.batch_size, self.device)  # [N, s, s]
        return anomaly.reconstruction_error_map(x, recons, kind=self.error)  # [N, s, s]

    def _predict(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        errors = self.error_maps(images)  # [N, s, s]: images come at the working size
        return anomaly.to_image_maps(errors, errors.shape[-2:], self.sigma), None  # [N, s, s], smoothed


class _FeatureDetector(Detector):
    """What the feature-based detectors share: frozen pretrained multi-layer features (`MultiLayerFeatures`,
    which knows where each feature cell looks) and the aligned map post-processing."""

    def __init__(self, backbone: nn.Module | None, layers: Sequence[str], scale_to: str | None,
                 neighbourhood: int, align: bool, sigma: float, reduction: str, top_k: float,
                 batch_size: int, device: torch.device | str | None, image_size: int | tuple[int, int] | None,
                 resize: str) -> None:
        super().__init__(sigma, reduction, top_k, batch_size, device, image_size, resize)
        from course_utils.backbones import pretrained_backbone
        from course_utils.models import MultiLayerFeatures

        backbone = backbone if backbone is not None else pretrained_backbone("efficientnet_lite0")
        self.layers, self.neighbourhood, self.align = tuple(layers), neighbourhood, align
        self.embedder = MultiLayerFeatures(backbone, self.layers, pool=neighbourhood, scale_to=scale_to, align=align)

    @property
    def stage_channels(self) -> tuple[int, ...]:
        """How many of the D feature channels each layer contributes."""
        return self.embedder.channels

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Raw multi-layer patch features [N, D, h, w] of images [N, 3, H, W], on the detector's device."""
        _check_images(images)
        return anomaly.run_in_batches(self.embedder, images, self.batch_size, self.device, to_cpu=False)

    def _to_image_maps(self, cell_maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Cell maps [N, h, w] placed at their receptive-field centres, image size [N, H, W], smoothed."""
        return anomaly.to_image_maps(cell_maps, tuple(size), self.sigma, stride=self.embedder.out_stride,
                                     offset=self.embedder.out_offset, align=self.align)


class FeatureAEDetector(_FeatureDetector):
    """An autoencoder over pretrained features (lab 6 (d)): the DFR idea of Shi et al. (2021).

    The features of `layers` of a frozen ImageNet CNN (EfficientNet-Lite0 by default), each
    averaged over a `neighbourhood` x `neighbourhood` window and stacked at the grid of
    `scale_to` (None: the first layer, blocks.1 at stride 4 as in lab 6), are standardised per channel (mean and std
    of the good images, set by fit);
    a `FeatureAutoencoder(hidden, latent_channels)` of 1x1 convolutions learns to reproduce them
    (`epochs` of `cu.train.fit`, Adam(`lr`), shuffled batches of `batch_size`, after
    `seed_everything(seed)`). The squared feature error per cell is the anomaly map; the image
    score its `reduction` (lab 6: the maximum).
    """

    def __init__(self, backbone: nn.Module | None = None, layers: Sequence[str] = ("blocks.1", "blocks.2", "blocks.3"),
                 scale_to: str | None = None, neighbourhood: int = 3, hidden: int = 128, latent_channels: int = 32,
                 epochs: int = 40, lr: float = 1e-3, batch_size: int = 16, sigma: float = 4.0,
                 reduction: str = "max", top_k: float = 0.01, align: bool = True, seed: int = 0,
                 device: torch.device | str | None = None, image_size: int | tuple[int, int] | None = None,
                 resize: str = "pad") -> None:
        super().__init__(backbone, layers, scale_to, neighbourhood, align, sigma, reduction, top_k, batch_size, device,
                         image_size, resize)
        from course_utils.models import FeatureAutoencoder

        self.hidden, self.latent_channels, self.epochs, self.lr, self.seed = hidden, latent_channels, epochs, lr, seed
        self.autoencoder = FeatureAutoencoder(sum(self.stage_channels), hidden, latent_channels)
        self.register_buffer("feature_mean", torch.empty(0))  # [1, D, 1, 1] after fit
        self.register_buffer("feature_std", torch.empty(0))  # [1, D, 1, 1] after fit

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Standardised features [N, D, h, w] of images [N, 3, H, W] (the autoencoder's input)."""
        self._require_fit()
        return (self.features(images) - self.feature_mean) / self.feature_std  # [N, D, h, w]

    def _fit(self, batches: _Batches) -> None:
        from course_utils.device import seed_everything
        from course_utils.models import FeatureAutoencoder

        features = torch.cat([self.embedder.eval()(batch) for batch in batches])  # [N, D, h, w]
        self.feature_mean, self.feature_std = anomaly.channel_stats(features)  # [1, D, 1, 1] each
        standardised = ((features - self.feature_mean) / self.feature_std).cpu()  # [N, D, h, w]
        seed_everything(self.seed)
        self.autoencoder = FeatureAutoencoder(features.shape[1], self.hidden, self.latent_channels)
        self.history = _train(self.autoencoder, standardised, nn.MSELoss(), self.epochs, self.lr,
                              self.batch_size, self.device)

    @torch.no_grad()
    def error_maps(self, images: torch.Tensor) -> torch.Tensor:
        """Raw feature-error maps [N, h, w] (one value per feature cell) of images [N, 3, H, W], on the CPU."""
        features = self.embed(images)  # [N, D, h, w]
        recons = anomaly.run_in_batches(self.autoencoder, features, 32, self.device, to_cpu=False)  # [N, D, h, w]
        return anomaly.feature_error_map(features, recons).cpu()  # [N, h, w]

    def _predict(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self._to_image_maps(self.error_maps(images), images.shape[-2:]), None  # [N, H, W]


# --------------------------------------------------------------------------------------------
# Lab 7: PatchCore and PaDiM
# --------------------------------------------------------------------------------------------


class PatchCore(_FeatureDetector):
    """PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022).

    `fit(images)` stores the patch features of good images [N, 3, H, W] (values in [0, 1]) in a
    memory bank, thinned to `coreset_ratio` of its size by greedy coreset selection. Features:
    `layers` (each averaged over `neighbourhood` x `neighbourhood`, stacked at the first layer's
    grid), each stage divided by its mean feature length on the good images (`stage_scales`, the
    course's own addition: without it the deeper stage dominates distances). `predict(images)`
    returns (scores [N], maps [N, H, W]): a patch's anomaly is the distance to its nearest
    neighbour in the bank; the image score is the worst patch's distance, re-weighted by how
    crowded the bank is around that patch's neighbour (`num_neighbors`).

    Fit streams: each batch's patches go into one preallocated bank (N x h x w rows), so memory
    is the bank plus one batch. `coreset_chunk` chooses the coreset: None is the exact greedy
    (its cost grows with the square of the number of training images); a number (default
    65536 patches, about 41 images at 320 px) the linear-time chunked greedy
    (`cu.anomaly.chunked_coreset`), chosen by measurement on MVTec bottle (`benchmarks/anomaly.py
    --methods patchcore,patchcore_exact`): at 209 images it ties with the exact one on image and pixel AUROC and PRO
    and fits faster; its greedy steps scan one chunk, not the whole bank (the exact one's
    N x n cost is what made an 800-image fit quadratic). `image_size` and `resize` bring
    images of any size to one model size (see `Detector`).
    """

    def __init__(self, backbone: nn.Module | None = None, layers: Sequence[str] = ("blocks.2", "blocks.3"),
                 coreset_ratio: float = 0.01, num_neighbors: int = 9, projection_dim: int = 64,
                 neighbourhood: int = 3, sigma: float = 4.0, batch_size: int = 32,
                 device: torch.device | str | None = None, seed: int = 0, align: bool = True,
                 coreset_chunk: int | None = 65536, image_size: int | tuple[int, int] | None = None,
                 resize: str = "pad") -> None:
        if not 0 < coreset_ratio <= 1:
            raise ValueError(f"coreset_ratio must be in (0, 1], got {coreset_ratio}.")
        super().__init__(backbone, layers, layers[0], neighbourhood, align, sigma, "max", 0.01, batch_size, device,
                         image_size, resize)
        self.coreset_ratio, self.num_neighbors = coreset_ratio, num_neighbors
        self.projection_dim, self.seed, self.coreset_chunk = projection_dim, seed, coreset_chunk
        self.register_buffer("memory_bank", torch.empty(0, 0))  # [M, D] after fit
        self.register_buffer("stage_scales", torch.empty(0))  # [S] mean feature length per stage, after fit

    def _scaled(self, features: torch.Tensor) -> torch.Tensor:
        """Features [N, D, h, w] with each stage divided by its scale from fit."""
        return features / self._channel_scales(features.device).view(1, -1, 1, 1)  # [N, D, h, w]: stages count alike

    def _channel_scales(self, device: torch.device) -> torch.Tensor:
        """Each channel's stage scale [D]: `stage_scales` [S] repeated over the stage's channels."""
        sizes = torch.tensor(self.stage_channels, device=device)
        return self.stage_scales.to(device).repeat_interleave(sizes)  # [D]

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch features [N, D, h, w] of images [N, 3, H, W], each stage scaled by `stage_scales` (from fit)."""
        self._require_fit()
        return self._scaled(self.features(images))

    def _fit(self, batches: _Batches) -> None:
        self.embedder.eval()
        bank, filled = None, 0
        norm_sums = torch.zeros(len(self.stage_channels), dtype=torch.float64, device=self.device)  # [S]
        for batch in batches:
            features = self.embedder(batch)  # [b, D, h, w]
            if bank is None:  # one allocation for every patch of every image
                bank = features.new_empty(len(batches) * features.shape[2] * features.shape[3], features.shape[1])
            norm_sums += torch.stack([part.norm(dim=1).double().sum() for part in features.split(self.stage_channels, 1)])
            patches = features.permute(0, 2, 3, 1).flatten(0, 2)  # [b*h*w, D]
            bank[filled:filled + len(patches)] = patches
            filled += len(patches)
        self.stage_scales = (norm_sums / filled).float()  # [S] mean feature length per stage
        bank /= self._channel_scales(bank.device)  # [N*h*w, D]
        n = max(1, round(self.coreset_ratio * len(bank)))
        if n < len(bank):
            keep = anomaly.greedy_coreset(bank, n, self.projection_dim, self.seed, chunk_size=self.coreset_chunk)
            bank = bank[keep]  # [M, D]
        self.memory_bank = bank.contiguous()  # [M, D]

    def _predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self._scaled(self.embedder.eval()(images))  # [N, D, h, w]
        n, d, h, w = features.shape
        patches = features.permute(0, 2, 3, 1).reshape(n, h * w, d)  # [N, P, D]
        distances, nearest = anomaly.nearest_neighbours(patches.flatten(0, 1), self.memory_bank)  # [N*P, 1] each
        distances, nearest = distances.view(n, h * w), nearest.view(n, h * w)  # [N, P]
        scores = anomaly.reweighted_scores(patches, distances, nearest, self.memory_bank, self.num_neighbors)  # [N]
        return self._to_image_maps(distances.view(n, h, w), images.shape[-2:]), scores  # [N, H, W], [N]


class PaDiM(_FeatureDetector):
    """PaDiM (Defard et al., "PaDiM: a Patch Distribution Modeling Framework", ICPR 2021).

    `fit(images)` fits, at every patch position of good images [N, 3, H, W] (values in [0, 1]),
    a Gaussian (mean, covariance) over a random subset of `n_features` feature channels of
    `layers` (stacked at the first layer's grid). With few images the sample covariance is
    singular (rank < N), so it is shrunk towards a scaled identity (`shrinkage="ledoit_wolf"`,
    the weight chosen from the data; a number fixes it; 0 is the paper's plain covariance), plus
    `regularization` x identity. `predict(images)` returns (scores [N], maps [N, H, W]): a
    patch's anomaly is its Mahalanobis distance to its position's Gaussian; an image's score is
    the maximum of its map. Fit streams: each batch is added to running float64 sums
    (`cu.anomaly.GaussianSums`), so memory is the Gaussians plus one batch, however many images.
    """

    def __init__(self, backbone: nn.Module | None = None,
                 layers: Sequence[str] = ("blocks.1", "blocks.2", "blocks.3"), n_features: int = 100,
                 regularization: float = 0.01, shrinkage: float | str = "ledoit_wolf", neighbourhood: int = 1,
                 sigma: float = 4.0, batch_size: int = 32, device: torch.device | str | None = None,
                 seed: int = 0, align: bool = True, image_size: int | tuple[int, int] | None = None,
                 resize: str = "pad") -> None:
        super().__init__(backbone, layers, layers[0], neighbourhood, align, sigma, "max", 0.01, batch_size, device,
                         image_size, resize)
        self.n_features, self.regularization, self.shrinkage, self.seed = n_features, regularization, shrinkage, seed
        self.register_buffer("channels", torch.empty(0, dtype=torch.long))  # [C] kept channels, after fit
        self.register_buffer("mean", torch.empty(0))  # [P, C] after fit
        self.register_buffer("precision", torch.empty(0))  # [P, C, C] inverse covariances, after fit
        self.register_buffer("shrinkage_weights", torch.empty(0))  # [P] the shrinkage used at each position

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Features [N, C, h, w] of images [N, 3, H, W]: all stages stacked, the channel subset chosen by fit."""
        self._require_fit()
        return self.features(images)[:, self.channels]  # [N, C, h, w]

    def _fit(self, batches: _Batches) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        self.channels = torch.randperm(sum(self.stage_channels), generator=generator)[: self.n_features].to(self.device)
        sums = anomaly.GaussianSums()
        for batch in batches:
            sums.add(self.embedder.eval()(batch)[:, self.channels])  # [b, C, h, w]
        gaussians = sums.gaussians(self.regularization, self.shrinkage)
        self.mean, self.precision, self.shrinkage_weights = gaussians  # [P, C], [P, C, C], [P]

    def _predict(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        features = self.embedder.eval()(images)[:, self.channels]  # [N, C, h, w]
        if features.shape[2] * features.shape[3] != len(self.mean):
            raise ValueError("PaDiM compares patch positions: give test images the size of the training images "
                             "(or give the detector image_size=...).")
        distances = anomaly.mahalanobis_maps(features, self.mean, self.precision)  # [N, h, w]
        return self._to_image_maps(distances, images.shape[-2:]), None  # [N, H, W]


# --------------------------------------------------------------------------------------------
# Lab 7: anomalib's implementations behind the same interface
# --------------------------------------------------------------------------------------------

_NOISY_LOGGERS = ("lightning", "lightning.pytorch", "lightning_fabric", "pytorch_lightning", "anomalib",
                  "torch.distributed")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence anomalib and Lightning inside the block; results and errors still come through.

    Hides warnings (timm's and dinov2's FutureWarnings on import, Lightning's hyper-parameter
    and data-loader warnings), Lightning's log lines ("GPU available", model summaries, adverts)
    and anything written to stderr (progress bars). Use it around `anomalib.engine.Engine` calls
    too: `with cu.detectors.quiet(): engine.fit(...)`.
    """
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [log.level for log in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        for log in loggers:
            log.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for log, level in zip(loggers, levels):
                log.setLevel(level)


class AnomalibDetector(Detector):
    """anomalib 2.x's PatchCore or PaDiM (`model="patchcore"` or `"padim"`) with the course's interface.

    Builds anomalib's torch model (`PatchcoreModel` / `PadimModel`) on the same bundled
    EfficientNet-Lite0 and the same `layers` as the course's detectors (PatchCore: blocks.2-3,
    `coreset_ratio`; PaDiM: blocks.1-3, `n_features`) and drives it on the in-memory images: no
    files, no downloads, no Lightning loop, so timings compare the algorithms. Images are
    ImageNet-normalised as anomalib expects. Maps are anomalib's own (its upsampling and its
    Gaussian blur, sigma 4). All of anomalib's warnings and log lines are silenced (`quiet`).
    """

    def __init__(self, model: str = "patchcore", backbone: nn.Module | None = None,
                 layers: Sequence[str] | None = None, coreset_ratio: float = 0.01, n_features: int = 100,
                 batch_size: int = 32, device: torch.device | str | None = None, seed: int = 0) -> None:
        super().__init__(0.0, "max", 0.01, batch_size, device)
        from course_utils.backbones import pretrained_backbone

        if model not in ("patchcore", "padim"):
            raise ValueError(f"model must be 'patchcore' or 'padim', not {model!r}.")
        backbone = backbone if backbone is not None else pretrained_backbone("efficientnet_lite0")
        default = ("blocks.2", "blocks.3") if model == "patchcore" else ("blocks.1", "blocks.2", "blocks.3")
        self.kind, self.layers = model, list(layers or default)
        self.coreset_ratio, self.n_features, self.seed = coreset_ratio, n_features, seed
        with quiet(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # PaDiM draws its channel subset when it is built
            if model == "patchcore":
                from anomalib.models.image.patchcore.torch_model import PatchcoreModel

                self.model = PatchcoreModel(layers=self.layers, backbone=backbone)
            else:
                from anomalib.models.image.padim.torch_model import PadimModel

                self.model = PadimModel(layers=self.layers, backbone=backbone, n_features=n_features)

    def _fit(self, batches: _Batches) -> None:
        from course_utils.backbones import imagenet_normalize

        with quiet(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)  # anomalib's coreset starts at a random point
            self.model.train()
            if self.kind == "patchcore":
                self.model.embedding_store = []
            else:
                self.model.memory_bank = []
            for batch in batches:
                self.model(imagenet_normalize(batch))  # stores the batch's embeddings
            if self.kind == "patchcore":
                self.model.subsample_embedding(self.coreset_ratio)
            else:
                self.model.fit()
            self.model.eval()

    def _predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from course_utils.backbones import imagenet_normalize

        self.model.eval()
        scores, maps = [], []
        with quiet():
            for batch in images.split(self.batch_size):
                out = self.model(imagenet_normalize(batch.to(self.device)))  # InferenceBatch
                scores.append(out.pred_score.reshape(-1).float().cpu())  # [b]
                maps.append(out.anomaly_map.reshape(len(batch), *out.anomaly_map.shape[-2:]).float().cpu())  # [b, H, W]
        return torch.cat(maps), torch.cat(scores)  # [N, H, W], [N]


# --------------------------------------------------------------------------------------------
# Lab 5: classical detectors (scikit-learn) on one vector per image
# --------------------------------------------------------------------------------------------

CLASSICAL_METHODS = ("isolation_forest", "lof", "ocsvm")


def classical_estimator(method: str, n_train: int, seed: int = 0):
    """A scikit-learn novelty detector with lab 5's settings, fixed in advance (not tuned on any test set).

    "isolation_forest": `IsolationForest(n_estimators=200)` (Liu et al., 2008); "lof":
    `LocalOutlierFactor(n_neighbors=min(20, n_train - 1), novelty=True)` (Breunig et al., 2000),
    `novelty=True` so that it scores new images instead of only its training set; "ocsvm":
    `OneClassSVM(nu=0.1, gamma="scale")` (Schölkopf et al., 2001). Their `score_samples` is high
    for normal data.
    """
    from sklearn.ensemble import IsolationForest
    from sklearn.neighbors import LocalOutlierFactor
    from sklearn.svm import OneClassSVM

    if method == "isolation_forest":
        return IsolationForest(n_estimators=200, random_state=seed)
    if method == "lof":
        return LocalOutlierFactor(n_neighbors=max(1, min(20, n_train - 1)), novelty=True)
    if method == "ocsvm":
        return OneClassSVM(nu=0.1, gamma="scale")
    raise ValueError(f"method must be one of {CLASSICAL_METHODS}, not {method!r}.")


class ClassicalDetector(Detector):
    """Isolation forest, local outlier factor or one-class SVM on one vector per image (lab 5).

    fit(good images [N, 3, H, W]) turns each image into a vector: `features="pca"` flattens the
    pixels and keeps the codes of their first `n_components` principal directions (fitted on the
    good images), `features="backbone"` pools the pretrained feature maps of `layers`
    (`cu.backbones.pooled_features`, `pooling`; by default the maximum over positions of the stages
    lab 7's PatchCore uses, so that a small defect can still move the vector); the vectors are standardised with the good
    images' mean and standard deviation, and the `method`'s scikit-learn estimator
    (`classical_estimator`) is fitted on them. predict: the image score is minus the estimator's
    `score_samples` (high = anomalous). These detectors score whole images: `Prediction.maps` is
    None (no pixel AUROC, no PRO). The fitted scikit-learn objects are attributes, not buffers:
    pickle the detector to keep it.
    """

    def __init__(self, method: str = "isolation_forest", features: str = "backbone", n_components: int = 16,
                 backbone: nn.Module | None = None, layers: Sequence[str] = ("blocks.2", "blocks.3"),
                 pooling: str = "max", batch_size: int = 32, seed: int = 0,
                 device: torch.device | str | None = None) -> None:
        super().__init__(0.0, "max", 0.01, batch_size, device)
        if method not in CLASSICAL_METHODS:
            raise ValueError(f"method must be one of {CLASSICAL_METHODS}, not {method!r}.")
        if features not in ("pca", "backbone"):
            raise ValueError(f"features must be 'pca' (pixel PCA codes) or 'backbone' (pretrained), not {features!r}.")
        self.method, self.features_kind, self.n_components = method, features, n_components
        self.layers, self.pooling, self.seed = tuple(layers), pooling, seed
        self.extractor = None
        if features == "backbone":
            from course_utils.backbones import FeatureExtractor, pretrained_backbone

            backbone = backbone if backbone is not None else pretrained_backbone("efficientnet_lite0")
            self.extractor = FeatureExtractor(backbone, self.layers)
        self.pca = self.scaler = self.estimator = None  # scikit-learn objects, set by fit

    def vectors(self, images: torch.Tensor) -> torch.Tensor:
        """Standardised vectors [N, D] of images [N, 3, H, W] (fit must have run: PCA and scaler are fitted)."""
        self._require_fit()
        return torch.from_numpy(self.scaler.transform(self._raw_vectors(images))).float()

    def _raw_vectors(self, images: torch.Tensor):
        """Unstandardised vectors [N, D] as a NumPy array: PCA codes or pooled backbone features."""
        from course_utils.backbones import pooled_features

        if self.features_kind == "pca":
            return self.pca.transform(images.flatten(1).numpy())  # [N, k]
        return pooled_features(self.extractor, images, self.pooling, self.batch_size, self.device).numpy()  # [N, D]

    def _fit(self, batches: _Batches) -> None:
        from sklearn.decomposition import PCA
        from sklearn.preprocessing import StandardScaler

        images = batches.stack()  # [N, 3, H, W] on the CPU: PCA and scikit-learn need every image at once
        if self.features_kind == "pca":
            k = min(self.n_components, len(images) - 1, images[0].numel())
            self.pca = PCA(n_components=k, random_state=self.seed).fit(images.flatten(1).numpy())
        raw = self._raw_vectors(images)  # [N, D]
        self.scaler = StandardScaler().fit(raw)
        self.estimator = classical_estimator(self.method, len(images), self.seed).fit(self.scaler.transform(raw))

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        """Image scores [N] (minus `score_samples`: high = anomalous) and maps None, for images [N, 3, H, W]."""
        self._require_fit()
        _check_images(images)
        start = time.perf_counter()
        scores = -self.estimator.score_samples(self.vectors(images).numpy())  # [N]
        self.predict_seconds = time.perf_counter() - start
        return Prediction(torch.as_tensor(scores).float(), None)
