"""Tests of the lab 5-6 networks in course_utils.models: ConvAutoencoder, FeatureAutoencoder,
MultiLayerFeatures."""

import pytest
import torch
import torch.nn.functional as F

from course_utils import models


def test_conv_autoencoder_shapes_range_and_bottleneck():
    model = models.ConvAutoencoder(widths=(8, 16, 16), latent_channels=4).eval()
    x = torch.rand(2, 3, 32, 48)
    out = model(x)
    assert out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 1
    assert model.bottleneck[0].out_channels == 4
    assert model.encoder(x).shape == (2, 16, 4, 6)  # three halvings


def test_conv_autoencoder_explains_a_bad_size():
    with pytest.raises(ValueError, match="multiples of 16"):
        models.ConvAutoencoder()(torch.rand(1, 3, 40, 40))


def test_conv_autoencoder_grayscale():
    model = models.ConvAutoencoder(in_channels=1, widths=(8, 8), latent_channels=2)
    assert model(torch.rand(3, 1, 16, 16)).shape == (3, 1, 16, 16)


def test_denoising_noise_only_while_training():
    torch.manual_seed(0)
    model = models.ConvAutoencoder(widths=(8, 8), latent_channels=2, noise_std=0.3)
    x = torch.rand(2, 3, 16, 16)
    model.eval()
    torch.testing.assert_close(model(x), model(x))  # deterministic in eval mode
    model.train()
    assert not torch.allclose(model(x), model(x))  # fresh noise in every training pass


def test_conv_autoencoder_learns_to_reconstruct():
    torch.manual_seed(0)
    x = F.interpolate(torch.rand(8, 3, 4, 4), size=32, mode="bilinear", align_corners=False)
    model = models.ConvAutoencoder(widths=(16, 32), latent_channels=8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = F.mse_loss(model(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0]


def test_feature_autoencoder_keeps_shape():
    model = models.FeatureAutoencoder(in_channels=20, hidden=16, latent_channels=4)
    f = torch.randn(2, 20, 5, 7)
    assert model(f).shape == f.shape


def test_multi_layer_features_stack_and_scale():
    from course_utils.backbones import pretrained_backbone

    feats = models.MultiLayerFeatures(pretrained_backbone(), ("blocks.1", "blocks.2", "blocks.3"),
                                      scale_to="blocks.2")
    x = torch.rand(2, 3, 64, 64)
    out = feats(x)
    assert out.shape == (2, 24 + 40 + 80, 8, 8)
    assert not out.requires_grad
    # the same image twice gives the same features; a different image different ones
    torch.testing.assert_close(feats(x[:1]), out[:1], atol=1e-4, rtol=1e-4)
    assert (feats(x.flip(-1)) - out).abs().mean() > 1e-3
