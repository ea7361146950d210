"""Detectors at real-world size (issue 14): streaming fit and predict, the linear-time coreset,
images of any size and shape, the optional faiss search."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import course_utils as cu
from course_utils import anomaly, detectors
from course_utils.backbones import pretrained_backbone
from course_utils.data import images as image_io


@pytest.fixture(scope="module")
def backbone() -> torch.nn.Module:
    return pretrained_backbone("efficientnet_lite0")


def _texture_uint8(n: int, seed: int, size: tuple[int, int] = (64, 64)) -> torch.Tensor:
    """Smooth random 'good' images as uint8 [n, 3, H, W]."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(n, 1, size[0] // 4, size[1] // 4, generator=g)
    gray = F.interpolate(noise, size=size, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    images = 0.35 + 0.3 * gray + 0.02 * torch.randn(n, 3, *size, generator=g)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def test_patchcore_streams_into_the_same_bank_whatever_the_batch_and_input_kind(backbone) -> None:
    train = _texture_uint8(7, seed=0)
    floats = train.float() / 255
    one_pass = detectors.PatchCore(backbone, coreset_ratio=0.1, batch_size=64, coreset_chunk=None).fit(floats)
    streamed = detectors.PatchCore(backbone, coreset_ratio=0.1, batch_size=2, coreset_chunk=None).fit(train)
    as_dataset = detectors.PatchCore(backbone, coreset_ratio=0.1, batch_size=3, coreset_chunk=None).fit(
        [{"image": im} for im in floats])
    for other in (streamed, as_dataset):
        torch.testing.assert_close(other.stage_scales, one_pass.stage_scales)
        torch.testing.assert_close(other.memory_bank, one_pass.memory_bank)
    test = _texture_uint8(5, seed=1)
    full, batched = one_pass.predict(test), streamed.predict(test)  # 64 vs 2 images per predict batch
    torch.testing.assert_close(batched.scores, full.scores)
    torch.testing.assert_close(batched.maps, full.maps)
    parts = list(streamed.predict_batches(test))
    assert [len(p.scores) for p in parts] == [2, 2, 1]
    torch.testing.assert_close(torch.cat([p.scores for p in parts]), full.scores)


def test_padim_running_sums_equal_the_one_pass_gaussians(backbone) -> None:
    train = _texture_uint8(9, seed=2).float() / 255
    whole = detectors.PaDiM(backbone, n_features=20, batch_size=64).fit(train)
    streamed = detectors.PaDiM(backbone, n_features=20, batch_size=2).fit(train)
    for name in ("mean", "precision", "shrinkage_weights"):
        torch.testing.assert_close(getattr(streamed, name), getattr(whole, name), rtol=1e-4, atol=1e-5)
    # the sums against the textbook formulas on raw features
    features = whole.embed(train).double()  # [9, 20, h, w]
    x = features.flatten(2).permute(2, 0, 1)  # [P, 9, 20]
    centred = x - x.mean(1, keepdim=True)
    weights = anomaly.ledoit_wolf_shrinkage(centred)  # [P] the direct computation
    torch.testing.assert_close(whole.shrinkage_weights.double(), weights, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(whole.mean.double(), x.mean(1), rtol=1e-5, atol=1e-5)


def test_chunked_coreset_covers_almost_as_well_as_the_exact_one() -> None:
    g = torch.Generator().manual_seed(0)
    bank = torch.cat([torch.randn(3000, 16, generator=g), 6 + torch.randn(30, 16, generator=g)])  # a rare cluster
    n = 60
    exact = anomaly.greedy_coreset(bank, n, projection_dim=16)
    chunked = anomaly.greedy_coreset(bank, n, projection_dim=16, chunk_size=500)
    random = torch.randperm(len(bank), generator=g)[:n]
    assert len(chunked) == n and len(set(chunked.tolist())) == n

    def radius(subset: torch.Tensor) -> float:
        return anomaly.nearest_neighbours(bank, bank[subset], backend="torch")[0].max().item()

    assert radius(chunked) < radius(random)
    assert radius(chunked) <= 1.3 * radius(exact), (radius(chunked), radius(exact))
    assert (chunked >= 3000).any(), "the rare cluster must be kept"


@pytest.mark.parametrize("kind", ["patchcore", "autoencoder"])
@pytest.mark.parametrize("resize", ["pad", "crop", "stretch"])
def test_maps_come_back_at_each_images_own_size(backbone, resize, kind) -> None:
    train = [_texture_uint8(1, seed=i, size=size)[0] for i, size in enumerate([(48, 80), (64, 40), (56, 56)] * 2)]
    if kind == "patchcore":
        det = detectors.PatchCore(backbone, coreset_ratio=0.2, image_size=48, resize=resize).fit(train)
    else:  # the autoencoder brings images to its working size by the same rule
        det = detectors.ReconstructionDetector(widths=(8, 16), latent_channels=4, epochs=1, image_size=48,
                                               resize=resize).fit(train)
        assert det.reconstruct(train[:2]).shape == (2, 3, 48, 48)
    test = [_texture_uint8(1, seed=10, size=(40, 72))[0], _texture_uint8(1, seed=11, size=(66, 30))[0]]
    scores, maps = det.predict(test)
    assert scores.shape == (2,) and [tuple(m.shape) for m in maps] == [(40, 72), (66, 30)]
    same_size = _texture_uint8(3, seed=12, size=(40, 72))
    assert det.predict(same_size).maps.shape == (3, 40, 72)  # one size: still one tensor [N, H, W]


@pytest.mark.parametrize("resize", ["pad", "crop", "stretch"])
def test_fit_to_size_and_map_to_image_undo_each_other(resize) -> None:
    y, x = torch.meshgrid(torch.linspace(0, 1, 60), torch.linspace(0, 1, 90), indexing="ij")
    image = torch.stack([y, x, y * x])  # [3, 60, 90] smooth ramps
    placed = image_io.fit_to_size(image, 48, resize)  # [3, 48, 48]
    assert placed.shape == (3, 48, 48)
    back = image_io.map_to_image(placed[:1], (60, 90), resize)[0]  # [60, 90]
    where = image_io.placement((60, 90), 48, resize)
    lost = round(-where.left * 90 / where.scaled[1]) + 2 if resize == "crop" else 0  # columns crop cut off
    assert (back - y)[:, lost:90 - lost].abs().max() < 0.05
    mask = torch.zeros(60, 90)
    mask[20:30, 40:50] = 1
    assert image_io.fit_mask_to_size(mask, 48, resize).shape == (48, 48)


def test_clear_errors_and_conversions(backbone) -> None:
    train = _texture_uint8(4, seed=3)
    det = detectors.PatchCore(backbone, coreset_ratio=0.2).fit(train)
    with pytest.raises(ValueError, match="image_size"):
        det.predict([train[0], train[0, :, :40]])  # different sizes, no image_size
    with pytest.raises(ValueError, match="channels"):
        det.predict(train[:, :2])
    with pytest.raises(ValueError, match="resize must be"):
        detectors.PaDiM(backbone, image_size=64, resize="squash")
    with pytest.raises(TypeError, match="AnomalyData"):
        det.predict("folder/")
    gray = train[:, :1]  # [4, 1, H, W]: converted to three equal channels
    torch.testing.assert_close(det.predict(gray).maps, det.predict(gray.repeat(1, 3, 1, 1)).maps)


def test_load_anomaly_data_keeps_own_sizes_and_metrics_take_lists(tmp_path, backbone) -> None:
    from PIL import Image

    root = tmp_path / "wide"
    for split, names in (("train/good", ["a", "b", "c", "d"]), ("test/good", ["e"]), ("test/crack", ["f"])):
        (root / split).mkdir(parents=True)
        for i, name in enumerate(names):
            size = (40 + 8 * i, 24 + 4 * i)  # (W, H), all different, non-square
            Image.fromarray(_texture_uint8(1, seed=i, size=size[::-1])[0].permute(1, 2, 0).numpy()).save(
                root / split / f"{name}.png")
    (root / "ground_truth/crack").mkdir(parents=True)
    mask = torch.zeros(24, 40, dtype=torch.uint8)
    mask[8:14, 10:20] = 255
    Image.fromarray(mask.numpy()).save(root / "ground_truth/crack/f_mask.png")
    data = cu.data.load_anomaly_data(root, image_size=None, dtype=torch.uint8)
    assert isinstance(data.train_images, list) and data.train_images[1].shape == (3, 28, 48)
    assert data.test_masks[1].shape == (24, 40) and data.train_images[0].dtype == torch.uint8
    prediction = detectors.PatchCore(backbone, coreset_ratio=0.5, image_size=32).fit(data).predict(data)
    assert [tuple(m.shape) for m in prediction.maps] == [(24, 40), (24, 40)]
    result = cu.metrics.evaluate(data, prediction, interval=False)
    flat_masks = torch.cat([m.flatten() for m in data.test_masks])
    flat_maps = torch.cat([m.flatten() for m in prediction.maps])
    assert result["pixel_auroc"] == pytest.approx(cu.metrics.pixel_auroc(flat_masks[None, None], flat_maps[None, None]))
    squared = cu.data.load_anomaly_data(root, image_size=32, resize="pad")
    assert squared.test_masks.shape == (2, 32, 32) and squared.test_masks.sum() > 0


@pytest.mark.skipif(not anomaly.faiss_available(), reason="faiss is optional: pip install faiss-cpu")
def test_faiss_search_equals_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(2000, 24, generator=g), torch.randn(500, 24, generator=g)
    d_torch, i_torch = anomaly.nearest_neighbours(queries, bank, k=3, backend="torch")
    d_faiss, i_faiss = anomaly.nearest_neighbours(queries, bank, k=3, backend="faiss")
    torch.testing.assert_close(d_faiss, d_torch, rtol=1e-4, atol=1e-4)
    assert (i_faiss == i_torch).float().mean() > 0.999  # only exact ties may differ
