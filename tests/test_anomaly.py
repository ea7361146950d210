"""Tests of course_utils.anomaly: map smoothing and scores, PatchCore and PaDiM on small synthetic cases."""

from __future__ import annotations

import pytest
import torch

from course_utils import anomaly
from course_utils.backbones import pretrained_backbone


@pytest.fixture(scope="module")
def backbone() -> torch.nn.Module:
    return pretrained_backbone("efficientnet_lite0")


def _stripes(n: int, size: int = 96, seed: int = 0) -> torch.Tensor:
    """Good 'parts': diagonal stripes with a random phase and a little noise, [n, 3, size, size] in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    phase = torch.rand(n, 1, 1, generator=g) * 6.28
    gray = 0.5 + 0.3 * torch.sin((xx + yy)[None] * 0.5 + phase)  # [n, size, size]
    images = gray[:, None].repeat(1, 3, 1, 1) + 0.03 * torch.randn(n, 3, size, size, generator=g)
    return images.clamp(0, 1)  # [n, 3, size, size]


def _with_defect(images: torch.Tensor) -> torch.Tensor:
    """A copy of images with a red 12 x 12 square at rows/cols 44:56, mid-image (the obvious defect)."""
    bad = images.clone()
    bad[:, :, 44:56, 44:56] = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    return bad


def test_patch_embedding_pools_upsamples_and_concatenates() -> None:
    shallow, deep = torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)
    out = anomaly.patch_embedding([shallow, deep])
    assert out.shape == (2, 10, 8, 8)
    inner = shallow[:, :, 2:5, 2:5].mean(dim=(2, 3))  # the 3x3 neighbourhood of patch (3, 3)
    torch.testing.assert_close(out[:, :4, 3, 3], inner)
    torch.testing.assert_close(anomaly.patch_embedding([shallow], neighbourhood=1), shallow)


def test_nearest_neighbours_match_brute_force_across_chunks() -> None:
    queries, bank = torch.randn(50, 7), torch.randn(30, 7)
    exact = torch.cdist(queries, bank)  # [50, 30]
    torch.testing.assert_close(anomaly.squared_distances(queries, bank), exact ** 2, atol=1e-4, rtol=1e-4)
    dist, idx = anomaly.nearest_neighbours(queries, bank, k=3, chunk_size=16)
    expected = exact.topk(3, dim=1, largest=False)
    torch.testing.assert_close(dist, expected.values, atol=1e-4, rtol=1e-4)
    assert torch.equal(idx, expected.indices)


def _covering_radius(points: torch.Tensor, chosen: torch.Tensor) -> float:
    """The largest distance from any point to its nearest chosen point."""
    return torch.cdist(points, points[chosen]).min(dim=1).values.max().item()


def test_coreset_covers_the_bank_better_than_random_subsampling() -> None:
    g = torch.Generator().manual_seed(0)
    common = torch.randn(3000, 2, generator=g)  # the usual patches
    rare = torch.tensor([8.0, 8.0]) + 0.3 * torch.randn(15, 2, generator=g)  # a rare normal pattern
    lift = torch.randn(2, 16, generator=g)  # embed the 2-D picture in 16-D feature space
    points = torch.cat([common, rare]) @ lift  # [3015, 16]
    chosen = anomaly.greedy_coreset(points, 60, projection_dim=8)
    assert chosen.shape == (60,) and len(chosen.unique()) == 60
    assert (chosen >= 3000).any(), "the coreset must keep a representative of the rare cluster"
    random_radii = [_covering_radius(points, torch.randperm(len(points), generator=g)[:60]) for _ in range(5)]
    assert _covering_radius(points, chosen) < 0.8 * min(random_radii)


def test_coreset_adds_the_farthest_point_next() -> None:
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [0.0, 3.0]])
    chosen = anomaly.greedy_coreset(points, 3)
    far = torch.cdist(points[chosen[:1]], points)[0].argmax()
    assert chosen[1] == far
    with pytest.raises(ValueError, match="Cannot choose"):
        anomaly.greedy_coreset(points, 5)


def test_reweighting_damps_an_isolated_neighbour() -> None:
    bank = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [5.0, 5.0]])  # a dense clump + one loner
    patches = torch.tensor([[[-1.0, 0.0]], [[6.0, 5.0]]])  # [2 images, 1 patch, 2]: both 1.0 from their NN
    dist, idx = anomaly.nearest_neighbours(patches.flatten(0, 1), bank)  # [2, 1]
    scores = anomaly.reweighted_scores(patches, dist.view(2, 1), idx.view(2, 1), bank, num_neighbors=3)
    near_clump = torch.tensor([1.0, 1.1, (1 + 0.01) ** 0.5])  # the first patch's distances to its support
    torch.testing.assert_close(scores[0], (1 - near_clump.softmax(0)[0]) * 1.0)
    assert scores[1] > 0.99  # same raw distance, but its neighbour is a rare pattern: not damped


def test_mahalanobis_equals_the_textbook_formula() -> None:
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(20, 3, 2, 2, generator=g), torch.randn(4, 3, 2, 2, generator=g)
    mean, precision, shrinkage = anomaly.gaussian_per_position(train, regularization=0.01, shrinkage=0.0)
    maps = anomaly.mahalanobis_maps(test, mean, precision)  # [4, 2, 2]
    assert mean.shape == (4, 3) and precision.shape == (4, 3, 3) and maps.shape == (4, 2, 2)
    assert (shrinkage == 0).all()
    for i, j in [(0, 0), (1, 1), (0, 1)]:
        x = train[:, :, i, j].double()  # [20, 3]
        cov = torch.cov(x.T) + 0.01 * torch.eye(3, dtype=torch.float64)
        delta = test[:, :, i, j].double() - x.mean(0)  # [4, 3]
        expected = (delta @ torch.linalg.inv(cov) * delta).sum(1).sqrt()  # [4]
        torch.testing.assert_close(maps[:, i, j].double(), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("detector", ["patchcore", "padim"])
def test_obvious_defect_gets_the_top_score_and_the_map_peaks_on_it(backbone, detector) -> None:
    train, good = _stripes(12, seed=0), _stripes(4, seed=1)
    test = torch.cat([good, _with_defect(_stripes(1, seed=2))])  # [5, 3, 96, 96], the last is defective
    if detector == "patchcore":
        model = anomaly.PatchCore(backbone, coreset_ratio=0.25)
    else:
        model = anomaly.PaDiM(backbone, n_features=48)
    scores, maps = model.fit(train).predict(test)
    assert scores.shape == (5,) and maps.shape == (5, 96, 96)
    assert scores.argmax() == 4 and scores[4] > 1.2 * scores[:4].max()
    row, col = divmod(maps[4].argmax().item(), 96)
    assert 40 <= row < 60 and 40 <= col < 60, f"map peaks at {(row, col)}, the defect is at 44:56"


def test_patchcore_bank_size_and_clear_errors(backbone) -> None:
    model = anomaly.PatchCore(backbone, coreset_ratio=0.1)
    with pytest.raises(RuntimeError, match="fit"):
        model.predict(_stripes(1))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.fit(_stripes(2) * 255)
    model.fit(_stripes(3))
    assert model.memory_bank.shape == (round(0.1 * 3 * 12 * 12), 40 + 80)  # blocks.2 is 12x12 at 96 px
    stages = model.embed(_stripes(3)).split([40, 80], dim=1)  # good images: each stage scaled by fit
    for stage in stages:
        assert stage.norm(dim=1).mean().item() == pytest.approx(1.0, rel=1e-3)


def test_distance_contrast_is_nearest_over_farthest_and_grows_with_dimension():
    queries, points = torch.tensor([[0.0], [3.0]]), torch.tensor([[1.0], [2.0], [4.0]])
    assert torch.allclose(anomaly.distance_contrast(queries, points), torch.tensor([1 / 4, 1 / 2]))
    g = torch.Generator().manual_seed(0)
    mean_contrast = [anomaly.distance_contrast(torch.rand(20, d, generator=g), torch.rand(200, d, generator=g)).mean()
                     for d in (2, 64, 2048)]
    assert mean_contrast[0] < mean_contrast[1] < mean_contrast[2] < 1
    with pytest.raises(ValueError, match="same D"):
        anomaly.distance_contrast(torch.zeros(3, 4), torch.zeros(5, 3))
