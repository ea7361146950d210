"""How good is a model? Classification metrics and the anomaly-detection metrics of MVTec AD.

Classification (labs 1, 2, 4): `accuracy`, `confusion_matrix`, `per_class_accuracy`, `balanced_accuracy`,
`box_iou` (for boxes), and
`accuracy_difference_interval`/`compare_accuracies`, which say whether two accuracies differ by
more than the noise of their evaluation sets; `paired_accuracy_difference_interval`/
`compare_paired_accuracies` do the same for two classifiers scored on the same images.
Anomaly detection (labs 5-7): a detector gives one score per image and one anomaly map per
image. `image_auroc` asks "are defective images ranked above good ones?", `pixel_auroc` the same
per pixel, `pro_score` whether every defect region, small or large, is found. A detector in a
factory also needs a threshold: `threshold_from_normal` or `false_alarm_threshold` (from good
images only; `false_alarm_upper_bound` and `good_images_needed` say how sure it is) or
`f1_optimal_threshold` (from labelled data); `anomaly_confusion` counts its hits and misses.
`evaluate` computes all of these for one detector on a test split, `results_table` prints
detectors side by side, and `auroc_interval`/`auroc_difference_interval` (image AUROC) and
`pixel_auroc_difference_interval` say whether a difference is larger than the noise of a small
test set; `compare_aurocs` turns the image-AUROC one into a verdict ("ahead", "behind", "a tie").
Every function takes tensors or NumPy arrays and returns plain floats / arrays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import NamedTuple

import numpy as np
import torch
from scipy import ndimage
from scipy.stats import rankdata
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve

ArrayLike = torch.Tensor | np.ndarray | list


def _numpy(x: ArrayLike) -> np.ndarray:
    """A NumPy copy of a tensor (any device or dtype) or of any array-like."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.float() if x.is_floating_point() else x).numpy()
    return np.asarray(x)


def _same_length(a: np.ndarray, b: np.ndarray, names: str) -> None:
    """Raise a ValueError naming `names` unless `a` and `b` have the same length."""
    if len(a) != len(b):
        raise ValueError(f"{names} must have the same length, got {len(a)} and {len(b)}.")


# --------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------

def _as_predictions(logits_or_preds: ArrayLike) -> np.ndarray:
    """Class indices [N] from logits [N, C] (argmax) or from predictions [N]."""
    x = _numpy(logits_or_preds)
    return x.argmax(axis=1) if x.ndim == 2 else x.astype(np.int64)


def accuracy(logits_or_preds: ArrayLike, targets: ArrayLike) -> float:
    """The fraction of correct predictions, from logits [N, C] or class indices [N]; targets [N]."""
    preds, targets = _as_predictions(logits_or_preds), _numpy(targets)
    _same_length(preds, targets, "predictions and targets")
    return float((preds == targets).mean())


def accuracy_difference_interval(acc_a: float, acc_b: float, n_a: int, n_b: int | None = None,
                                 level: float = 0.95) -> tuple[float, float]:
    """A normal-approximation interval `(low, high)` for the difference `acc_a - acc_b`.

    Each accuracy measured on `n` images has the variance $p(1-p)/n$; a difference of two
    independent ones adds both variances, so with equal accuracies its interval is $\\sqrt{2}$ times
    as wide as that of one accuracy. `n_b` defaults to `n_a` (the same validation set). The interval
    covers the sampling noise of the evaluation images only, not the seed-to-seed noise of training.
    """
    n_b = n_a if n_b is None else n_b
    for name, acc in (("acc_a", acc_a), ("acc_b", acc_b)):
        if not 0.0 <= acc <= 1.0:
            raise ValueError(f"{name} must be an accuracy between 0 and 1, got {acc}")
    if n_a < 1 or n_b < 1:
        raise ValueError(f"n_a and n_b count evaluation images and must be at least 1, got {n_a} and {n_b}")
    z = NormalDist().inv_cdf(0.5 + level / 2)  # 1.96 for level 0.95
    half = z * math.sqrt(acc_a * (1 - acc_a) / n_a + acc_b * (1 - acc_b) / n_b)
    diff = acc_a - acc_b
    return diff - half, diff + half


def interval_verdict(low: float, high: float) -> str:
    """`"ahead"`, `"behind"` or `"a tie"` for an interval (low, high) of a difference a - b.

    The course's one rule for calling a winner: a tie when the interval contains 0. Every
    `compare_*` function below says its verdict through this.
    """
    return "ahead" if low > 0 else ("behind" if high < 0 else "a tie")


def compare_accuracies(acc_a: float, acc_b: float, n_a: int, n_b: int | None = None,
                       level: float = 0.95) -> str:
    """`"ahead"`, `"behind"` or `"a tie"`: where `acc_a` stands against `acc_b`.

    A tie means `accuracy_difference_interval` contains 0, i.e. the difference is inside the noise
    of the evaluation images; labs use this one rule wherever two accuracies are compared.
    """
    low, high = accuracy_difference_interval(acc_a, acc_b, n_a, n_b, level)
    return interval_verdict(low, high)


def paired_accuracy_difference_interval(correct_a: ArrayLike, correct_b: ArrayLike,
                                        level: float = 0.95) -> tuple[float, float]:
    """An interval `(low, high)` for accuracy(a) - accuracy(b) when both were scored on the same images.

    `correct_a` and `correct_b` are [N] booleans, one per image: was classifier a (b) right? Only the
    images where exactly one of them is right carry information about the difference, so the paired
    interval is narrower than `accuracy_difference_interval` when the two agree on most images. This is
    Agresti and Min's (2005) interval: add one half to each cell of the 2x2 table of right/wrong, then
    the usual normal approximation. Unlike the plain one it does not collapse when an accuracy is 0 or 1.
    """
    a, b = _numpy(correct_a).astype(bool), _numpy(correct_b).astype(bool)
    _same_length(a, b, "correct_a and correct_b (one entry per image, the same images)")
    if a.ndim != 1 or len(a) < 1:
        raise ValueError(f"correct_a and correct_b must be 1-D with at least one image, got shape {a.shape}")
    n = len(a) + 2  # the four half counts add 2 images
    only_a = (np.sum(a & ~b) + 0.5) / n  # a right, b wrong
    only_b = (np.sum(~a & b) + 0.5) / n  # b right, a wrong
    diff = only_a - only_b
    z = NormalDist().inv_cdf(0.5 + level / 2)  # 1.96 for level 0.95
    half = z * math.sqrt((only_a + only_b - diff ** 2) / n)
    return max(float(diff - half), -1.0), min(float(diff + half), 1.0)  # a difference lies in [-1, 1]


def compare_paired_accuracies(correct_a: ArrayLike, correct_b: ArrayLike, level: float = 0.95) -> str:
    """`"ahead"`, `"behind"` or `"a tie"` for classifier a against b, scored on the same images.

    The paired version of `compare_accuracies`: a tie means `paired_accuracy_difference_interval`
    contains 0. Use it whenever both accuracies come from the same test images.
    """
    low, high = paired_accuracy_difference_interval(correct_a, correct_b, level)
    return interval_verdict(low, high)


def confusion_matrix(preds: ArrayLike, targets: ArrayLike, n_classes: int) -> np.ndarray:
    """Counts [n_classes, n_classes]: row = true class, column = predicted class.

    `preds` are class indices [N] or logits [N, C]; `targets` class indices [N].
    """
    preds, targets = _as_predictions(preds), _numpy(targets).astype(np.int64)
    _same_length(preds, targets, "predictions and targets")
    for name, x in (("predictions", preds), ("targets", targets)):
        if len(x) and (x.min() < 0 or x.max() >= n_classes):
            raise ValueError(f"{name} must be class indices in 0..{n_classes - 1}, "
                             f"found {x.min()}..{x.max()}: is n_classes right?")
    counts = np.bincount(targets * n_classes + preds, minlength=n_classes**2)  # [K*K]
    return counts.reshape(n_classes, n_classes)


def per_class_accuracy(preds: ArrayLike, targets: ArrayLike, n_classes: int) -> np.ndarray:
    """Accuracy of each true class [n_classes] (the recall per class; NaN for absent classes)."""
    cm = confusion_matrix(preds, targets, n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.diag(cm) / cm.sum(axis=1)


def balanced_accuracy(preds: ArrayLike, targets: ArrayLike, n_classes: int | None = None) -> float:
    """The mean of the per-class accuracies (recalls) of the classes present in `targets`.

    On a balanced set it equals the accuracy; on an imbalanced one every class counts the same,
    however rare, so a model that ignores a rare class cannot hide behind the common ones (a
    constant guess scores 1/K). For two classes it is (sensitivity + specificity) / 2. Same value as
    `sklearn.metrics.balanced_accuracy_score`. `preds` are class indices [N] or logits [N, C].
    """
    preds, targets = _as_predictions(preds), _numpy(targets).astype(np.int64)
    n = int(max(preds.max(initial=0), targets.max(initial=0)) + 1) if n_classes is None else n_classes
    recalls = per_class_accuracy(preds, targets, n)  # [K], NaN for absent classes
    return float(np.nanmean(recalls))


def box_iou(boxes_a: ArrayLike, boxes_b: ArrayLike) -> np.ndarray:
    """Intersection over union of matching boxes: [N, 4] and [N, 4] -> [N], boxes as (x0, y0, x1, y1).

    The overlap's area divided by the area of the union (0: apart, 1: identical). A box with
    x1 < x0 or y1 < y0 has no area. Row i of `boxes_a` is compared with row i of `boxes_b` (the
    diagonal of `torchvision.ops.box_iou`, which compares all pairs).
    """
    a, b = _numpy(boxes_a).astype(np.float64), _numpy(boxes_b).astype(np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != 4:
        raise ValueError(f"boxes must be two arrays [N, 4] of (x0, y0, x1, y1), got {a.shape} and {b.shape}")

    def area(box: np.ndarray) -> np.ndarray:
        return np.clip(box[:, 2] - box[:, 0], 0, None) * np.clip(box[:, 3] - box[:, 1], 0, None)  # [N]

    overlap = np.concatenate([np.maximum(a[:, :2], b[:, :2]), np.minimum(a[:, 2:], b[:, 2:])], axis=1)  # [N, 4]
    inter = area(overlap)  # [N]
    union = area(a) + area(b) - inter  # [N]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


# --------------------------------------------------------------------------------------------
# Anomaly detection: ranking quality
# --------------------------------------------------------------------------------------------

def _labels_and_scores(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Check and flatten binary labels [N] (1 = anomalous) and scores [N] (high = anomalous)."""
    labels, scores = _numpy(labels).ravel(), _numpy(scores).astype(np.float64).ravel()
    _same_length(labels, scores, "labels and scores")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 (normal) or 1 (anomalous).")
    if labels.min(initial=1) == labels.max(initial=0):
        raise ValueError(f"labels contain only class {labels[0] if len(labels) else '-'}: "
                         "AUROC and thresholds need both normal (0) and anomalous (1) examples.")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf: check the model's output.")
    return labels.astype(np.int64), scores


def image_auroc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve of image scores [N] against labels [N] (1 = anomalous).

    1.0: every anomalous image scores above every normal one; 0.5: chance; 0.0: inverted.
    Equals the probability that a random anomalous image outscores a random normal one.
    """
    return float(roc_auc_score(*_labels_and_scores(labels, scores)))


def roc_points(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve: false-positive rates [K] and true-positive rates [K], from (0, 0) to (1, 1)."""
    fpr, tpr, _ = roc_curve(*_labels_and_scores(labels, scores))
    return fpr, tpr


def _masks_and_maps(masks: ArrayLike, maps: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Check ground-truth masks and anomaly maps; return bool masks and float32 maps [N, H, W].

    Lists of [H_i, W_i] masks and maps (images of their own sizes) come back as lists of 2-D arrays."""
    if _ragged(masks) or _ragged(maps):
        return _ragged_masks_and_maps(masks, maps)
    masks, maps = _numpy(masks), _numpy(maps)
    masks = masks[:, 0] if masks.ndim == 4 and masks.shape[1] == 1 else masks  # [N, H, W]
    maps = maps[:, 0] if maps.ndim == 4 and maps.shape[1] == 1 else maps  # [N, H, W]
    if masks.shape != maps.shape:
        raise ValueError(f"masks {masks.shape} and maps {maps.shape} must have the same shape "
                         "[N, H, W]: resize the maps to the mask size first (F.interpolate).")
    masks = masks > 0.5
    _check_both_kinds(masks)
    return masks, maps.astype(np.float32, copy=False)


def _ragged(x) -> bool:
    """True for a list of 2-D maps or masks of different sizes."""
    return isinstance(x, (list, tuple)) and len({tuple(np.shape(m)) for m in x}) > 1


def _ragged_masks_and_maps(masks, maps) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Masks and maps of images of their own sizes: lists of bool [H_i, W_i] and float32 [H_i, W_i]."""
    masks, maps = [_numpy(m) > 0.5 for m in masks], [_numpy(m).astype(np.float32) for m in maps]
    if len(masks) != len(maps) or any(a.shape != b.shape for a, b in zip(masks, maps)):
        raise ValueError("masks and maps must be the same number of [H_i, W_i] arrays of equal sizes, "
                         "one per image: predict on the images the masks belong to.")
    _check_both_kinds(_flat(masks))
    return masks, maps


def _check_both_kinds(masks: np.ndarray) -> None:
    """Raise a clear error unless the bool masks hold both defect and normal pixels."""
    if not masks.any():
        raise ValueError("The masks contain no defect pixels: pixel-level metrics need test "
                         "images with defects (pass the masks of the whole test set).")
    if masks.all():
        raise ValueError("The masks contain no normal pixels: pixel-level metrics need both.")


def _flat(x: np.ndarray | list[np.ndarray]) -> np.ndarray:
    """All pixels of an array [N, H, W] or of a list of [H_i, W_i] arrays, as one vector."""
    return x.ravel() if isinstance(x, np.ndarray) else np.concatenate([m.ravel() for m in x])


def pixel_auroc(masks: ArrayLike, maps: ArrayLike) -> float:
    """AUROC over all pixels: masks [N, H, W] (1 = defect) against anomaly maps [N, H, W].

    Every pixel of every image counts as one example, so large defects weigh more than small
    ones (see `pro_score` for the fairer per-region view).
    """
    masks, maps = _masks_and_maps(masks, maps)
    return float(roc_auc_score(_flat(masks), _flat(maps)))


def pro_curve(masks: ArrayLike, maps: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """The per-region-overlap curve of MVTec AD: false-positive rates [K] and PRO values [K].

    Every threshold t gives one point: the fraction of normal pixels above t (FPR), and the mean
    over all defect regions (connected components of the masks, 8-connected) of the fraction of
    the region's pixels above t (PRO). One sort of all pixels gives every threshold at once.
    """
    masks, maps = _masks_and_maps(masks, maps)
    regions, n_regions = [], 0
    for mask in masks:  # 8-connected within an image, never across images
        labels, found = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))  # [H, W] ids 1..r
        regions.append(np.where(labels > 0, labels + n_regions, 0).ravel())
        n_regions += found
    regions = np.concatenate(regions)  # [all pixels] ids 1..R
    sizes = np.bincount(regions)  # [R + 1] pixels per region (0 = normal)
    fp_step = (regions == 0) / sizes[0]  # each normal pixel adds 1/n_normal to FPR
    with np.errstate(divide="ignore"):
        pro_step = np.where(regions > 0, 1.0 / sizes[regions], 0.0) / n_regions
    flat_maps = _flat(maps)
    order = np.argsort(flat_maps)[::-1]  # highest score first (ties merge below)
    scores = flat_maps[order]
    fpr, pro = np.cumsum(fp_step[order]), np.cumsum(pro_step[order])  # [H*W*N] each
    last_of_tie = np.append(scores[1:] != scores[:-1], True)  # one point per distinct threshold
    fpr = np.concatenate([[0.0], np.clip(fpr[last_of_tie], 0, 1)])
    pro = np.concatenate([[0.0], np.clip(pro[last_of_tie], 0, 1)])
    return fpr, pro


def pro_score(masks: ArrayLike, maps: ArrayLike, fpr_limit: float = 0.3) -> float:
    """Area under the PRO curve up to `fpr_limit`, divided by `fpr_limit` (1.0 = perfect).

    masks and maps are [N, H, W]. The MVTec AD benchmark uses fpr_limit=0.3; a random map scores
    about fpr_limit / 2 after normalisation.
    """
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}.")
    fpr, pro = pro_curve(masks, maps)
    keep = fpr <= fpr_limit
    x = np.append(fpr[keep], fpr_limit)
    y = np.append(pro[keep], np.interp(fpr_limit, fpr, pro))  # PRO exactly at the limit
    return float(np.trapezoid(y, x) / fpr_limit)


# --------------------------------------------------------------------------------------------
# Anomaly detection: thresholds
# --------------------------------------------------------------------------------------------

def threshold_from_normal(scores: ArrayLike, quantile: float = 0.99) -> float:
    """A threshold from normal data only: the `quantile` of the scores [N] of good images.

    With quantile=0.99 about 1% of good images will be flagged (false alarms); no defective
    example is needed, which is the usual situation in a factory.
    """
    scores = _numpy(scores).astype(np.float64).ravel()
    if len(scores) == 0:
        raise ValueError("threshold_from_normal needs at least one score of a normal image.")
    if not 0 <= quantile <= 1:
        raise ValueError(f"quantile must be between 0 and 1, got {quantile}.")
    return float(np.quantile(scores, quantile))


def false_alarm_threshold(scores: ArrayLike, false_alarm_rate: float = 0.01) -> float:
    """A threshold from good images' scores [N] that flags at most floor(rate x N) of them (`score >= threshold`).

    With k = floor(`false_alarm_rate` x N), the threshold is the smallest float above the
    (k+1)-th highest score: the k highest good scores are flagged, the others not (ties at
    that score are all passed). Unlike `threshold_from_normal` (which interpolates a quantile
    and may flag one image more than the budget), this never exceeds the budget on these images.
    """
    values = np.sort(_numpy(scores).astype(np.float32).ravel())[::-1]  # highest first
    if len(values) == 0:
        raise ValueError("false_alarm_threshold needs the scores of at least one good image.")
    if not 0 <= false_alarm_rate < 1:
        raise ValueError(f"false_alarm_rate must be in [0, 1), got {false_alarm_rate}.")
    k = int(math.floor(false_alarm_rate * len(values) + 1e-9))
    return float(np.nextafter(values[k], np.float32(np.inf)))


def false_alarm_upper_bound(n_good: int, false_alarms: int = 0, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound on the true false-alarm rate after `false_alarms` among `n_good` good images.

    The exact binomial bound (Clopper and Pearson, 1934): the largest rate p at which seeing so
    few alarms still has probability at least 1 - `confidence`, i.e. the `confidence` quantile
    of Beta(false_alarms + 1, n_good - false_alarms). With 0 alarms it is 1 - (1 - confidence)^(1/n),
    about 3 / n at 95 % (the "rule of three").
    """
    from scipy.stats import beta

    if n_good < 1 or not 0 <= false_alarms <= n_good:
        raise ValueError(f"Need n_good >= 1 and 0 <= false_alarms <= n_good, got {n_good} and {false_alarms}.")
    if false_alarms == n_good:
        return 1.0
    return float(beta.ppf(confidence, false_alarms + 1, n_good - false_alarms))


def good_images_needed(false_alarm_rate: float, confidence: float = 0.95, false_alarms: int = 0) -> int:
    """How many good images must pass with at most `false_alarms` alarms to show the rate is below `false_alarm_rate`.

    "Show" means with one-sided `confidence`: the smallest n whose
    `false_alarm_upper_bound(n, false_alarms, confidence)` is at most the rate; about 3 / rate
    for 0 alarms at 95 % (about 300 good images for a 1 % budget).
    """
    if not 0 < false_alarm_rate < 1:
        raise ValueError(f"false_alarm_rate must be in (0, 1), got {false_alarm_rate}.")

    def enough(n: int) -> bool:
        return false_alarm_upper_bound(n, false_alarms, confidence) <= false_alarm_rate

    low = max(false_alarms + 1, math.floor(math.log(1 - confidence) / math.log(1 - false_alarm_rate)))  # k = 0: exact
    high = low
    while not enough(high):  # double until enough, then bisect: the bound falls as n grows
        low, high = high, 2 * high
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid + 1, high)
    return high


def f1_optimal_threshold(labels: ArrayLike, scores: ArrayLike) -> tuple[float, float]:
    """The threshold with the best F1 score on labelled data, and that F1: `(threshold, f1)`.

    A sample counts as anomalous when `score >= threshold`. Tuned on the test data this is an
    optimistic upper bound; tune it on a labelled validation set for an honest number.
    """
    precision, recall, thresholds = precision_recall_curve(*_labels_and_scores(labels, scores))
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    best = int(np.argmax(f1))
    return float(thresholds[best]), float(f1[best])


def anomaly_confusion(labels: ArrayLike, scores: ArrayLike, threshold: float) -> np.ndarray:
    """Counts `[[tn, fp], [fn, tp]]` of calling `score >= threshold` anomalous; labels 1 = anomalous."""
    labels, scores = _numpy(labels).ravel().astype(np.int64), _numpy(scores).ravel()
    _same_length(labels, scores, "labels and scores")
    return confusion_matrix((scores >= threshold).astype(np.int64), labels, 2)


# --------------------------------------------------------------------------------------------
# Anomaly detection: how sure is an AUROC? (bootstrap intervals)
# --------------------------------------------------------------------------------------------

def _bootstrap_aurocs(labels: ArrayLike, scores: Sequence[ArrayLike], n_boot: int, seed: int
                      ) -> np.ndarray:
    """Image AUROCs [n_boot, K] of K score vectors on the same stratified bootstrap resamples.

    Anomalous and normal images are resampled separately (with replacement, counts kept), so
    every resample has both classes. AUROC = Mann-Whitney U / (P * Q), ties counting half.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}.")
    checked = [_labels_and_scores(labels, s) for s in scores]
    labels = checked[0][0]
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    rng = np.random.default_rng(seed)
    index = np.concatenate([rng.choice(pos, (n_boot, len(pos))),
                            rng.choice(neg, (n_boot, len(neg)))], axis=1)  # [B, P + Q], positives first
    aurocs = []
    for _, s in checked:
        ranks = rankdata(s[index], axis=1)  # [B, P + Q], ties get their mean rank
        u = ranks[:, :len(pos)].sum(axis=1) - len(pos) * (len(pos) + 1) / 2  # [B]
        aurocs.append(u / (len(pos) * len(neg)))
    return np.stack(aurocs, axis=1)  # [B, K]


def _percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """The central `level` interval (e.g. 0.95) of bootstrap values [B]."""
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1 (e.g. 0.95), got {level}.")
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def auroc_interval(labels: ArrayLike, scores: ArrayLike, n_boot: int = 1000, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float]:
    """A bootstrap interval `(low, high)` for the image AUROC of scores [N] against labels [N].

    The test images are resampled `n_boot` times (anomalous and normal separately, seeded);
    the interval holds the central `level` of the resampled AUROCs. Two detectors whose
    intervals overlap widely are a tie on this test set: compare them with
    `auroc_difference_interval`, which resamples both on the same images.
    """
    return _percentile_interval(_bootstrap_aurocs(labels, [scores], n_boot, seed)[:, 0], level)


def auroc_difference_interval(labels: ArrayLike, scores_a: ArrayLike, scores_b: ArrayLike,
                              n_boot: int = 1000, seed: int = 0, level: float = 0.95
                              ) -> tuple[float, float]:
    """A paired bootstrap interval for AUROC(a) - AUROC(b) on the same test images [N].

    Both detectors are scored on the same resamples, so the noise of the test set cancels. If
    the interval contains 0, the difference is within the noise: call it a tie.
    """
    aurocs = _bootstrap_aurocs(labels, [scores_a, scores_b], n_boot, seed)  # [B, 2]
    return _percentile_interval(aurocs[:, 0] - aurocs[:, 1], level)


class AurocComparison(NamedTuple):
    """What `compare_aurocs` returns: the verdict, the difference AUROC(a) - AUROC(b) and its interval."""

    verdict: str  # "ahead", "behind" or "a tie", as `compare_accuracies` says it
    difference: float
    low: float
    high: float
    level: float

    def sentence(self, name_a: str = "a", name_b: str = "b", images: str = "test-set") -> str:
        """One printable sentence, e.g. `PCA - autoencoder: +0.012 (95% interval -0.020 to +0.045): a tie`.

        `images` names the images compared, for the noise the verdict covers: "test-set" (the default)
        or e.g. "validation" when two settings are compared on validation images.
        """
        verdict = ("a tie (the interval contains 0)" if self.verdict == "a tie" else
                   f"{name_a if self.verdict == 'ahead' else name_b} ranks better, beyond the {images} noise")
        return (f"{name_a} - {name_b}: {self.difference:+.3f} ({self.level:.0%} interval {self.low:+.3f} "
                f"to {self.high:+.3f}): {verdict}")


def compare_aurocs(labels: ArrayLike, scores_a: ArrayLike, scores_b: ArrayLike, level: float = 0.95,
                   n_boot: int = 1000, seed: int = 0) -> AurocComparison:
    """Where detector a stands against detector b on image AUROC: `"ahead"`, `"behind"` or `"a tie"`.

    The AUROC counterpart of `compare_accuracies`: a tie means the paired bootstrap interval of
    AUROC(a) - AUROC(b) over the same test images (`auroc_difference_interval`) contains 0, i.e. the
    difference is inside the noise of the test set (not of training: one seed is one draw). Returns an
    `AurocComparison` (verdict, difference, low, high, level); `.sentence(name_a, name_b)` prints it.
    Labs 5-7 use this one rule wherever two image AUROCs are compared.
    """
    low, high = auroc_difference_interval(labels, scores_a, scores_b, n_boot, seed, level)
    difference = image_auroc(labels, scores_a) - image_auroc(labels, scores_b)
    return AurocComparison(interval_verdict(low, high), difference, low, high, level)


def _weighted_auroc(groups: np.ndarray, labels: np.ndarray, weights: np.ndarray, n_groups: int) -> float:
    """AUROC of pixels sorted by score, each counted `weights` times; equal scores share a group (ties count half)."""
    pos = np.bincount(groups, weights * labels, minlength=n_groups)  # [G] defect weight per score value
    neg = np.bincount(groups, weights * ~labels, minlength=n_groups)  # [G] normal weight per score value
    if not pos.sum() or not neg.sum():
        return float("nan")  # this resample has no defect pixels (or no normal ones)
    below = np.cumsum(neg) - neg  # normal weight strictly below each score value
    return float((pos * (below + 0.5 * neg)).sum() / (pos.sum() * neg.sum()))


def pixel_auroc_difference_interval(masks: ArrayLike, maps_a: ArrayLike, maps_b: ArrayLike,
                                    n_boot: int = 500, seed: int = 0, level: float = 0.95,
                                    grid: int = 32) -> tuple[float, float]:
    """A paired bootstrap interval for pixel AUROC(a) - pixel AUROC(b), maps [N, H, W] of the same images.

    The pixels of one image are not independent examples, so the resampling unit is the image:
    `n_boot` times, N images are drawn with replacement (each with all its pixels) and both
    pixel AUROCs are computed on them. To keep this quick, each map is read on a `grid` x `grid`
    lattice of pixels (every H // grid-th row and column). If the interval contains 0, the
    difference in pixel AUROC is within the noise of this test set: call it a tie.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}.")
    if _ragged(masks) or _ragged(maps_a) or _ragged(maps_b):
        raise ValueError("pixel_auroc_difference_interval needs maps of one size [N, H, W]; "
                         "give the detectors image_size=... and images of one size.")
    masks, a = _masks_and_maps(masks, maps_a)
    _, b = _masks_and_maps(masks, maps_b)
    step_y, step_x = max(1, masks.shape[1] // grid), max(1, masks.shape[2] // grid)
    masks, a, b = (t[:, ::step_y, ::step_x] for t in (masks, a, b))  # [N, h, w] each
    image = np.broadcast_to(np.arange(len(masks))[:, None, None], masks.shape).ravel()  # [P] image of each pixel
    sorted_maps = []
    for maps in (a, b):  # sort once; a resample only reweights the pixels
        order = np.argsort(maps.ravel(), kind="stable")
        _, groups = np.unique(maps.ravel()[order], return_inverse=True)  # [P] equal scores, one group
        sorted_maps.append((groups, masks.ravel()[order], image[order], groups.max() + 1))
    rng = np.random.default_rng(seed)
    differences = []
    while len(differences) < n_boot:
        counts = np.bincount(rng.integers(0, len(masks), len(masks)), minlength=len(masks))  # [N] draws per image
        aurocs = [_weighted_auroc(groups, labels, counts[img].astype(float), n)
                  for groups, labels, img, n in sorted_maps]
        if not all(np.isfinite(aurocs)):
            continue  # the resample had no defect pixels (or no normal ones)
        differences.append(aurocs[0] - aurocs[1])
    return _percentile_interval(np.array(differences), level)


# --------------------------------------------------------------------------------------------
# Anomaly detection: one evaluation and one results table for every detector
# --------------------------------------------------------------------------------------------

def _scores_and_maps(prediction) -> tuple[np.ndarray, np.ndarray | None]:
    """(scores [N], maps [N, H, W] or None) from a Prediction-like object or a (scores, maps) tuple."""
    if hasattr(prediction, "scores") and hasattr(prediction, "maps"):
        scores, maps = prediction.scores, prediction.maps
    elif isinstance(prediction, (tuple, list)) and len(prediction) == 2:
        scores, maps = prediction
    else:
        raise TypeError("prediction must have .scores [N] and .maps [N, H, W] (what a detector's "
                        f"predict returns) or be a (scores, maps) tuple, got {type(prediction).__name__}.")
    return _numpy(scores).astype(np.float64).ravel(), None if maps is None else _numpy(maps)


def per_defect_auroc(labels: ArrayLike, scores: ArrayLike, defects: Sequence[str]) -> dict[str, float]:
    """`{defect type: image AUROC}`: each type's images [N] against the good ones, types sorted by name.

    `defects` names each image's type ("good" for good images), as `AnomalyData.test_defects`
    does. A low value points at the kind of defect a detector misses.
    """
    labels, scores = _labels_and_scores(labels, scores)
    defects = np.asarray(defects)
    _same_length(labels, defects, "labels and defect types")
    good = labels == 0
    return {str(d): image_auroc(labels[good | (defects == d)], scores[good | (defects == d)])
            for d in sorted(set(defects[labels == 1].tolist()))}


def evaluate(data, prediction, interval: bool = True, fpr_limit: float = 0.3) -> dict:
    """Every anomaly-detection metric of the course for one detector on a test split.

    `data` is the `cu.data.AnomalyData` the detector was tested on (its `test_labels`,
    `test_masks`, `test_defects`, `has_masks`); `prediction` has `.scores` [N] and `.maps`
    [N, H, W] at the mask size (what `detector.predict(data.test_images)` returns) or is a
    `(scores, maps)` tuple. Returns a dict: `image_auroc`; `pixel_auroc` and `pro` (the area
    under the PRO curve up to `fpr_limit` = 30% FPR, normalised to [0, 1], as in MVTec AD),
    NaN when the masks are unknown or the maps None; `per_defect`, `{defect: image AUROC of that
    defect's images against the good ones}`; and, with `interval=True`, `image_auroc_interval`,
    the 95% bootstrap interval (`auroc_interval`).
    """
    for name in ("test_labels", "test_masks", "test_defects"):
        if not hasattr(data, name):
            raise TypeError(f"data must be a cu.data.AnomalyData (with .{name}), "
                            f"got {type(data).__name__}.")
    labels = _numpy(data.test_labels).ravel()
    scores, maps = _scores_and_maps(prediction)
    if len(scores) != len(labels):
        raise ValueError(f"The prediction has {len(scores)} scores but the test split has "
                         f"{len(labels)} images: predict on data.test_images.")
    result = {"image_auroc": image_auroc(labels, scores)}
    pixel_ok = maps is not None and getattr(data, "has_masks", True) and bool(_numpy(data.test_masks).any())
    result["pixel_auroc"] = pixel_auroc(data.test_masks, maps) if pixel_ok else float("nan")
    result["pro"] = pro_score(data.test_masks, maps, fpr_limit) if pixel_ok else float("nan")
    result["per_defect"] = per_defect_auroc(labels, scores, data.test_defects)
    if interval:
        result["image_auroc_interval"] = auroc_interval(labels, scores)
    return result


_TABLE_COLUMNS = (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"),
                  ("pro", "PRO@30%"), ("fit_s", "fit s"), ("predict_s", "predict s"))


def _number(value, seconds: bool = False) -> str:
    """A table cell: an AUROC with 3 decimals, seconds with 2 (0 from 10 s on), '-' when missing or NaN."""
    if value is None or math.isnan(float(value)):
        return "-"
    if seconds:
        return f"{value:.2f}" if value < 10 else f"{value:.0f}"
    return f"{value:.3f}"


def _cell(key: str, row: dict) -> str:
    """The cell of column `key` in `row`; an AUROC gets its interval `[low, high]` if the row has one."""
    text = _number(row.get(key), seconds=key.endswith("_s"))
    if text != "-" and f"{key}_interval" in row:
        low, high = row[f"{key}_interval"]
        text += f" [{low:.2f}, {high:.2f}]"
    return text


def results_table(rows: Sequence[dict], per_defect: bool = False) -> str:
    """One printable table of detectors: a row per dict of `name` + `evaluate(...)` output.

    Columns: name, image AUROC (with its 95% bootstrap interval when the row has
    `image_auroc_interval`), pixel AUROC, PRO@30% (AUPRO to 30% FPR), then the optional
    `fit_s`/`predict_s` (seconds) and `notes`. `per_defect=True` adds one image-AUROC column
    per defect type. Missing or NaN values show as '-'. Labs 5-7 and the benchmark print it.
    """
    if not rows:
        raise ValueError("results_table needs at least one row (a dict with a name and evaluate() output).")
    if any("name" not in r for r in rows):
        raise ValueError("Every row needs a 'name', e.g. {'name': 'PatchCore', **cu.metrics.evaluate(data, prediction)}.")
    columns = [(k, h) for k, h in _TABLE_COLUMNS if any(k in r for r in rows)]
    defects = sorted({d for r in rows for d in r.get("per_defect", {})}) if per_defect else []
    header = ["detector", *(h for _, h in columns), *defects]
    body = [[str(r["name"]), *(_cell(k, r) for k, _ in columns),
             *(_number(r.get("per_defect", {}).get(d)) for d in defects)] for r in rows]
    notes = any(r.get("notes") for r in rows)
    if notes:
        header.append("notes")
        for line, r in zip(body, rows):
            line.append(str(r.get("notes", "")))
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    left = {0, len(header) - 1} if notes else {0}  # names and notes left-aligned, numbers right
    return "\n".join("  ".join(cell.ljust(w) if i in left else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(line, widths))).rstrip()
                     for line in [header, ["-" * w for w in widths], *body])
