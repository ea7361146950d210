"""From notebook to production line: save/load, a threshold from good images, the inspect command, ONNX export."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import texture
from PIL import Image

from course_utils import deploy, detectors, metrics
from course_utils import inspect as inspect_cli
from course_utils.backbones import pretrained_backbone

SIZE = 64


def _texture(n: int, seed: int, size: int = SIZE) -> torch.Tensor:
    """`conftest.texture` at this file's default size."""
    return texture(n, seed, size)


def _with_dot(images: torch.Tensor) -> torch.Tensor:
    """A copy with a red square in the middle."""
    bad = images.clone()
    bad[:, :, 28:36, 28:36] = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    return bad


def _small(kind: str, backbone: torch.nn.Module) -> detectors.Detector:
    """A detector of `kind` with tiny sizes."""
    if kind == "patchcore":
        return detectors.PatchCore(backbone, coreset_ratio=0.2, sigma=2.0)
    if kind == "padim":
        return detectors.PaDiM(backbone, n_features=40, sigma=2.0)
    if kind == "feature_ae":
        return detectors.FeatureAEDetector(backbone, hidden=32, latent_channels=8, epochs=2, sigma=2.0)
    return detectors.ReconstructionDetector(widths=(8, 16), latent_channels=4, epochs=2, sigma=2.0)


@pytest.fixture(scope="module")
def fitted(backbone) -> dict[str, detectors.Detector]:
    train = _texture(8, seed=0)
    return {kind: _small(kind, backbone).fit(train) for kind in ("patchcore", "padim", "feature_ae", "reconstruction")}


@pytest.mark.parametrize("kind", ["patchcore", "padim", "feature_ae", "reconstruction"])
def test_save_and_load_give_the_same_predictions(fitted, kind, tmp_path) -> None:
    detector = fitted[kind]
    test = torch.cat([_texture(2, seed=1), _with_dot(_texture(1, seed=2))])
    detector.calibrate(_texture(6, seed=3), false_alarm_rate=0.2)
    path = detector.save(tmp_path / "model.pt")
    loaded = detectors.load(path)
    assert type(loaded) is type(detector) and loaded.config()["sigma"] == 2.0
    before, after = detector.predict(test), loaded.predict(test)
    assert torch.equal(before.scores, after.scores) and torch.equal(before.maps, after.maps)
    assert float(loaded.threshold) == float(detector.threshold) and loaded.calibration == detector.calibration
    assert loaded.fit_size.tolist() == [SIZE, SIZE]
    assert torch.equal(loaded.flag(after), detector.flag(before))
    same_class = type(detector).load(path)
    assert torch.equal(same_class.predict(test).maps, before.maps)
    if kind in ("patchcore", "padim", "feature_ae"):  # the bundled backbone is named in the file, not stored
        record = deploy.read_record(path)
        assert any(key.startswith("embedder.extractor.backbone.") for key in record["omitted"])
        assert not any(key.startswith("embedder.extractor.backbone.") for key in record["state_dict"])


def test_load_refuses_the_wrong_class_and_the_wrong_file(fitted, tmp_path) -> None:
    path = fitted["padim"].save(tmp_path / "padim.pt")
    with pytest.raises(TypeError, match="holds a PaDiM, not a PatchCore"):
        detectors.PatchCore.load(path)
    torch.save(fitted["padim"].state_dict(), tmp_path / "state.pt")
    with pytest.raises(ValueError, match="not a detector saved by"):
        detectors.load(tmp_path / "state.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a detector file"):
        detectors.load(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match="save one"):
        detectors.load(tmp_path / "missing.pt")
    with pytest.raises(RuntimeError, match="not fitted"):
        detectors.PaDiM(pretrained_backbone(), n_features=8).save(tmp_path / "unfitted.pt")
    custom = detectors.ReconstructionDetector(loss=lambda recon, x: (recon - x).abs().mean(), epochs=1)
    with pytest.raises(TypeError, match="Cannot save ReconstructionDetector\\(loss="):
        custom.fit(_texture(2, seed=0)).save(tmp_path / "custom.pt")


def test_calibrate_keeps_false_alarms_within_the_budget(fitted) -> None:
    detector = fitted["patchcore"]
    good = _texture(20, seed=5)
    scores = detector.predict(good).scores  # [20]
    with pytest.raises(RuntimeError, match="calibrate"):
        detectors.PatchCore(pretrained_backbone(), coreset_ratio=0.5).flag(scores)
    for rate, allowed in ((0.0, 0), (0.01, 0), (0.1, 2), (0.26, 5)):
        detector.calibrate(good, false_alarm_rate=rate)
        flagged = detector.flag(scores)
        assert int(flagged.sum()) == allowed  # exactly the `allowed` highest good scores
        assert bool(flagged[scores.argmax()]) == (allowed > 0)
        assert detector.calibration["false_alarms"] == allowed and detector.calibration["n_good"] == 20
    assert detector.flag(scores.max() + 1.0).item()


def test_false_alarm_bounds_follow_the_rule_of_three() -> None:
    for n in (30, 100, 300, 3000):  # 0 alarms in n: the 95 % upper bound is about 3 / n
        assert metrics.false_alarm_upper_bound(n) == pytest.approx(3 / n, rel=0.05)
        assert metrics.false_alarm_upper_bound(n) == pytest.approx(1 - 0.05 ** (1 / n), rel=1e-9)
    assert metrics.good_images_needed(0.01) == 299  # ceil(log 0.05 / log 0.99) = 299 (the rule of three's 300)
    needed = metrics.good_images_needed(0.01, false_alarms=2)
    assert metrics.false_alarm_upper_bound(needed, 2) <= 0.01 < metrics.false_alarm_upper_bound(needed - 1, 2)
    assert metrics.false_alarm_threshold([5.0, 1.0, 3.0, 2.0, 4.0], 0.2) > 4.0  # one of 5 may be flagged: only 5.0


def _write_folder(folder, good: torch.Tensor) -> None:
    """A folder of test images: RGB, grayscale, RGBA, non-square (in a subfolder), and one corrupt file."""
    as_uint8 = (good.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)  # [n, H, W, 3]
    Image.fromarray(as_uint8[0]).save(folder / "rgb.png")
    Image.fromarray(as_uint8[1]).convert("L").save(folder / "gray.png")
    Image.fromarray(as_uint8[2]).convert("RGBA").save(folder / "rgba.png")
    (folder / "line2").mkdir()
    Image.fromarray(as_uint8[3]).resize((96, 40)).save(folder / "line2" / "wide.jpg")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (folder / "notes.txt").write_text("not an image: ignored")


def test_inspect_command_scores_a_folder_and_skips_a_corrupt_file(fitted, tmp_path, capsys) -> None:
    detector = fitted["patchcore"]
    detector.calibrate(_texture(6, seed=3), false_alarm_rate=0.2)
    model = detector.save(tmp_path / "model.pt")
    images = tmp_path / "images"
    images.mkdir()
    _write_folder(images, _texture(4, seed=7))
    out = tmp_path / "out"
    status = inspect_cli.main([str(model), str(images), "--out", str(out), "--batch-size", "2", "--no-progress"])
    assert status == 1  # finished, but one file was skipped
    captured = capsys.readouterr()
    assert "broken.png" in captured.err and "skipped 1 unreadable file" in captured.err
    assert "scored 4 images" in captured.out
    with (out / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["file"] for r in rows] == ["gray.png", "line2/wide.jpg", "rgb.png", "rgba.png"]
    assert all(r["flagged"] in ("0", "1") for r in rows) and all(float(r["score"]) > 0 for r in rows)
    wide = Image.open(out / "overlays" / "line2" / "wide.png")
    assert wide.size == (96, 40) and wide.mode == "RGB"  # the overlay has the image's own size
    assert sorted(p.name for p in (out / "overlays").rglob("*.png")) == ["gray.png", "rgb.png", "rgba.png", "wide.png"]
    assert "broken.png" in (out / "skipped.txt").read_text()
    expected = detector.predict(_read(images / "rgb.png")[None]).scores  # rgb.png has the training size
    assert float(rows[2]["score"]) == pytest.approx(float(expected[0]), rel=1e-5)


def _read(path):
    from course_utils.data import read_image

    return read_image(path)


@pytest.mark.parametrize("own_size", [False, True], ids=["fit_size", "image_size"])
def test_inspect_keeps_a_wide_image_s_size_and_leaves_the_padding_out_of_its_map(fitted, backbone, own_size,
                                                                                  tmp_path) -> None:
    from course_utils.data.images import fit_to_size, placement

    if own_size:  # the detector resizes images itself
        detector = detectors.PatchCore(backbone, coreset_ratio=0.2, sigma=2.0, image_size=SIZE, resize="pad")
        detector.fit(_texture(8, seed=0))
    else:  # inspect brings images to the recorded fit_size by the detector's resize mode
        detector = fitted["patchcore"]
    assert detector.resize == "pad"
    wide = F.interpolate(_texture(1, seed=9), size=(40, 96), mode="bilinear", antialias=True)[0]  # [3, 40, 96]
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    Image.fromarray((wide.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(images / "w.png")
    model = detector.save(tmp_path / "model.pt")
    assert inspect_cli.main([str(model), str(images), "--out", str(out), "--no-progress"]) == 0
    assert Image.open(out / "overlays" / "w.png").size == (96, 40)  # the overlay has the image's own size
    image = _read(images / "w.png")  # [3, 40, 96]
    _, maps = inspect_cli.predict_images(detector, [image], inspect_cli.model_size(detector))
    assert tuple(maps[0].shape) == (40, 96)
    where = placement((40, 96), SIZE, "pad")
    assert where.top > 0  # black bands above and below the image on the model's canvas
    canvas_map = detector.predict(fit_to_size(image, SIZE, "pad")[None]).maps[0]  # [64, 64], bands included
    inside = canvas_map[where.top:where.top + where.scaled[0]]  # [h, 64]: the image's rows only
    expected = F.interpolate(inside[None, None], size=(40, 96), mode="bilinear", align_corners=False)[0, 0]
    whole = F.interpolate(canvas_map[None, None], size=(40, 96), mode="bilinear", align_corners=False)[0, 0]
    assert torch.allclose(maps[0], expected, atol=1e-4)
    assert not torch.allclose(maps[0], whole, atol=1e-3)  # the bands would have been stretched in
    _, stretched = inspect_cli.predict_images(detector, [image], resize="stretch")  # --resize stretch: no bands
    assert tuple(stretched[0].shape) == (40, 96) and not torch.allclose(stretched[0], maps[0], atol=1e-3)


def test_inspect_command_reports_a_missing_model_and_an_empty_folder(fitted, tmp_path, capsys) -> None:
    (tmp_path / "images").mkdir()
    assert inspect_cli.main([str(tmp_path / "nope.pt"), str(tmp_path / "images"), "--out", str(tmp_path / "o")]) == 2
    assert "No detector file" in capsys.readouterr().err
    model = fitted["padim"].save(tmp_path / "padim.pt")
    assert inspect_cli.main([str(model), str(tmp_path / "images"), "--out", str(tmp_path / "o")]) == 2
    assert "holds no image files" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["patchcore", "padim"])
def test_onnx_export_gives_the_same_maps(fitted, kind, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from course_utils import export

    detector = fitted[kind]
    path = export.to_onnx(detector, tmp_path / "model.onnx")
    session = export.onnx_session(path)
    for images in (_with_dot(_texture(1, seed=9)), _texture(1, seed=0)):  # a defect, and a training image
        reference, exported = detector.predict(images), export.predict_onnx(session, images)
        assert exported.maps.shape == (1, SIZE, SIZE)
        scale = float(reference.maps.abs().max())
        assert (exported.maps - reference.maps).abs().max() <= export.TOLERANCE * scale
        assert exported.scores == pytest.approx(reference.scores, rel=export.TOLERANCE)
    with pytest.raises(ValueError, match="shape"):
        export.predict_onnx(session, _texture(2, seed=0))
    timings = export.latency(detector, path, _texture(1, seed=4), repeats=2)
    assert timings["pytorch"].shape == (2,) and (timings["onnxruntime"] > 0).all()
    assert float(timings["max_map_difference"]) <= export.TOLERANCE
