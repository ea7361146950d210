"""Tests of lab 5's classical detectors (`cu.detectors.ClassicalDetector`) and `cu.backbones.pooled_features`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest
from sklearn.preprocessing import StandardScaler

from course_utils import backbones, detectors, metrics


@pytest.fixture(scope="module")
def backbone() -> torch.nn.Module:
    return backbones.pretrained_backbone("efficientnet_lite0")


def _texture(n: int, seed: int, size: int = 64) -> torch.Tensor:
    """Smoothed-noise 'good' images [n, 3, size, size] in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    gray = F.interpolate(torch.rand(n, 1, size // 4, size // 4, generator=g), size=size, mode="bilinear")
    return (0.35 + 0.3 * gray.repeat(1, 3, 1, 1)).clamp(0, 1)  # [n, 3, size, size]


def _with_square(images: torch.Tensor) -> torch.Tensor:
    """A copy with a red 12 x 12 square in the middle: an obvious defect."""
    bad = images.clone()
    bad[:, :, 26:38, 26:38] = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    return bad


def test_pooled_features_mean_max_and_both(backbone) -> None:
    extractor = backbones.FeatureExtractor(backbone, ("blocks.2", "blocks.3"))
    images = _texture(3, seed=0)
    maps = extractor(images)  # {layer: [3, C, h, w]}
    mean = backbones.pooled_features(extractor, images, "mean")
    assert mean.shape == (3, 40 + 80)
    torch.testing.assert_close(mean[:, :40], maps["blocks.2"].mean(dim=(2, 3)))
    top = backbones.pooled_features(extractor, images, "max")
    torch.testing.assert_close(top[:, 40:], maps["blocks.3"].amax(dim=(2, 3)))
    assert backbones.pooled_features(extractor, images, "meanmax").shape == (3, 240)
    with pytest.raises(ValueError, match="pooling"):
        backbones.pooled_features(extractor, images, "median")


def test_classical_detector_matches_scikit_learn_on_pca_codes() -> None:
    train, test = _texture(30, seed=1), _texture(5, seed=2)
    ours = detectors.ClassicalDetector("isolation_forest", features="pca", n_components=8, seed=3).fit(train)
    pca = PCA(n_components=8, random_state=3).fit(train.flatten(1).numpy())
    scaler = StandardScaler().fit(pca.transform(train.flatten(1).numpy()))
    forest = IsolationForest(n_estimators=200, random_state=3).fit(scaler.transform(pca.transform(train.flatten(1).numpy())))
    expected = -forest.score_samples(scaler.transform(pca.transform(test.flatten(1).numpy())))
    scores, maps = ours.predict(test)
    assert maps is None and scores.shape == (5,)
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("method", detectors.CLASSICAL_METHODS)
def test_classical_detectors_rank_an_obvious_defect_first(backbone, method) -> None:
    train, good = _texture(24, seed=4), _texture(6, seed=5)
    test = torch.cat([good, _with_square(_texture(6, seed=6))])  # [12, 3, 64, 64]
    labels = torch.tensor([0] * 6 + [1] * 6)
    detector = detectors.ClassicalDetector(method, backbone=backbone).fit(train)
    assert detector.vectors(test).shape == (12, 120)  # max over positions of blocks.2 (40) and blocks.3 (80)
    prediction = detector.predict(test)
    assert metrics.image_auroc(labels, prediction.scores) > 0.9
    result = metrics.evaluate(_Data(labels), prediction)  # no maps: the pixel metrics are NaN, not an error
    assert np.isnan(result["pixel_auroc"]) and result["image_auroc"] > 0.9


class _Data:
    """The few fields of cu.data.AnomalyData that `evaluate` reads."""

    def __init__(self, labels: torch.Tensor) -> None:
        self.test_labels, self.test_masks = labels, torch.zeros(len(labels), 64, 64)
        self.test_defects, self.has_masks = ["good" if y == 0 else "square" for y in labels], True


def test_classical_detector_says_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="method must be one of"):
        detectors.ClassicalDetector("kmeans", features="pca")
    with pytest.raises(ValueError, match="features must be"):
        detectors.ClassicalDetector("lof", features="pixels")
    with pytest.raises(RuntimeError, match="not fitted"):
        detectors.ClassicalDetector("lof", features="pca").predict(_texture(2, seed=0))
