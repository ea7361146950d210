"""Tests of course_utils.plotting: every function returns a Figure with the expected axes."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from course_utils import plotting as p
from course_utils.train import History


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def n_image_axes(fig: Figure) -> int:
    return sum(1 for ax in fig.axes if ax.images)


@pytest.mark.parametrize("images", [
    torch.rand(5, 3, 8, 8),  # CHW floats
    torch.rand(5, 1, 8, 8),  # one channel
    np.random.rand(5, 8, 8),  # gray batch
    (np.random.rand(5, 8, 8, 3) * 255).astype(np.uint8),  # HWC uint8
    torch.randn(5, 3, 8, 8),  # normalised: rescaled
])
def test_show_images_accepts_every_layout(images):
    fig = p.show_images(images, titles=list("abcde"), ncols=3)
    assert isinstance(fig, Figure) and len(fig.axes) == 5 and n_image_axes(fig) == 5
    shown = fig.axes[0].images[0].get_array()
    assert shown.min() >= 0 and shown.max() <= 1 and shown.shape[:2] == (8, 8)
    assert [ax.get_title() for ax in fig.axes] == list("abcde")


def test_show_images_converts_uint8_and_chw_exactly():
    image = (np.arange(48) * 5).astype(np.uint8).reshape(1, 3, 4, 4)
    shown = p.show_images(image).axes[0].images[0].get_array()
    assert np.allclose(shown, image[0].transpose(1, 2, 0) / 255)
    with pytest.raises(ValueError, match="titles"):
        p.show_images(image, titles=["a", "b"])
    with pytest.raises(ValueError, match="Cannot show"):
        p.show_images(np.zeros((2, 2, 5, 5, 5)))


def test_show_pixel_values_writes_each_value_in_a_contrasting_colour():
    digit = np.array([[0, 16], [8, 3]])
    fig = p.show_pixel_values(digit)
    texts = {t.get_text(): t.get_color() for t in fig.axes[0].texts}
    assert texts == {"0": "white", "16": "black", "8": "white", "3": "white"}
    assert [t.get_text() for t in p.show_pixel_values(torch.tensor([[0.25, 0.5]])).axes[0].texts] == ["0.25", "0.50"]
    with pytest.raises(ValueError, match="too many pixels"):
        p.show_pixel_values(np.zeros((64, 64)))


def test_plot_history_draws_loss_and_each_metric():
    history = History(train_loss=[1.0, 0.5, 0.4], valid_loss=[1.1, 0.7, 0.8],
                      metrics={"accuracy": [0.5, 0.7, 0.6]}, epoch_seconds=[1, 1, 1], best_epoch=1)
    fig = p.plot_history(history)
    assert len(fig.axes) == 2
    train_line = fig.axes[0].lines[0]
    assert list(train_line.get_ydata()) == [1.0, 0.5, 0.4] and list(train_line.get_xdata()) == [1, 2, 3]
    assert len(p.plot_history({"train_loss": [1.0, 0.9]}).axes) == 1


def test_plot_confusion_matrix_labels_classes_and_counts():
    cm = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 9]])
    fig = p.plot_confusion_matrix(cm, ["cat", "dog", "frog"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog", "frog"]
    assert [t.get_text() for t in ax.texts] == [str(v) for v in cm.ravel()]
    assert len(fig.axes) == 2  # matrix + colour bar
    assert fig.axes[1].get_ylabel() == "images" and ax.get_xlabel() == "predicted class"
    normalised = p.plot_confusion_matrix(cm, ["cat", "dog", "frog"], normalize=True).axes[0]
    assert normalised.texts[0].get_text() == f"{5 / 6:.2f}"
    with pytest.raises(ValueError, match="classes"):
        p.plot_confusion_matrix(cm, ["cat", "dog"])


def test_show_filters_rgb_and_per_channel():
    rgb = p.show_filters(torch.nn.Conv2d(3, 6, 5))
    assert len(rgb.axes) == 6 and rgb.axes[0].images[0].get_array().shape == (5, 5, 3)
    gray = p.show_filters(torch.randn(4, 6, 3, 3))
    assert len(gray.axes) == 4 * 6


def test_show_feature_maps_and_reconstructions():
    assert len(p.show_feature_maps(torch.randn(2, 10, 7, 7), ncols=4).axes) == 10
    assert len(p.show_feature_maps(torch.randn(50, 7, 7)).axes) == 32
    x = torch.rand(6, 3, 16, 16)
    fig = p.show_reconstructions(x, x * 0.5, n=4, titles=["good", "a", "b", "c"])
    assert len(fig.axes) == 3 * 4 + 1  # three rows of images and the error row's colour bar
    assert fig.axes[1].get_title() == "a"
    error_shown = fig.axes[8].images[0].get_array()  # first error map
    assert np.allclose(error_shown, (x[0] * 0.5).mean(0).numpy(), atol=1e-6)
    assert len(p.show_reconstructions(x, x, n=4, errors=False).axes) == 2 * 4
    with pytest.raises(ValueError, match="one title per image"):
        p.show_reconstructions(x, x, n=4, titles=["good"])


def test_show_anomaly_maps_draws_heat_maps_and_outlines():
    images, maps = torch.rand(3, 3, 64, 64), torch.rand(3, 16, 16)  # maps smaller than images
    masks = torch.zeros(3, 1, 64, 64)
    masks[1, :, 10:30, 20:40] = 1
    fig = p.show_anomaly_maps(images, maps, masks, titles=["good", "crack", "good"])
    assert len(fig.axes) == 3 + 1  # three panels + colour bar
    panels = fig.axes[:3]
    assert [len(ax.images) for ax in panels] == [2, 2, 2]
    assert [len(ax.collections) for ax in panels] == [0, 1, 0]  # outline only where a defect is
    assert panels[0].images[1].get_clim() == (float(maps.min()), float(maps.max()))  # shared scale


def test_show_anomaly_maps_takes_lists_of_differently_sized_images_and_maps():
    images = [torch.rand(3, 40, 96), torch.rand(3, 64, 64)]  # a wide image and a square one
    maps = [torch.rand(40, 96), torch.rand(64, 64) + 2.0]  # each at its image's own size
    masks = [torch.zeros(40, 96), torch.zeros(1, 64, 64)]
    masks[1][:, 10:20, 30:50] = 1
    fig = p.show_anomaly_maps(images, maps, masks)
    panels = fig.axes[:2]
    assert len(fig.axes) == 2 + 1 and [len(ax.collections) for ax in panels] == [0, 1]
    assert [ax.images[0].get_array().shape[:2] for ax in panels] == [(40, 96), (64, 64)]
    assert [ax.images[1].get_extent() for ax in panels] == [[-0.5, 95.5, 39.5, -0.5], [-0.5, 63.5, 63.5, -0.5]]
    clim = (float(min(m.min() for m in maps)), float(max(m.max() for m in maps)))
    assert all(ax.images[1].get_clim() == pytest.approx(clim) for ax in panels)  # one scale over both maps
    with pytest.raises(ValueError, match="2 images but 1 anomaly maps"):
        p.show_anomaly_maps(images, maps[:1])


def test_show_anomaly_maps_without_maps_outlines_the_masks_only():
    images, masks = torch.rand(3, 3, 32, 32), torch.zeros(3, 32, 32)
    masks[2, 5:15, 5:15] = 1
    fig = p.show_anomaly_maps(images, masks=masks, titles=["good", "good", "stain"])
    assert len(fig.axes) == 3  # no colour bar: no colour carries a value
    assert [len(ax.images) for ax in fig.axes] == [1, 1, 1]  # the images only, no heat-map
    assert [len(ax.collections) for ax in fig.axes] == [0, 0, 1]
    assert [ax.get_title() for ax in fig.axes] == ["good", "good", "stain"]
    assert len(p.show_anomaly_maps(images).axes) == 3  # images alone work too


def test_show_anomaly_maps_scores_shared_scale_and_colour_bar_label():
    images, maps = torch.rand(2, 3, 16, 16), torch.stack([torch.zeros(16, 16), torch.full((16, 16), 4.0)])
    maps[0, 0, 0] = 1.0
    fig = p.show_anomaly_maps(images, maps, scores=torch.tensor([0.12345, 3.5]), titles=["good", "hole"],
                              label="squared error")
    panels, bar = fig.axes[:2], fig.axes[2]
    assert len(fig.axes) == 3 and bar.get_ylabel() == "squared error"
    assert [ax.get_title() for ax in panels] == ["good\nscore 0.123", "hole\nscore 3.500"]
    assert all(ax.images[1].get_clim() == (0.0, 4.0) for ax in panels)  # one scale for both
    assert p.show_anomaly_maps(images, maps, vmax=2.0).axes[0].images[1].get_clim() == (0.0, 2.0)
    own = p.show_anomaly_maps(images, maps, shared_scale=False)
    assert own.axes[0].images[1].get_clim() == (0.0, 1.0) and len(own.axes) == 2 + 2  # a bar each
    assert p.show_anomaly_maps(images, maps, scores=[0.5, 0.7]).axes[1].get_title() == "score 0.700"
    with pytest.raises(ValueError, match="2 images but 3 scores"):
        p.show_anomaly_maps(images, maps, scores=[1, 2, 3])
    with pytest.raises(ValueError, match="masks"):
        p.show_anomaly_maps(images, masks=torch.zeros(3, 16, 16))


def test_show_anomaly_maps_keeps_the_old_positional_titles():
    images, maps = torch.rand(2, 3, 16, 16), torch.rand(2, 16, 16)
    fig = p.show_anomaly_maps(images, maps, None, ["a", "b"])  # titles were the 4th argument
    assert [ax.get_title() for ax in fig.axes[:2]] == ["a", "b"]


def test_plot_roc_puts_auroc_in_the_legend():
    labels = np.array([0, 0, 1, 1])
    fig = p.plot_roc({"perfect": (labels, [0.1, 0.2, 0.8, 0.9]), "half": (labels, [0.1, 0.4, 0.35, 0.8])})
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["perfect (AUROC 1.000)", "half (AUROC 0.750)", "chance (0.500)"]


def test_presentation_style_scales_and_restores():
    size = plt.rcParams["font.size"]
    small = p.show_images(torch.rand(2, 3, 8, 8)).get_size_inches()
    p.presentation_style(True)
    try:
        assert plt.rcParams["font.size"] > size
        assert np.allclose(p.show_images(torch.rand(2, 3, 8, 8)).get_size_inches(), small * 1.5)
    finally:
        p.presentation_style(False)
    assert plt.rcParams["font.size"] == size


def test_lab2_part2_figures_have_their_panels():
    stats = {"a": {"activation": [1.0, 0.5, 0.25], "gradient": [0.1, 0.3, 1.0]},
             "b": {"activation": [1.0, 1.0, 1.0], "gradient": [1.0, 1.0, 1.0]}}
    fig = p.plot_layer_statistics(stats, "title")
    assert len(fig.axes) == 2 and all(len(ax.lines) == 2 for ax in fig.axes)
    assert fig.axes[0].get_yscale() == "log"

    path = np.array([[0.0, 0.0], [0.5, 0.2], [1.0, 0.4]])  # [3, 2]
    fig = p.plot_loss_surface(lambda w, b: (w - 1) ** 2 + b ** 2 + 0.1, (-1, 2), (-1, 1), {"GD": path}, resolution=20)
    ax = fig.axes[0]
    assert len(fig.axes) == 2 and ax.get_xlabel() == "w" and ax.get_ylabel() == "b"  # the surface and its colour bar
    assert np.allclose(ax.lines[0].get_xydata(), path) and "2 steps" in ax.get_legend().get_texts()[0].get_text()
    away = np.array([[0.0, 0.0], [3.0, 0.5]])  # [2, 2]: ends right of w = 2
    fig = p.plot_loss_surface(lambda w, b: w ** 2 + b ** 2, (-1, 2), (-1, 1), {"in": path, "out": away}, resolution=20)
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "off the plot" not in texts[0] and "ends off the plot at (3, 0.5)" in texts[1]

    points = np.random.default_rng(0).normal(size=(30, 2))  # [30, 2]
    labels = (points[:, 0] > 0).astype(int)  # [30]
    fig = p.plot_decision_boundaries({"x1 > 0": lambda x: (x[:, 0] > 0).astype(float),
                                      "always 0.3": lambda x: np.full(len(x), 0.3)}, points, labels, resolution=20)
    assert len(fig.axes) == 3 and [ax.get_title() for ax in fig.axes[:2]] == ["x1 > 0", "always 0.3"]
