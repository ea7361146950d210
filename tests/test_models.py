"""Tests of course_utils.models: shapes, parameter counts, a training step, the whitening layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from course_utils import models

# --- Lab 4: classifiers ---


def test_net_matches_the_slides() -> None:
    net = models.Net()
    assert models.count_parameters(net) == 62_006  # 456 + 2,416 + 48,120 + 10,164 + 850
    assert net(torch.randn(4, 3, 32, 32)).shape == (4, 10)


@pytest.mark.parametrize("make", [
    lambda: models.BetterNet(),
    lambda: models.BetterNet((16, 32), n_classes=7, dropout=0.5, residual=True),
    lambda: models.SpeedRunNet((16, 32, 64), n_classes=7),
])
def test_classifiers_map_images_to_logits(make) -> None:
    model = make()
    n_classes = model.head[-1].out_features if isinstance(model.head, nn.Sequential) else model.head.out_features
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, n_classes)


def test_residual_block_adds_its_input() -> None:
    block = models.ResidualBlock(8)
    for p in block.body.parameters():  # a body that outputs zeros
        nn.init.zeros_(p)
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(block(x), x)


def test_one_training_step_lowers_the_loss_on_a_batch() -> None:
    torch.manual_seed(0)
    model = models.BetterNet((8, 16))
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(5):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        losses.append(loss.item())
        optimizer.step()
    assert all(p.grad is not None for p in model.parameters())
    assert losses[-1] < losses[0]


def test_whitening_weights_decorrelate_patches() -> None:
    torch.manual_seed(0)
    mixing = torch.tensor([[1.0, 0.8, 0.0], [0.0, 1.0, 0.5], [0.0, 0.0, 0.3]])
    images = torch.einsum("dc,nchw->ndhw", mixing, torch.randn(200, 3, 8, 8))  # correlated channels
    images = images + torch.linspace(0, 1, 8).view(1, 1, 1, 8)  # and correlated neighbours
    weight = models.whitening_weights(images, patch_size=2, eps=0.0)  # [24, 3, 2, 2]
    assert weight.shape == (24, 3, 2, 2)
    torch.testing.assert_close(weight[12:], -weight[:12])
    features = nn.functional.conv2d(images, weight[:12])  # [200, 12, 7, 7]
    flat = features.permute(0, 2, 3, 1).reshape(-1, 12)  # [P, 12]
    covariance = torch.cov(flat.T)  # [12, 12]
    torch.testing.assert_close(covariance, torch.eye(12), atol=1e-3, rtol=1e-3)


def test_speedrun_net_freezes_its_whitening_layer() -> None:
    model = models.SpeedRunNet((8, 16, 32)).init_whitening(torch.randn(10, 3, 32, 32))
    assert not model.whiten.weight.requires_grad
    assert not any(block.bn1.weight.requires_grad for block in model.blocks)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_sigmoid_boxes_draws_boxes_with_one_hidden_layer():
    net = models.sigmoid_boxes([0.0, 0.5, 1.0], [2.0, -1.0], steepness=200.0)
    assert [type(m) for m in net] == [nn.Linear, nn.Sigmoid, nn.Linear] and net[0].out_features == 4
    x = torch.tensor([[-0.5], [0.25], [0.75], [1.5]], dtype=torch.float64)  # [4, 1]
    assert torch.allclose(net(x)[:, 0], torch.tensor([0.0, 2.0, -1.0, 0.0], dtype=torch.float64), atol=1e-6)
    grid = torch.linspace(0, 1, 1001, dtype=torch.float64)[:, None]  # [1001, 1]
    errors = []
    for n in (4, 16, 64):
        edges = torch.linspace(0, 1, n + 1, dtype=torch.float64)  # [n + 1]
        heights = torch.sin(6 * (edges[:-1] + edges[1:]) / 2)  # [n]: the curve at each box's middle
        approx = models.sigmoid_boxes(edges, heights, steepness=10 * n)(grid)  # [1001, 1]
        errors.append((approx - torch.sin(6 * grid)).abs().mean().item())
    assert errors[0] > errors[1] > errors[2]
    with pytest.raises(ValueError, match="one more edge"):
        models.sigmoid_boxes([0.0, 1.0], [1.0, 2.0], steepness=10.0)


# --- Lab 2: initialisation ---


def test_layer_statistics_he_keeps_the_size_and_too_small_vanishes() -> None:
    depth, width = 12, 64
    he = models.layer_statistics(depth, width, (2 / width) ** 0.5, torch.relu, batch=256)
    small = models.layer_statistics(depth, width, 0.01, torch.relu, batch=256)
    assert len(he["activation"]) == len(he["gradient"]) == depth
    assert 0.3 < he["activation"][-1] < 3 and 0.3 < he["gradient"][0] < 3  # He: the size survives 12 layers
    assert small["activation"][-1] < 1e-9 and small["gradient"][0] < 1e-9  # too small: both vanish
    assert abs(he["gradient"][-1] - 1) < 0.1  # the read-out's gradient has std 1 at the top


def test_layer_statistics_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="std > 0"):
        models.layer_statistics(3, 8, 0.0)
