"""Tests of the lab 5-6 scoring helpers in course_utils.anomaly: error maps, feature errors,
resizing, and a small end-to-end check that a reconstruction score finds a defect."""

import pytest
import torch
import torch.nn.functional as F

from course_utils import anomaly, models


def _smooth(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=size, mode="bilinear",
                         align_corners=False)  # [n, 3, size, size]


def test_error_maps_are_zero_for_perfect_reconstructions_and_peak_at_the_defect():
    x = _smooth(2)
    recon = x.clone()
    for kind in ("mse", "l1", "ssim"):
        assert anomaly.reconstruction_error_map(x, recon, kind).abs().max() < 1e-4
    recon[1, :, 20:24, 5:9] += 0.5  # a "defect" the autoencoder could not reproduce
    for kind in ("mse", "l1", "ssim"):
        maps = anomaly.reconstruction_error_map(x, recon, kind)  # [2, 32, 32]
        assert maps.shape == (2, 32, 32)
        row, col = divmod(int(maps[1].argmax()), 32)
        assert 17 <= row <= 26 and 2 <= col <= 11, kind
        assert maps[1].max() > 10 * maps[0].max() + 1e-3


def test_error_map_rejects_mismatched_shapes_and_kinds():
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match="same shape"):
        anomaly.reconstruction_error_map(x, x[..., :8, :8])
    with pytest.raises(ValueError, match="kind"):
        anomaly.reconstruction_error_map(x, x, "psnr")


def test_feature_error_and_channel_stats():
    f = torch.randn(10, 6, 4, 4) * torch.arange(1, 7).view(1, 6, 1, 1) + 3
    mean, std = anomaly.channel_stats(f)
    z = (f - mean) / std
    torch.testing.assert_close(z.mean(dim=(0, 2, 3)), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(dim=(0, 2, 3)), torch.ones(6), atol=1e-4, rtol=0)
    recon = z.clone()
    recon[:, :, 1, 2] += 2.0
    err = anomaly.feature_error_map(z, recon)  # [10, 4, 4]
    assert err.shape == (10, 4, 4) and torch.allclose(err[:, 1, 2], torch.full((10,), 4.0))
    assert err.sum() == pytest.approx(40.0)


def test_to_image_maps_resizes_and_smooths():
    maps = torch.zeros(3, 8, 8)
    maps[:, 4, 4] = 1
    big = anomaly.to_image_maps(maps, 32, sigma=0)
    smooth = anomaly.to_image_maps(maps, 32, sigma=2)
    assert big.shape == smooth.shape == (3, 32, 32)
    assert smooth.max() < big.max()  # smoothing spreads the peak
    assert abs(int(smooth[0].argmax()) // 32 - 17) <= 2  # ... without moving it


def test_run_in_batches_matches_one_call():
    model = models.FeatureAutoencoder(5, hidden=8, latent_channels=3).eval()
    f = torch.randn(7, 5, 3, 3)
    with torch.no_grad():
        expected = model(f)
    torch.testing.assert_close(anomaly.run_in_batches(model, f, batch_size=3), expected)


def test_autoencoder_error_finds_a_defect_end_to_end():
    """Train on smooth 'good' images; a bright square on a test image gets the highest score."""
    torch.manual_seed(0)
    good = _smooth(32, seed=1)
    model = models.ConvAutoencoder(widths=(16, 32), latent_channels=4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(80):
        loss = F.mse_loss(model(good), good)
        opt.zero_grad()
        loss.backward()
        opt.step()
    test = _smooth(6, seed=2)
    test[3, :, 10:16, 10:16] = torch.tensor([1.0, 0.0, 1.0]).view(3, 1, 1)  # magenta patch
    maps = anomaly.to_image_maps(
        anomaly.reconstruction_error_map(test, anomaly.run_in_batches(model, test)), 32, sigma=1)
    scores = anomaly.image_scores(maps, "max")
    assert int(scores.argmax()) == 3
    row, col = divmod(int(maps[3].argmax()), 32)
    assert 8 <= row <= 18 and 8 <= col <= 18
