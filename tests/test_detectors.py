"""Tests of course_utils.detectors: one interface, saving and loading, aligned heat-maps, PaDiM shrinkage."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import texture

from course_utils import anomaly, detectors, models

SIZE = 96


def _texture(n: int, seed: int, size: int = SIZE) -> torch.Tensor:
    """`conftest.texture` at this file's default size."""
    return texture(n, seed, size)


def _with_dot(images: torch.Tensor, row: int, col: int, half: int = 3) -> torch.Tensor:
    """A copy with a red square of side 2*half centred at pixel (row - 0.5, col - 0.5)."""
    bad = images.clone()
    bad[:, :, row - half:row + half, col - half:col + half] = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    return bad


def _small(kind: str, backbone: torch.nn.Module, **kwargs) -> detectors.Detector:
    """A detector of `kind` with tiny sizes, so that every test stays fast."""
    if kind == "patchcore":
        return detectors.PatchCore(backbone, coreset_ratio=0.2, **kwargs)
    if kind == "padim":
        return detectors.PaDiM(backbone, n_features=40, **kwargs)
    if kind == "feature_ae":
        return detectors.FeatureAEDetector(backbone, hidden=32, latent_channels=8, epochs=15, sigma=2.0, **kwargs)
    return detectors.ReconstructionDetector(widths=(8, 16), latent_channels=4, epochs=3, sigma=2.0, **kwargs)


@pytest.mark.parametrize("kind", ["patchcore", "padim", "feature_ae", "reconstruction"])
def test_fitted_detector_round_trips_through_its_state_dict(backbone, kind) -> None:
    train, test = _texture(8, seed=0, size=64), _with_dot(_texture(3, seed=1, size=64), 30, 30)
    fresh = _small(kind, backbone)
    with pytest.raises(RuntimeError, match="fit"):
        fresh.predict(test)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fresh.fit(train * 255)
    fitted = _small(kind, backbone).fit(train)
    assert fitted.fit_seconds > 0
    scores, maps = fitted.predict(test)
    assert scores.shape == (3,) and maps.shape == (3, 64, 64) and maps.device.type == "cpu"
    state = {k: v.clone() for k, v in fitted.state_dict().items()}
    fresh.load_state_dict(state)
    again = fresh.predict(test)
    torch.testing.assert_close(again.scores, scores, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(again.maps, maps, rtol=1e-5, atol=1e-6)
    for key, value in fitted.state_dict().items():  # predicting changed no state
        assert torch.equal(value, state[key]), key


def test_reconstruction_detector_steps_and_repeatability() -> None:
    train, test = _texture(8, seed=0, size=32), _texture(2, seed=1, size=32)
    det = _small("reconstruction", None)
    first = det.fit(train).predict(test)
    assert len(det.history.train_loss) == 3
    recons, errors = det.reconstruct(test), det.error_maps(test)
    assert recons.shape == test.shape and errors.shape == (2, 32, 32)
    torch.testing.assert_close(errors, ((test - recons) ** 2).mean(dim=1))
    expected = anomaly.image_scores(anomaly.to_image_maps(errors, 32, sigma=2.0), det.reduction, 0.01)
    torch.testing.assert_close(first.scores, expected)
    torch.testing.assert_close(det.fit(train).predict(test).maps, first.maps)  # fit again: same model
    with pytest.raises(ValueError, match="loss must be"):
        detectors.ReconstructionDetector(loss="psnr")


def test_place_cells_puts_a_cell_at_its_receptive_field_centre() -> None:
    cells = torch.zeros(1, 1, 6, 6)
    cells[0, 0, 2, 3] = 1.0
    placed = anomaly.place_cells(cells, 48, stride=8, offset=(-3.0, -2.0))  # [1, 1, 48, 48]
    assert divmod(int(placed[0, 0].argmax()), 48) == (8 * 2 - 3, 8 * 3 - 2)
    old = anomaly.place_cells(cells, 48, stride=8, align=False)
    torch.testing.assert_close(old, F.interpolate(cells, size=48, mode="bilinear", align_corners=False))
    maps = anomaly.to_image_maps(cells[:, 0], 48, sigma=0, stride=8, offset=0.0)  # [1, 48, 48]
    assert divmod(int(maps[0].argmax()), 48) == (16, 24)


def test_patch_embedding_pools_finer_maps_onto_a_coarser_grid() -> None:
    fine, coarse = torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)
    out = anomaly.patch_embedding([fine, coarse], neighbourhood=1, strides=[4, 8], offsets=[(0, 0), (2, 2)], scale_to=1)
    assert out.shape == (2, 10, 4, 4)
    torch.testing.assert_close(out[:, 4:], coarse)  # the target map itself is unchanged
    # fine cells 0, 1 (pixels 0, 4) average to pixel 2 = coarse cell 0's centre
    torch.testing.assert_close(out[:, :4, 0, 0], fine[:, :, :2, :2].mean(dim=(2, 3)))


def test_stage_geometry_is_measured_and_cached(backbone) -> None:
    strides, offsets = anomaly.stage_geometry(backbone, ("blocks.1", "blocks.2", "blocks.3"))
    assert strides.tolist() == [4.0, 8.0, 16.0] and offsets.shape == (3, 2)
    assert (offsets.abs() < strides[:, None]).all()  # a cell looks at its own stride-sized patch
    again = anomaly.stage_geometry(backbone, ("blocks.3",))
    assert torch.equal(again[1][0], offsets[2])


def _peak_centre(heat: torch.Tensor, row: int, col: int, radius: int = 16) -> torch.Tensor:
    """Where a map peaks near (row, col): the centroid (y, x) of its values above half-way from the
    window's median to its maximum, in a window of +-`radius` pixels (sub-pixel, unlike argmax)."""
    top, left = max(0, row - radius), max(0, col - radius)
    window = heat[top:row + radius, left:col + radius]
    weight = (window - (window.max() + window.median()) / 2).clamp_min(0)  # [h, w]
    ys = torch.arange(window.shape[0]) + top
    xs = torch.arange(window.shape[1]) + left
    return torch.stack([(weight.sum(1) * ys).sum(), (weight.sum(0) * xs).sum()]) / weight.sum()


@pytest.mark.parametrize("kind", ["patchcore", "padim", "feature_ae"])
def test_heat_map_peaks_on_a_small_defect(backbone, kind) -> None:
    """Six 6x6 defects at known places: the aligned maps peak on them, the old upsampling ~9 px down-right.

    PatchCore's tolerance is larger: averaging 3x3 neighbourhoods of stride-8/16 cells whose
    receptive fields are lopsided moves its peaks a further ~2 px (measured: 0.8 px without the
    neighbourhood averaging), while the centres of the receptive fields are where we put them."""
    train = _texture(16, seed=0)
    spots = [(30, 38), (52, 64), (66, 30), (41, 45), (60, 51), (35, 70)]
    bad = torch.cat([_with_dot(_texture(1, seed=10 + i), r, c) for i, (r, c) in enumerate(spots)])
    centres = torch.tensor(spots, dtype=torch.float32) - 0.5  # [6, 2] the defects' centres
    offsets = {}
    for align in (True, False):
        maps = _small(kind, backbone, align=align).fit(train).predict(bad).maps  # [6, S, S]
        peaks = torch.stack([_peak_centre(m, r, c) for m, (r, c) in zip(maps, spots)])  # [6, 2]
        offsets[align] = peaks - centres  # [6, 2] (y, x) pixels
    mean = offsets[True].mean(dim=0)
    tolerance = 3.0 if kind == "patchcore" else 2.0
    assert mean.abs().max() <= tolerance, f"{kind}: aligned maps peak {mean.tolist()} px from the defects on average"
    assert offsets[True].abs().max() <= 5, f"{kind}: a peak is {offsets[True].abs().max():.1f} px off"
    old = offsets[False].mean(dim=0)
    assert (old > 2 * mean.abs() + 0.5).all(), f"{kind}: the old maps were expected down-right of the defects, {old.tolist()}"


def test_padim_good_images_show_no_border_bias(backbone) -> None:
    """PaDiM models every position separately, so heat on good images sits anywhere, not on the
    bottom/right border (where half-cell-shifted maps used to pile it up)."""
    maps = _small("padim", backbone).fit(_texture(16, seed=0)).predict(_texture(12, seed=1)).maps
    hottest = [divmod(int(m.argmax()), SIZE) for m in maps]
    on_bottom_right = sum(max(row, col) >= SIZE - 8 for row, col in hottest)
    assert on_bottom_right <= len(hottest) // 3, f"hottest pixels of good images: {hottest}"


def test_place_cells_adds_no_border_artefact() -> None:
    flat = torch.full((2, 1, 6, 6), 3.0)
    placed = anomaly.place_cells(flat, 48, stride=8, offset=(-3.2, -2.9))  # [2, 1, 48, 48]
    torch.testing.assert_close(placed, torch.full((2, 1, 48, 48), 3.0))


def test_ledoit_wolf_shrinkage_stops_padim_overfitting_a_degenerate_covariance() -> None:
    g = torch.Generator().manual_seed(0)
    channels, n_train = 40, 30  # fewer images than channels: the sample covariance is singular
    mix = torch.eye(channels) + 0.5 * torch.randn(channels, channels, generator=g) / channels ** 0.5

    def sample(n: int) -> torch.Tensor:  # correlated Gaussian features [n, C, 2, 2]
        return (torch.randn(n, 2, 2, channels, generator=g) @ mix.T).permute(0, 3, 1, 2)

    train, held_out = sample(n_train), sample(200)
    ratios = {}
    for shrinkage in (0.0, "ledoit_wolf"):
        fitted = anomaly.gaussian_per_position(train, shrinkage=shrinkage)
        on_train = anomaly.mahalanobis_maps(train, fitted.mean, fitted.precision).median()
        on_new = anomaly.mahalanobis_maps(held_out, fitted.mean, fitted.precision).median()
        ratios[shrinkage] = (on_new / on_train).item()
    assert ratios[0.0] > 3, "without shrinkage new good samples look far more unusual than training ones"
    assert ratios["ledoit_wolf"] < 1.5, ratios
    weights = anomaly.gaussian_per_position(train).shrinkage
    assert weights.shape == (4,) and ((weights > 0) & (weights < 1)).all()
    with pytest.raises(ValueError, match="shrinkage"):
        anomaly.gaussian_per_position(train, shrinkage=2)


def test_anomalib_detector_same_interface_and_silent(backbone, capfd) -> None:
    pytest.importorskip("anomalib")
    train, test = _texture(6, seed=0, size=64), _with_dot(_texture(2, seed=1, size=64), 30, 30)
    for kind in ("patchcore", "padim"):
        det = detectors.AnomalibDetector(kind, backbone, coreset_ratio=0.2, n_features=40)
        with pytest.raises(RuntimeError, match="fit"):
            det.predict(test)
        scores, maps = det.fit(train).predict(test)
        assert scores.shape == (2,) and maps.shape == (2, 64, 64)
        fresh = detectors.AnomalibDetector(kind, backbone, coreset_ratio=0.2, n_features=40)
        fresh.load_state_dict(det.state_dict())
        torch.testing.assert_close(fresh.predict(test).maps, maps)
    out, err = capfd.readouterr()
    assert out == "" and err == "", f"anomalib printed: {(out + err)[:300]}"
    with pytest.raises(ValueError, match="patchcore"):
        detectors.AnomalibDetector("fastflow")


def test_cu_anomaly_reexports_the_detectors() -> None:
    from course_utils.anomaly import PaDiM, PatchCore

    assert PatchCore is detectors.PatchCore and PaDiM is detectors.PaDiM


def test_reconstruction_detector_with_epochs_zero_keeps_the_given_models_weights() -> None:
    train = _texture(4, seed=0, size=32)
    model = models.ConvAutoencoder(widths=(8, 16), latent_channels=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    det = detectors.ReconstructionDetector(model=model, epochs=0, sigma=2.0).fit(train)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])
    recons = anomaly.run_in_batches(model, train, 16, torch.device("cpu"))  # [4, 3, 32, 32]
    expected = anomaly.to_image_maps(((train - recons) ** 2).mean(dim=1), 32, sigma=2.0)
    torch.testing.assert_close(det.predict(train).maps, expected)
    with pytest.raises(ValueError, match="epochs=0"):
        detectors.ReconstructionDetector(epochs=0).fit(train)
