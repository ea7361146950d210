"""Tests of course_utils.metrics against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from course_utils import metrics as m


def test_accuracy_confusion_and_per_class():
    logits = torch.tensor([[2.0, 0.1, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0], [5.0, 0.0, 0.0]])
    targets = torch.tensor([0, 1, 1, 2])
    assert m.accuracy(logits, targets) == pytest.approx(0.5)
    assert m.accuracy(np.array([0, 1, 2, 0]), [0, 1, 1, 2]) == pytest.approx(0.5)
    cm = m.confusion_matrix(logits, targets, 3)  # rows true, columns predicted
    assert cm.tolist() == [[1, 0, 0], [0, 1, 1], [1, 0, 0]]
    assert cm.sum() == 4
    per_class = m.per_class_accuracy(logits, targets, 4)
    assert per_class[:3].tolist() == [1.0, 0.5, 0.0] and np.isnan(per_class[3])


def test_classification_errors_are_clear():
    with pytest.raises(ValueError, match="same length"):
        m.accuracy(torch.zeros(3, 2), torch.zeros(4))
    with pytest.raises(ValueError, match="n_classes"):
        m.confusion_matrix([0, 5], [0, 1], 3)


def rank_auc(labels, scores) -> float:
    """AUROC by hand: the fraction of (anomalous, normal) pairs ranked right, ties count half."""
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_image_auroc_perfect_inverted_random_and_hand_computed():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 2000)
    assert m.image_auroc(labels, labels + 0.1 * rng.random(2000)) == 1.0
    assert m.image_auroc(labels, -labels - 0.1 * rng.random(2000)) == 0.0
    assert m.image_auroc(labels, rng.random(2000)) == pytest.approx(0.5, abs=0.04)
    small_labels, small_scores = [0, 0, 1, 1, 0, 1, 0], [0.1, 0.4, 0.35, 0.8, 0.35, 0.9, 0.2]
    assert m.image_auroc(small_labels, small_scores) == pytest.approx(rank_auc(small_labels, small_scores))
    assert m.image_auroc(torch.tensor(small_labels), torch.tensor(small_scores)) == pytest.approx(
        rank_auc(small_labels, small_scores))


def test_roc_points_and_single_class_error():
    fpr, tpr = m.roc_points([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="only class"):
        m.image_auroc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="same length"):
        m.image_auroc([0, 1], [0.1, 0.2, 0.3])


def test_pixel_auroc_matches_the_rank_statistic_and_checks_input():
    masks = np.zeros((2, 3, 3))
    masks[0, 1, 1] = masks[1, 0, :2] = 1
    maps = np.arange(18, dtype=float).reshape(2, 3, 3) % 7
    expected = rank_auc(masks.ravel(), maps.ravel())
    assert m.pixel_auroc(masks, maps) == pytest.approx(expected)
    assert m.pixel_auroc(torch.tensor(masks)[:, None], torch.tensor(maps)[:, None]) == pytest.approx(expected)
    with pytest.raises(ValueError, match="no defect pixels"):
        m.pixel_auroc(np.zeros((2, 3, 3)), maps)
    with pytest.raises(ValueError, match="same shape"):
        m.pixel_auroc(masks, maps[:, :2])


def test_pixel_metrics_on_full_size_images():
    rng = np.random.default_rng(0)
    masks = np.zeros((16, 256, 256), np.float32)
    masks[8:, 100:140, 90:150] = 1
    maps = rng.random(masks.shape, dtype=np.float32)
    assert m.pixel_auroc(masks, maps + masks) == 1.0
    assert m.pixel_auroc(masks, maps) == pytest.approx(0.5, abs=0.01)
    assert m.pro_score(masks, maps, fpr_limit=0.3) == pytest.approx(0.15, abs=0.01)  # random: limit / 2


def test_pro_score_on_a_hand_made_case():
    # one image, two defect regions: a large one (8 px) found completely, a small one (2 px) half
    masks = np.zeros((1, 4, 6))
    masks[0, :2, :4] = 1  # region A, 8 px
    masks[0, 3, 4:] = 1  # region B, 2 px
    maps = np.zeros((1, 4, 6))
    maps[0, :2, :4] = 1.0  # all of A
    maps[0, 3, 4] = 1.0  # half of B
    maps[0, 2, 0] = 1.0  # 1 false positive out of 14 normal pixels
    fpr, pro = m.pro_curve(masks, maps)
    # threshold 1.0: FPR = 1/14, PRO = mean(8/8, 1/2) = 0.75; threshold 0: everything
    assert np.allclose(fpr, [0, 1 / 14, 1]) and np.allclose(pro, [0, 0.75, 1])
    limit = 0.3
    pro_at_limit = 0.75 + (limit - 1 / 14) / (1 - 1 / 14) * 0.25
    area = 0.5 * (1 / 14) * 0.75 + 0.5 * (limit - 1 / 14) * (0.75 + pro_at_limit)
    assert m.pro_score(masks, maps, fpr_limit=limit) == pytest.approx(area / limit)
    assert m.pro_score(masks, masks, fpr_limit=limit) == pytest.approx(1.0)  # a perfect map
    # PRO weighs regions equally: missing the small region B costs as much as missing big A
    miss_b, miss_a = masks.copy(), masks.copy()
    miss_b[0, 3, 4:], miss_a[0, :2, :4] = 0, 0
    assert m.pro_score(masks, miss_b, limit) == pytest.approx(m.pro_score(masks, miss_a, limit))
    assert m.pixel_auroc(masks, miss_b) > m.pixel_auroc(masks, miss_a)


def test_thresholds_and_anomaly_confusion():
    normal = np.arange(101, dtype=float)  # 0..100
    assert m.threshold_from_normal(normal, 0.99) == pytest.approx(99.0)
    assert m.threshold_from_normal(torch.tensor(normal), 0.5) == pytest.approx(50.0)
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.4, 0.8, 0.9, 0.95])
    threshold, f1 = m.f1_optimal_threshold(labels, scores)
    # by hand: threshold 0.4 flags 0.4, 0.7, 0.8, 0.9, 0.95 -> tp 4, fp 1, fn 0 -> F1 = 8/9
    assert threshold == pytest.approx(0.4) and f1 == pytest.approx(8 / 9)
    cm = m.anomaly_confusion(labels, scores, threshold)
    assert cm.tolist() == [[3, 1], [0, 4]]
    tp, fp, fn = cm[1, 1], cm[0, 1], cm[1, 0]
    assert 2 * tp / (2 * tp + fp + fn) == pytest.approx(f1)
    with pytest.raises(ValueError, match="quantile"):
        m.threshold_from_normal(normal, 1.5)
    with pytest.raises(ValueError, match="only class"):
        m.f1_optimal_threshold([0, 0], [0.1, 0.2])


# ---------------------------------------------------------------------------------------------
# evaluate, per-defect AUROC, bootstrap intervals, results_table
# ---------------------------------------------------------------------------------------------

def tiny_test_split(has_masks: bool = True):
    """Six 8x8 test images: 3 good, 2 'crack', 1 'stain'; each defect is a 2x2 square."""
    from course_utils.data import AnomalyData

    masks = torch.zeros(6, 8, 8)
    masks[3:, 2:4, 2:4] = 1
    return AnomalyData(train_images=torch.rand(2, 3, 8, 8), test_images=torch.rand(6, 3, 8, 8),
                       test_labels=torch.tensor([0, 0, 0, 1, 1, 1]), test_masks=masks,
                       test_defects=["good", "good", "good", "crack", "crack", "stain"], name="tiny",
                       has_masks=has_masks)


def test_evaluate_on_a_hand_made_split():
    data = tiny_test_split()
    scores = torch.tensor([0.1, 0.2, 0.3, 0.9, 0.15, 0.8])
    maps = data.test_masks * 2.0  # finds every defect pixel exactly...
    maps[0, 0, 0] = 1.0  # ...plus one false alarm on a good image
    result = m.evaluate(data, (scores, maps))
    # 3 defective x 3 good pairs: 0.9 and 0.8 beat all 3, 0.15 beats only 0.1 -> 7/9
    assert result["image_auroc"] == pytest.approx(7 / 9)
    assert result["image_auroc"] == pytest.approx(rank_auc([0, 0, 0, 1, 1, 1], scores.tolist()))
    # crack: (0.9 beats 3) + (0.15 beats 1) = 4 of 6 pairs; stain: 0.8 beats all 3 good
    assert result["per_defect"] == pytest.approx({"crack": 4 / 6, "stain": 1.0})
    assert list(result["per_defect"]) == ["crack", "stain"]
    assert result["pixel_auroc"] == pytest.approx(1.0)  # every defect pixel above every normal one
    assert result["pro"] == pytest.approx(1.0)
    low, high = result["image_auroc_interval"]
    assert low <= result["image_auroc"] <= high


def test_evaluate_accepts_predictions_and_says_what_is_wrong():
    from typing import NamedTuple

    class Prediction(NamedTuple):
        scores: torch.Tensor
        maps: torch.Tensor

    data = tiny_test_split()
    scores, maps = torch.tensor([0.1, 0.5, 0.3, 0.9, 0.15, 0.8]), torch.rand(6, 8, 8)
    as_tuple = m.evaluate(data, (scores, maps), interval=False)
    as_named = m.evaluate(data, Prediction(scores, maps), interval=False)
    assert as_tuple == as_named and "image_auroc_interval" not in as_tuple
    assert as_tuple["pixel_auroc"] == pytest.approx(m.pixel_auroc(data.test_masks, maps))
    assert as_tuple["pro"] == pytest.approx(m.pro_score(data.test_masks, maps, 0.3))
    no_maps = m.evaluate(data, (scores, None), interval=False)
    unknown_masks = m.evaluate(tiny_test_split(has_masks=False), (scores, maps), interval=False)
    for result in (no_maps, unknown_masks):
        assert np.isnan(result["pixel_auroc"]) and np.isnan(result["pro"])
        assert result["image_auroc"] == as_tuple["image_auroc"]
    with pytest.raises(ValueError, match="6 images"):
        m.evaluate(data, (scores[:4], maps[:4]))
    with pytest.raises(TypeError, match="scores"):
        m.evaluate(data, scores)
    with pytest.raises(TypeError, match="AnomalyData"):
        m.evaluate({"labels": [0, 1]}, (scores, maps))


def test_per_defect_auroc_by_hand():
    labels = [0, 0, 1, 1, 1]
    scores = [0.2, 0.4, 0.3, 0.1, 0.9]
    defects = ["good", "good", "hole", "hole", "cut"]
    # hole: 0.3 beats 0.2 only, 0.1 beats none -> 1/4; cut: 0.9 beats both -> 1
    assert m.per_defect_auroc(labels, scores, defects) == pytest.approx({"cut": 1.0, "hole": 0.25})
    with pytest.raises(ValueError, match="same length"):
        m.per_defect_auroc(labels, scores, defects[:4])


def test_auroc_interval_known_cases_and_width():
    labels = np.array([0] * 10 + [1] * 10)
    assert m.auroc_interval(labels, labels.astype(float)) == (1.0, 1.0)  # every resample perfect
    assert m.auroc_interval(labels, -labels.astype(float)) == (0.0, 0.0)
    assert m.auroc_interval(labels, np.ones(20)) == (0.5, 0.5)  # all tied: ties count half
    rng = np.random.default_rng(0)

    def noisy(n):
        y = np.repeat([0, 1], n)
        return y, y + rng.normal(size=2 * n)

    small, large = noisy(20), noisy(500)
    low_s, high_s = m.auroc_interval(*small)
    low_l, high_l = m.auroc_interval(*large)
    assert low_s <= m.image_auroc(*small) <= high_s and low_l <= m.image_auroc(*large) <= high_l
    assert high_l - low_l < (high_s - low_s) / 2  # 25x the images: about 1/5 of the width
    assert m.auroc_interval(*small, seed=1) != (low_s, high_s)  # the seed matters...
    assert m.auroc_interval(*small, seed=0) == (low_s, high_s)  # ...and fixes the answer


def test_auroc_difference_interval_calls_ties_ties():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 100)
    good = y + 0.5 * rng.normal(size=200)
    same = good + 1e-3 * rng.normal(size=200)  # a different run of the same detector
    assert m.auroc_difference_interval(y, good, good) == (0.0, 0.0)
    low, high = m.auroc_difference_interval(y, good, same)
    assert low <= 0 <= high  # a tie
    low, high = m.auroc_difference_interval(y, good, rng.normal(size=200))
    assert low > 0.2  # much better than random scores


def test_pixel_auroc_difference_interval_resamples_images():
    rng = np.random.default_rng(0)
    masks = np.zeros((30, 16, 16))
    masks[10:, 4:8, 4:8] = 1  # 20 images with a defect square, 10 good
    sharp = masks + 0.3 * rng.normal(size=masks.shape)
    assert m.pixel_auroc_difference_interval(masks, sharp, sharp, n_boot=50) == (0.0, 0.0)
    noise = rng.normal(size=masks.shape)
    low, high = m.pixel_auroc_difference_interval(masks, sharp, noise, n_boot=50)
    assert low > 0.3 and low <= m.pixel_auroc(masks, sharp) - m.pixel_auroc(masks, noise) <= high
    same = sharp + 1e-3 * rng.normal(size=masks.shape)  # another run of the same detector
    low, high = m.pixel_auroc_difference_interval(masks, sharp, same, n_boot=50)
    assert low <= 0 <= high  # a tie
    with pytest.raises(ValueError, match="same shape"):
        m.pixel_auroc_difference_interval(masks, sharp, sharp[:, :8])


def test_results_table_layout():
    rows = [{"name": "PatchCore", "image_auroc": 0.98765, "image_auroc_interval": (0.95, 1.0),
             "pixel_auroc": 0.9, "pro": float("nan"), "per_defect": {"crack": 0.5, "stain": 1.0},
             "fit_s": 12.34, "predict_s": 0.456, "notes": "lab 7"},
            {"name": "AE", "image_auroc": 0.5, "pixel_auroc": 0.75, "pro": 0.25,
             "per_defect": {"crack": 0.25}}]
    lines = m.results_table(rows).splitlines()
    assert len(lines) == 4 and set(lines[1].replace(" ", "")) == {"-"}
    assert lines[0].split() == ["detector", "image", "AUROC", "pixel", "AUROC", "PRO@30%", "fit", "s",
                                "predict", "s", "notes"]
    assert lines[2].split() == ["PatchCore", "0.988", "[0.95,", "1.00]", "0.900", "-", "12", "0.46", "lab", "7"]
    assert lines[3].split() == ["AE", "0.500", "0.750", "0.250", "-", "-"]
    assert len({len(line) for line in lines[:3]}) == 1  # columns line up
    with_defects = m.results_table(rows, per_defect=True).splitlines()
    assert with_defects[0].split()[-3:] == ["crack", "stain", "notes"]
    assert with_defects[3].split()[-2:] == ["0.250", "-"]
    assert "fit" not in m.results_table([{"name": "x", "image_auroc": 0.5}])  # absent columns are left out
    with pytest.raises(ValueError, match="name"):
        m.results_table([{"image_auroc": 0.5}])
    with pytest.raises(ValueError, match="at least one row"):
        m.results_table([])


def test_accuracy_difference_interval_is_sqrt2_wider_and_calls_ties():
    one = 1.96 * math.sqrt(0.9 * 0.1 / 300)  # the 95% half-width of one accuracy of 0.9 on 300 images
    low, high = m.accuracy_difference_interval(0.9, 0.9, 300)
    assert low == pytest.approx(-math.sqrt(2) * one, rel=1e-3) and high == pytest.approx(math.sqrt(2) * one, rel=1e-3)
    low, high = m.accuracy_difference_interval(0.8, 0.7, 100, 400)
    assert (low + high) / 2 == pytest.approx(0.1)
    assert high - low == pytest.approx(2 * 1.96 * math.sqrt(0.8 * 0.2 / 100 + 0.7 * 0.3 / 400), rel=1e-3)
    assert m.compare_accuracies(0.93, 0.90, 300) == "a tie"  # 3 points on 300 images: inside the noise
    assert m.compare_accuracies(0.93, 0.90, 10_000) == "ahead"
    assert m.compare_accuracies(0.50, 0.90, 300) == "behind"
    with pytest.raises(ValueError, match="between 0 and 1"):
        m.accuracy_difference_interval(93.0, 90.0, 300)
    with pytest.raises(ValueError, match="at least 1"):
        m.accuracy_difference_interval(0.9, 0.9, 0)


def test_paired_interval_matches_agresti_min_and_does_not_collapse_at_100_percent():
    a = np.ones(180, bool)  # a right on every image
    b = np.ones(180, bool)
    b[:4] = False  # b wrong on 4 of them: 97.8% against 100%
    low, high = m.paired_accuracy_difference_interval(a, b)
    n, only_a, only_b = 182, 4.5 / 182, 0.5 / 182  # the table plus one half per cell
    half = 1.96 * math.sqrt((only_a + only_b - (only_a - only_b) ** 2) / n)
    assert low == pytest.approx(only_a - only_b - half, rel=1e-3) and high == pytest.approx(only_a - only_b + half, rel=1e-3)
    assert low < 0 < high and m.compare_paired_accuracies(a, b) == "a tie"  # 4 of 180 digits is inside the noise
    assert m.compare_accuracies(1.0, 176 / 180, 180) == "ahead"  # the unpaired Wald interval collapses at 100%
    assert m.compare_paired_accuracies(b, a) == "a tie"


def test_paired_comparison_sees_what_the_unpaired_one_cannot():
    rng = np.random.default_rng(0)
    b = rng.random(400) < 0.85  # [400] b right on about 85%
    a = b.copy()
    a[np.flatnonzero(~b)[:16]] = True  # a right wherever b is, and on 16 more images
    assert m.compare_accuracies(a.mean(), b.mean(), 400) == "a tie"  # 4 points on 400 images, unpaired
    assert m.compare_paired_accuracies(a, b) == "ahead" and m.compare_paired_accuracies(b, a) == "behind"
    assert m.compare_paired_accuracies(torch.tensor(a), torch.tensor(a)) == "a tie"
    with pytest.raises(ValueError, match="same length"):
        m.compare_paired_accuracies(a, b[:-1])


def test_compare_aurocs_calls_ahead_behind_and_ties_from_the_paired_interval():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(100), np.ones(100)].astype(int)
    good = labels + rng.normal(0, 0.5, 200)  # separates the classes well (AUROC about 0.92)
    noise = rng.normal(0, 1, 200)  # guessing (AUROC about 0.5)
    ahead = m.compare_aurocs(labels, good, noise)
    assert ahead.verdict == "ahead" and ahead.low > 0
    assert ahead.difference == pytest.approx(m.image_auroc(labels, good) - m.image_auroc(labels, noise))
    assert (ahead.low, ahead.high) == m.auroc_difference_interval(labels, good, noise)  # the same rule, one place
    assert m.compare_aurocs(labels, noise, good).verdict == "behind"
    nudged = good + rng.normal(0, 0.01, 200)  # nearly the same ranking: inside the noise
    tie = m.compare_aurocs(labels, good, nudged)
    assert tie.verdict == "a tie" and tie.low <= 0 <= tie.high
    assert "a tie" in tie.sentence("x", "y") and "x ranks better" in ahead.sentence("x", "y")
    assert "beyond the test-set noise" in ahead.sentence("x", "y")  # the default: a test-set comparison
    on_valid = ahead.sentence("x", "y", images="validation")  # a comparison on validation images says so
    assert "beyond the validation noise" in on_valid and "test-set" not in on_valid
    wide = m.compare_aurocs(labels, good, nudged, level=0.99)
    assert wide.high - wide.low >= tie.high - tie.low and "99% interval" in wide.sentence()
    with pytest.raises(ValueError, match="level"):
        m.compare_aurocs(labels, good, noise, level=95)
