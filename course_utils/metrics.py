"""How good is a model? Classification metrics and the anomaly-detection metrics of MVTec AD.

Classification (labs 4): `accuracy`, `confusion_matrix`, `per_class_accuracy`.
Anomaly detection (labs 5-7): a detector gives one score per image and one anomaly map per
image. `image_auroc` asks "are defective images ranked above good ones?", `pixel_auroc` the same
per pixel, `pro_score` whether every defect region, small or large, is found. A detector in a
factory also needs a threshold: `threshold_from_normal` (from good images only) or
`f1_optimal_threshold` (from labelled data); `anomaly_confusion` counts its hits and misses.
Every function takes tensors or NumPy arrays and returns plain floats / arrays.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
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
    """Check ground-truth masks and anomaly maps; return bool masks and float32 maps [N, H, W]."""
    masks, maps = _numpy(masks), _numpy(maps)
    masks = masks[:, 0] if masks.ndim == 4 and masks.shape[1] == 1 else masks  # [N, H, W]
    maps = maps[:, 0] if maps.ndim == 4 and maps.shape[1] == 1 else maps  # [N, H, W]
    if masks.shape != maps.shape:
        raise ValueError(f"masks {masks.shape} and maps {maps.shape} must have the same shape "
                         "[N, H, W]: resize the maps to the mask size first (F.interpolate).")
    masks = masks > 0.5
    if not masks.any():
        raise ValueError("The masks contain no defect pixels: pixel-level metrics need test "
                         "images with defects (pass the masks of the whole test set).")
    if masks.all():
        raise ValueError("The masks contain no normal pixels: pixel-level metrics need both.")
    return masks, maps.astype(np.float32, copy=False)


def pixel_auroc(masks: ArrayLike, maps: ArrayLike) -> float:
    """AUROC over all pixels: masks [N, H, W] (1 = defect) against anomaly maps [N, H, W].

    Every pixel of every image counts as one example, so large defects weigh more than small
    ones (see `pro_score` for the fairer per-region view).
    """
    masks, maps = _masks_and_maps(masks, maps)
    return float(roc_auc_score(masks.ravel(), maps.ravel()))


def pro_curve(masks: ArrayLike, maps: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """The per-region-overlap curve of MVTec AD: false-positive rates [K] and PRO values [K].

    Every threshold t gives one point: the fraction of normal pixels above t (FPR), and the mean
    over all defect regions (connected components of the masks, 8-connected) of the fraction of
    the region's pixels above t (PRO). One sort of all pixels gives every threshold at once.
    """
    masks, maps = _masks_and_maps(masks, maps)
    connect = np.zeros((3, 3, 3), dtype=bool)
    connect[1] = True  # 8-connected within an image, never across images
    regions, n_regions = ndimage.label(masks, structure=connect)  # [N, H, W] ids 1..R
    sizes = np.bincount(regions.ravel())  # [R + 1] pixels per region (0 = normal)
    fp_step = (regions == 0).ravel() / sizes[0]  # each normal pixel adds 1/n_normal to FPR
    with np.errstate(divide="ignore"):
        pro_step = np.where(regions > 0, 1.0 / sizes[regions], 0.0).ravel() / n_regions
    order = np.argsort(maps.ravel())[::-1]  # highest score first (ties merge below)
    scores = maps.ravel()[order]
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
