"""Lab 4, part 2: layer costs, LeNet/AlexNet/Inception, deep stacks, two heads, boxes, balanced accuracy, HOG.

Expected values come from the formulas (or from PyTorch, torchvision, scikit-learn and scikit-image as
references), never from a run of the code under test.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torchvision
from matplotlib.figure import Figure
from skimage.feature import hog
from sklearn.metrics import balanced_accuracy_score
from torch import nn

from course_utils import backbones, checks, data, metrics, models, plotting

# --- layer_costs and the slides' networks ---


def test_layer_costs_counts_a_convolution_and_a_dense_layer_by_their_formulas() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 5, padding=1), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 7 * 7, 10))
    conv, pool, dense = models.layer_costs(model, (3, 16, 16))
    assert conv["output"] == (8, 14, 14) and pool["output"] == (8, 7, 7) and dense["output"] == (10,)
    assert conv["parameters"] == 8 * (3 * 5 * 5 + 1) and conv["macs"] == 8 * 14 * 14 * 3 * 5 * 5
    assert pool["parameters"] == pool["macs"] == 0
    assert dense["parameters"] == 10 * (392 + 1) and dense["macs"] == 392 * 10


def test_layer_costs_divides_by_groups_and_keeps_the_mode() -> None:
    model = nn.Sequential(nn.Conv2d(8, 8, 3, groups=4)).train()
    (row,) = models.layer_costs(model, (8, 5, 5))
    assert row["macs"] == 8 * 3 * 3 * (8 // 4) * 3 * 3
    assert model.training, "layer_costs must leave the model in the mode it found it in"
    with pytest.raises(ValueError, match="without the batch axis"):
        models.layer_costs(model, (1, 8, 5, 5))


def test_lenet5_is_the_slides_net_and_alexnet_has_the_224_pixel_shapes() -> None:
    assert models.count_parameters(models.lenet5(in_channels=3)) == models.count_parameters(models.Net())
    rows = {r["layer"]: r for r in models.layer_costs(models.alexnet(), (3, 224, 224))}
    assert rows["conv1"]["output"] == (96, (224 - 11) // 4 + 1, (224 - 11) // 4 + 1)
    assert rows["conv5"]["output"][0] == 256 and rows["pool5"]["output"] == (256, 5, 5)
    assert rows["dense1"]["parameters"] == 4096 * (256 * 5 * 5 + 1)
    assert sum(r["parameters"] for r in rows.values()) == models.count_parameters(models.alexnet())


def test_inception_block_concatenates_its_branches_and_is_cheaper_than_a_plain_5x5() -> None:
    block = models.InceptionBlock(c_in=12, c1=4, r3=3, c3=5, r5=2, c5=6, cp=7)
    assert block(torch.randn(2, 12, 9, 9)).shape == (2, 4 + 5 + 6 + 7, 9, 9)
    expected = (12 * 4 + 4) + (12 * 3 + 3) + (9 * 3 * 5 + 5) + (12 * 2 + 2) + (25 * 2 * 6 + 6) + (12 * 7 + 7)
    assert models.count_parameters(block) == expected
    default = models.count_parameters(models.InceptionBlock())
    assert default < models.count_parameters(nn.Conv2d(192, 256, 5)) / 5


def test_skip_connections_keep_the_first_layers_gradient() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    ratios = {}
    for residual in (False, True):
        torch.manual_seed(1)
        norms = models.layer_gradient_norms(models.DeepStack(depth=20, width=8, residual=residual), x, y)
        assert len(norms) == 20 and all(np.isfinite(norms))
        ratios[residual] = norms[0] / norms[-1]
    assert ratios[False] < 1e-3 < 1e-1 < ratios[True]


def test_classify_and_locate_returns_logits_and_boxes_and_both_heads_learn() -> None:
    torch.manual_seed(0)
    model = models.ClassifyAndLocate((4, 8), n_classes=3)
    logits, boxes = model(torch.randn(5, 3, 24, 24))
    assert logits.shape == (5, 3) and boxes.shape == (5, 4)
    assert boxes.min() >= 0 and boxes.max() <= 1
    (logits.sum() + boxes.sum()).backward()
    assert model.classify[-1].weight.grad.abs().sum() > 0 and model.locate[-2].weight.grad.abs().sum() > 0


# --- metrics: balanced accuracy and IoU ---


def test_balanced_accuracy_matches_scikit_learn_on_imbalanced_data() -> None:
    rng = np.random.default_rng(0)
    targets = rng.choice(4, size=200, p=[0.7, 0.2, 0.07, 0.03])
    preds = np.where(rng.random(200) < 0.7, targets, rng.integers(0, 4, 200))
    assert metrics.balanced_accuracy(preds, targets) == pytest.approx(balanced_accuracy_score(targets, preds))
    constant = np.zeros_like(targets)  # always the majority class: accuracy 70%, balanced 1/4
    assert metrics.balanced_accuracy(constant, targets) == pytest.approx(1 / len(np.unique(targets)))


def test_box_iou_matches_torchvision_and_handles_apart_and_empty_boxes() -> None:
    g = torch.Generator().manual_seed(0)
    corners = torch.rand(50, 2, 2, generator=g)
    boxes_a = torch.cat([corners[:, 0], corners[:, 0] + 0.3 * torch.rand(50, 2, generator=g)], 1)
    boxes_b = torch.cat([corners[:, 1], corners[:, 1] + 0.5 * torch.rand(50, 2, generator=g)], 1)
    expected = torchvision.ops.box_iou(boxes_a, boxes_b).diag().numpy()
    np.testing.assert_allclose(metrics.box_iou(boxes_a, boxes_b), expected, atol=1e-6)
    apart = metrics.box_iou(np.array([[0, 0, 1, 1]]), np.array([[2, 2, 3, 3]]))
    flipped = metrics.box_iou(np.array([[1, 1, 0, 0]]), np.array([[1, 1, 0, 0]]))  # x1 < x0: no area
    assert apart[0] == 0 and flipped[0] == 0
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        metrics.box_iou(np.zeros((3, 4)), np.zeros((3, 2)))


# --- data: images pasted on a canvas ---


def test_paste_on_canvas_puts_each_image_inside_its_box() -> None:
    images = torch.randint(100, 256, (6, 3, 8, 8), dtype=torch.uint8)  # brighter than the background (< 40)
    canvases, boxes = data.paste_on_canvas(images, canvas=20, sizes=(5, 8), seed=3)
    assert canvases.shape == (6, 3, 20, 20) and canvases.dtype == torch.uint8 and boxes.shape == (6, 4)
    for canvas, box in zip(canvases, boxes):
        x0, y0, x1, y1 = (box * 20).round().long().tolist()
        assert 5 <= x1 - x0 == y1 - y0 <= 8 and 0 <= x0 and x1 <= 20 and 0 <= y0 and y1 <= 20
        inside = torch.zeros(20, 20, dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        assert canvas[:, inside].min() >= 100 and canvas[:, ~inside].max() < 40
    again, _ = data.paste_on_canvas(images, canvas=20, sizes=(5, 8), seed=3)
    assert torch.equal(canvases, again)
    with pytest.raises(ValueError, match="sizes"):
        data.paste_on_canvas(images, canvas=6, sizes=(5, 8))
    with pytest.raises(TypeError, match="uint8"):
        data.paste_on_canvas(images.float())


# --- hand-crafted features ---


def test_hog_features_are_scikit_images_hog_per_image() -> None:
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    features = backbones.hog_features(images)
    assert features.shape == (3, 9 * 3 * 3 * 2 * 2) and features.dtype == np.float32
    expected = hog(images[1].permute(1, 2, 0).numpy(), orientations=9, pixels_per_cell=(8, 8),
                   cells_per_block=(2, 2), channel_axis=-1)
    np.testing.assert_allclose(features[1], expected, rtol=1e-5, atol=1e-6)
    assert backbones.hog_features(images[:, :1]).shape == (3, 324)  # grey images too
    with pytest.raises(TypeError, match="uint8"):
        backbones.hog_features(images.float())


# --- figures ---


def test_show_boxes_draws_a_true_and_a_predicted_box_per_image() -> None:
    boxes = torch.tensor([[0.1, 0.1, 0.5, 0.6], [0.2, 0.3, 0.9, 0.8]])
    fig = plotting.show_boxes(torch.rand(2, 3, 16, 16), boxes, boxes.flip(0), titles=["a", "b"])
    assert isinstance(fig, Figure) and [len(ax.patches) for ax in fig.axes] == [2, 2]
    assert [ax.get_title() for ax in fig.axes] == ["a", "b"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["true box", "predicted box"]
    only_true = plotting.show_boxes(torch.rand(2, 3, 16, 16), boxes)
    assert [t.get_text() for t in only_true.legends[0].get_texts()] == ["true box"]
    plt.close("all")


def test_plot_layer_values_draws_one_line_per_curve_on_a_log_scale() -> None:
    fig = plotting.plot_layer_values({"plain": [1e-6, 1e-3, 1.0], "residual": [1.0, 2.0, 3.0]}, "norm")
    (ax,) = fig.axes
    assert len(ax.get_lines()) == 2 and ax.get_yscale() == "log"
    plt.close("all")


# --- exercise checkers ---

CASES = {
    "conv_cost": (checks.check_conv_cost, checks.reference_conv_cost,
                  lambda c_in, c_out, k, h, w: (c_out * c_in * k * k, c_out * h * w * c_in * k * k),
                  "biases are missing"),
    "iou": (checks.check_iou, checks.reference_iou,
            lambda a, b: checks.reference_iou(a, b) / (1 + checks.reference_iou(a, b)), "counts the overlap twice"),
    "balanced_accuracy": (checks.check_balanced_accuracy, checks.reference_balanced_accuracy,
                          lambda p, t: float(np.mean(p == t)), "plain accuracy"),
}


@pytest.mark.parametrize("name", CASES)
def test_checkers_accept_the_answer_reject_stub_and_name_the_mistake(name, capsys) -> None:
    checker, reference, wrong, says = CASES[name]
    assert checker(reference) is True
    assert "✅" in capsys.readouterr().out
    assert checker(None) is False and checker(lambda *args: None) is False
    assert checks.NOT_SOLVED in capsys.readouterr().out
    assert checker(wrong) is False
    assert says in capsys.readouterr().out
    assert name in checks.SOLUTIONS


def test_iou_checker_catches_an_unclipped_overlap(capsys) -> None:
    def unclipped(a, b):
        inter = (min(a[2], b[2]) - max(a[0], b[0])) * (min(a[3], b[3]) - max(a[1], b[1]))
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    assert checks.check_iou(unclipped) is False
    assert "not clipped" in capsys.readouterr().out
