"""Tests of course_utils.backbones: the bundled ImageNet EfficientNet-Lite0 and feature extraction."""

import pytest
import torch
import torch.nn.functional as F
from skimage import data as skdata

from course_utils import backbones


@pytest.fixture(scope="module")
def model():
    return backbones.pretrained_backbone()


def _photo(name: str, size: int = 224) -> torch.Tensor:
    """A scikit-image photo as [1, 3, size, size] in [0, 1]."""
    image = torch.from_numpy(getattr(skdata, name)()).permute(2, 0, 1).float() / 255  # [3, H, W]
    return F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True)  # [1, 3, S, S]


def test_chelsea_is_a_cat_and_coffee_is_espresso(model):
    logits = model(backbones.imagenet_normalize(torch.cat([_photo("chelsea"), _photo("coffee")])))  # [2, 1000]
    top = logits.argmax(dim=1).tolist()
    assert 281 <= top[0] <= 285, backbones.imagenet_classes()[top[0]]
    assert top[1] == 967
    assert backbones.imagenet_classes()[967] == "espresso"


def test_backbone_is_frozen_and_in_eval_mode(model):
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(4.65e6, rel=0.02)


def test_normalize_matches_imagenet_statistics():
    x = torch.rand(2, 3, 4, 4)
    y = backbones.imagenet_normalize(x)
    for c in range(3):
        expected = (x[:, c] - backbones.IMAGENET_MEAN[c]) / backbones.IMAGENET_STD[c]
        assert torch.allclose(y[:, c], expected)


def test_feature_extractor_shapes_and_it_leaves_the_classifier_working(model):
    extractor = backbones.FeatureExtractor(model, layers=("blocks.2", "blocks.4"))
    images = torch.rand(2, 3, 64, 96)
    features = extractor(images)
    assert list(features) == ["blocks.2", "blocks.4"]
    assert features["blocks.2"].shape == (2, 40, 8, 12)
    assert features["blocks.4"].shape == (2, 112, 4, 6)
    # the same features as a full forward pass with a hook, so stopping early changes nothing
    kept = {}
    handle = dict(model.named_modules())["blocks.4"].register_forward_hook(lambda m, i, o: kept.setdefault("o", o))
    model(backbones.imagenet_normalize(images))
    handle.remove()
    assert torch.allclose(kept["o"], features["blocks.4"], atol=1e-6)
    assert model(backbones.imagenet_normalize(images)).shape == (2, 1000)


def test_extract_features_batches_give_the_same_result(model):
    extractor = backbones.FeatureExtractor(model, layers=("blocks.1",))
    images = torch.rand(5, 3, 32, 32)
    whole = extractor(images)["blocks.1"]
    batched = backbones.extract_features(extractor, images, batch_size=2)["blocks.1"]
    assert torch.allclose(whole, batched, rtol=1e-4, atol=1e-3)


def test_unknown_layer_and_backbone_names_say_what_exists(model):
    with pytest.raises(ValueError, match="not in the backbone.*blocks"):
        backbones.FeatureExtractor(model, layers=("layer3",))
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        backbones.pretrained_backbone("vgg16")


def test_torchvision_weights_offline_give_a_clear_message(monkeypatch, tmp_path):
    import torch.hub

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match="offline.*pretrained_backbone\\('efficientnet_lite0'\\)"):
        backbones.pretrained_backbone("resnet18")


def test_receptive_fields_from_the_formula_match_the_measured_gradient(model):
    from course_utils import anomaly

    layers = ("bn1", "blocks.1", "blocks.2", "blocks.3")
    fields = backbones.layer_receptive_fields(model, layers)
    assert [fields[name][1] for name in layers] == [2, 4, 8, 16]  # the jumps: the stages' strides
    maps = anomaly.input_gradient_maps(model, layers, torch.rand(1, 3, 160, 160, generator=torch.Generator().manual_seed(0)))
    for name in layers:
        assert maps[name].shape == (160, 160)
        assert anomaly.receptive_field_extent(maps[name]) == (fields[name][0],) * 2, name
        effective = anomaly.receptive_field_extent(maps[name], mass=0.9)
        assert all(1 <= e <= fields[name][0] for e in effective)
    with pytest.raises(ValueError, match="not in the backbone"):
        backbones.layer_receptive_fields(model, ["blocks.99"])
