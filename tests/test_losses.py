"""Tests of course_utils.losses: SSIM against scikit-image, the feature loss's behaviour."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from course_utils import losses


def _textured_images(n: int = 2, size: int = 48, seed: int = 0) -> torch.Tensor:
    """Smooth random images [n, 3, size, size] in [0, 1] (blurred noise: structure at several scales)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size // 4, size // 4, generator=g)
    x = F.interpolate(x, size=size, mode="bicubic", align_corners=False)  # [n, 3, size, size]
    return (x + 0.1 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)


def test_ssim_matches_scikit_image():
    from skimage.metrics import structural_similarity

    x = _textured_images(1, 64, seed=1)
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    ours = losses.ssim(x, y, reduction="none")[0]  # [64, 64]
    _, theirs = structural_similarity(x[0].permute(1, 2, 0).numpy(), y[0].permute(1, 2, 0).numpy(),
                                      channel_axis=2, gaussian_weights=True, sigma=1.5,
                                      use_sample_covariance=False, data_range=1.0, full=True)
    inner = slice(8, -8)  # borders are padded differently
    np.testing.assert_allclose(ours[inner, inner].numpy(), theirs.mean(axis=2)[inner, inner], atol=2e-3)


def test_ssim_is_one_for_identical_images_and_drops_with_noise():
    x = _textured_images()
    noisy = lambda s: (x + s * torch.randn_like(x)).clamp(0, 1)  # noqa: E731
    assert losses.ssim(x, x).item() == pytest.approx(1.0, abs=1e-5)
    assert 1 > losses.ssim(x, noisy(0.02)).item() > losses.ssim(x, noisy(0.2)).item()
    assert losses.ssim(x, noisy(0.2), reduction="image").shape == (2,)
    assert losses.ssim(x, noisy(0.2), reduction="none").shape == (2, 48, 48)


def test_ssim_rejects_bad_input():
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="same shape"):
        losses.ssim(x, x[:, :1])
    with pytest.raises(ValueError, match="window"):
        losses.ssim(x[..., :8, :8], x[..., :8, :8])


def test_ssim_loss_is_zero_at_target_and_has_gradients():
    x = _textured_images()
    loss_fn = losses.SSIMLoss(mse_weight=1.0)
    assert loss_fn(x, x).item() == pytest.approx(0.0, abs=1e-5)
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1).requires_grad_()
    loss = loss_fn(y, x)
    loss.backward()
    assert loss.item() > 0.05 and y.grad.abs().sum() > 0


def test_gram_matrix_matches_explicit_sum():
    f = torch.randn(2, 5, 4, 3)
    expected = torch.einsum("bihw,bjhw->bij", f, f) / 12
    torch.testing.assert_close(losses.gram_matrix(f), expected)


@pytest.fixture(scope="module")
def feature_loss():
    return losses.FeatureLoss(stages=(1, 2, 3))


def test_feature_loss_zero_for_identical_and_grows_with_damage(feature_loss):
    x = _textured_images(2, 64)
    assert feature_loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    small = feature_loss((x + 0.02 * torch.randn_like(x)).clamp(0, 1), x).item()
    large = feature_loss((x + 0.2 * torch.randn_like(x)).clamp(0, 1), x).item()
    assert 0 < small < large


def test_feature_loss_forgives_a_shift_more_than_mse_does(feature_loss):
    """The lab-6 point: relative to a blur, a one-pixel shift costs much less in feature space."""
    x = _textured_images(2, 64, seed=3)
    shifted = torch.roll(x, shifts=1, dims=-1)
    blurred = F.avg_pool2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), 5, stride=1)
    mse_ratio = F.mse_loss(shifted, x) / F.mse_loss(blurred, x)
    feature_ratio = feature_loss(shifted, x) / feature_loss(blurred, x)
    assert feature_ratio < mse_ratio


def test_feature_loss_gradient_style_term_and_map(feature_loss):
    x = _textured_images(1, 64)
    y = torch.rand_like(x).requires_grad_()
    feature_loss(y, x).backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    styled = losses.FeatureLoss(stages=(1, 2, 3), style_weight=1.0)
    assert styled(y.detach(), x) > feature_loss(y.detach(), x)
    assert feature_loss.feature_map(y.detach(), x).shape == (1, 64, 64)
    assert not any(p.requires_grad for p in feature_loss.parameters())


def test_feature_map_peaks_on_a_small_difference(feature_loss):
    """feature_map places each stage's cells where they look: a 6-px change peaks within 2 px of it,
    wherever it is (the old F.interpolate stretching put the peak several pixels down-right)."""
    x = _textured_images(1, 128, seed=5)
    for cy, cx in [(40, 40), (80, 64), (61, 90)]:
        damaged = x.clone()
        damaged[..., cy - 3:cy + 3, cx - 3:cx + 3] = 1.0  # a bright 6 x 6 square centred at (cy - 0.5, cx - 0.5)
        heat = feature_loss.feature_map(damaged, x)[0]  # [H, W]
        weight = heat.clamp_min(0.5 * heat.max())  # the hot region
        weight = weight - weight.min()
        rows, cols = torch.arange(128.0), torch.arange(128.0)
        y = (weight.sum(1) * rows).sum() / weight.sum()
        x_ = (weight.sum(0) * cols).sum() / weight.sum()
        assert abs(y - (cy - 0.5)) < 2 and abs(x_ - (cx - 0.5)) < 2, (cy, cx, y.item(), x_.item())


def test_feature_loss_rejects_bad_stages():
    with pytest.raises(ValueError, match="stage"):
        losses.FeatureLoss(stages=(1, 9))
    with pytest.raises(ValueError, match="weight"):
        losses.FeatureLoss(stages=(1, 2), weights=(1.0,))
