"""Every figure the labs show. Each function draws one figure and returns it.

Images may be PyTorch tensors or NumPy arrays, a batch [N, 3, H, W], [N, 1, H, W], [N, H, W]
or [N, H, W, 3], values in [0, 1] (floats), 0..255 (uint8), or anything else (e.g. normalised
images: rescaled to [0, 1] per image for display). For one image pass `image[None]`.

Sections: style | image conversion | images | training | inside a CNN | anomaly detection |
lab 2: initialisation, loss surfaces, decision boundaries.
Labs that need a new figure append a function in a new section at the end of the file.
"""

from __future__ import annotations

import math
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from course_utils.metrics import image_auroc, roc_points

# --------------------------------------------------------------------------------------------
# Style
# --------------------------------------------------------------------------------------------

_PRESENTATION = {"font.size": 16, "axes.titlesize": 18, "axes.labelsize": 16,
                 "xtick.labelsize": 14, "ytick.labelsize": 14, "legend.fontsize": 14,
                 "figure.titlesize": 20, "lines.linewidth": 2.5, "figure.dpi": 110}
_saved_style: dict = {}
_scale = 1.0  # figure-size factor: 1 for notebooks, larger for the lecture hall


def presentation_style(on: bool = True) -> None:
    """Switch large fonts, thick lines and 1.5x larger figures on (for lectures) or back off."""
    global _scale
    if on and not _saved_style:
        _saved_style.update({key: plt.rcParams[key] for key in _PRESENTATION})
        plt.rcParams.update(_PRESENTATION)
    elif not on and _saved_style:
        plt.rcParams.update(_saved_style)
        _saved_style.clear()
    _scale = 1.5 if on else 1.0


def _figure(nrows: int, ncols: int, cell: tuple[float, float]) -> tuple[Figure, np.ndarray]:
    """A figure with a grid of axes [nrows, ncols], each cell `cell` inches (times the style's scale)."""
    size = (ncols * cell[0] * _scale, nrows * cell[1] * _scale)
    fig, axes = plt.subplots(nrows, ncols, figsize=size, squeeze=False)
    return fig, axes


def _grid(n: int, ncols: int, cell: tuple[float, float] = (1.6, 1.6)) -> tuple[Figure, list]:
    """A figure with exactly `n` axes laid out `ncols` wide (the unused cells are removed)."""
    ncols = max(1, min(ncols, n))
    fig, axes = _figure(math.ceil(n / ncols), ncols, cell)
    axes = list(axes.ravel())
    for ax in axes[n:]:
        ax.remove()
    for ax in axes[:n]:
        ax.set_axis_off()
    return fig, axes[:n]


# --------------------------------------------------------------------------------------------
# Image conversion: tensors or arrays in, displayable NumPy images out
# --------------------------------------------------------------------------------------------

def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.float() if x.is_floating_point() else x).numpy()
    return np.asarray(x)


def _as_images(images) -> np.ndarray:
    """A batch of images as float [N, H, W] (gray) or [N, H, W, 3] (colour) in [0, 1]."""
    x = _numpy(images)
    if x.ndim == 2:
        x = x[None]  # [1, H, W]
    if x.ndim == 3 and x.shape[-1] in (3, 4) and x.shape[0] not in (3, 4):
        x = x[None]  # one HWC image: [1, H, W, C]
    channels_last = x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4)
    if x.ndim == 4 and not channels_last:
        x = x.transpose(0, 2, 3, 1)  # CHW -> HWC: [N, H, W, C]
    if x.ndim == 4 and x.shape[-1] in (1, 3, 4):
        x = x[..., :3] if x.shape[-1] >= 3 else x[..., 0]  # drop alpha / the single channel
    if x.ndim != 3 and not (x.ndim == 4 and x.shape[-1] == 3):
        raise ValueError(f"Cannot show images of shape {_numpy(images).shape}: expected "
                         "[N, 3, H, W], [N, 1, H, W], [N, H, W] or [N, H, W, 3].")
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255
    x = x.astype(np.float32)
    if x.min() < 0 or x.max() > 1:  # e.g. normalised images: stretch each to [0, 1]
        low = x.min(axis=tuple(range(1, x.ndim)), keepdims=True)
        high = x.max(axis=tuple(range(1, x.ndim)), keepdims=True)
        x = (x - low) / np.maximum(high - low, 1e-8)
    return x


def _as_maps(maps) -> np.ndarray:
    """Per-pixel maps (anomaly maps, masks) as float [N, H, W]; [N, 1, H, W] is squeezed."""
    x = _numpy(maps).astype(np.float32)
    x = x[:, 0] if x.ndim == 4 and x.shape[1] == 1 else x
    x = x[None] if x.ndim == 2 else x
    if x.ndim != 3:
        raise ValueError(f"Expected maps [N, H, W] or [N, 1, H, W], got {x.shape}.")
    return x


def _differ_in_size(items) -> bool:
    """True for a list or tuple of arrays/tensors that do not all have one shape (they cannot be stacked)."""
    return isinstance(items, (list, tuple)) and len({tuple(np.shape(_numpy(item))) for item in items}) > 1


def _as_image_list(images) -> list[np.ndarray]:
    """Images as a list of [H_i, W_i] or [H_i, W_i, 3] arrays: a batch, or a list of differently sized images."""
    if _differ_in_size(images):
        return [_as_images(_numpy(image)[None])[0] for image in images]  # each [H_i, W_i(, 3)]
    return list(_as_images(images))


def _as_map_list(maps) -> list[np.ndarray]:
    """Maps as a list of [H_i, W_i] arrays: a batch [N, H, W], or a list of differently sized maps."""
    if _differ_in_size(maps):
        return [_as_maps(m)[0] for m in maps]  # each [H_i, W_i]
    return list(_as_maps(maps))


def _imshow(ax, image: np.ndarray, **kwargs) -> None:
    """Show one gray [H, W] or colour [H, W, 3] image in [0, 1] without interpolation blur."""
    if image.ndim == 2:
        kwargs = {"cmap": "gray", "vmin": 0, "vmax": 1, **kwargs}
    ax.imshow(image, interpolation="nearest", **kwargs)


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------

def show_images(images, titles: Sequence[str] | None = None, ncols: int = 8,
                title_colors: Sequence[str] | None = None, suptitle: str | None = None) -> Figure:
    """A grid of images [N, ...] with an optional title under each (e.g. class names).

    `title_colors` colours each title (e.g. green for right, red for wrong predictions).
    The figure has exactly N axes.
    """
    x = _as_images(images)
    if titles is not None and len(titles) != len(x):
        raise ValueError(f"Got {len(titles)} titles for {len(x)} images.")
    fig, axes = _grid(len(x), ncols)
    for i, ax in enumerate(axes):
        _imshow(ax, x[i])
        if titles is not None:
            color = title_colors[i] if title_colors is not None else "black"
            ax.set_title(str(titles[i]), fontsize="small", color=color)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def show_pixel_values(image, fmt: str | None = None, title: str | None = None) -> Figure:
    """A small grayscale image [H, W] (or [1, H, W]) with each pixel's value written on it.

    Values are written as given (e.g. 0..16 for scikit-learn digits); the text is white on dark
    cells and black on bright ones. `fmt` defaults to integers for whole numbers, else 2 decimals.
    """
    values = _numpy(image)
    if values.ndim == 3 and 1 in (values.shape[0], values.shape[-1]):
        values = values[0] if values.shape[0] == 1 else values[..., 0]  # [H, W]
    if values.ndim != 2:
        raise ValueError(f"show_pixel_values needs one grayscale image [H, W], got {values.shape}.")
    if max(values.shape) > 32:
        raise ValueError(f"An image of {values.shape} has too many pixels to label: crop it.")
    fmt = fmt or ("{:.0f}" if np.all(np.mod(values, 1) == 0) else "{:.2f}")
    low, high = float(values.min()), float(values.max())
    shade = (values - low) / max(high - low, 1e-8)  # [H, W] in [0, 1]
    fig, axes = _figure(1, 1, (0.5 * values.shape[1], 0.5 * values.shape[0]))
    ax = axes[0, 0]
    ax.imshow(shade, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    for (row, col), value in np.ndenumerate(values):
        ax.text(col, row, fmt.format(value), ha="center", va="center", fontsize="small",
                color="black" if shade[row, col] > 0.5 else "white")
    ax.set_xticks([]), ax.set_yticks([])
    if title:
        ax.set_title(title)
    return fig


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------

def plot_history(history) -> Figure:
    """Training curves of a `course_utils.train.History` (or a dict with the same keys).

    One panel for train vs validation loss per epoch, one per validation metric; a dashed line
    marks the best epoch.
    """
    get = history.get if isinstance(history, dict) else lambda key: getattr(history, key, None)
    train, valid, metrics = get("train_loss") or [], get("valid_loss") or [], get("metrics") or {}
    best = get("best_epoch")
    fig, axes = _figure(1, 1 + len(metrics), (4.5, 3.2))
    panels = [("loss", {"train": train, "valid": valid})]
    panels += [(name, {"valid": values}) for name, values in metrics.items()]
    for ax, (name, curves) in zip(axes[0], panels):
        for label, values in curves.items():
            if len(values):
                ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=label)
        if best is not None:
            ax.axvline(best + 1, color="gray", linestyle="--", linewidth=1, label="best epoch")
        ax.set(xlabel="epoch", ylabel=name, title=name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def plot_confusion_matrix(cm, classes: Sequence[str], normalize: bool = False) -> Figure:
    """A confusion matrix [K, K] (rows = true class, columns = predicted) with class names.

    `normalize=True` shows each row as fractions (the per-class accuracy is on the diagonal).
    """
    cm = _numpy(cm).astype(np.float64)
    if cm.shape != (len(classes), len(classes)):
        raise ValueError(f"Confusion matrix {cm.shape} does not match {len(classes)} classes.")
    if normalize:
        cm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, axes = _figure(1, 1, (0.55 * len(classes) + 2, 0.55 * len(classes) + 1.5))
    ax = axes[0, 0]
    image = ax.imshow(cm, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class" if normalize else "images")
    fmt = "{:.2f}" if normalize else "{:.0f}"
    for (row, col), value in np.ndenumerate(cm):
        ax.text(col, row, fmt.format(value), ha="center", va="center", fontsize="small",
                color="white" if value > cm.max() / 2 else "black")
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes, rotation=45, ha="right")
    ax.set_yticks(ticks, classes)
    ax.set(xlabel="predicted class", ylabel="true class", title="Confusion matrix (rows: true class)")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# Inside a CNN: filters and feature maps
# --------------------------------------------------------------------------------------------

def show_filters(weight, max_filters: int = 64, max_channels: int = 8) -> Figure:
    """Convolution filters [out, in, k, k] (a tensor, or a layer with `.weight`).

    With 3 input channels each filter is one RGB image (N = out axes); otherwise one gray image
    per (filter, input channel), a row per filter (out x in axes, capped at `max_filters` rows
    and `max_channels` columns). Each filter is stretched to its own min..max.
    """
    w = _numpy(getattr(weight, "weight", weight))
    if w.ndim != 4:
        raise ValueError(f"Filters must be [out, in, k, k], got {w.shape}.")
    w = w[:max_filters]
    low = w.min(axis=(1, 2, 3), keepdims=True)
    w = (w - low) / np.maximum(w.max(axis=(1, 2, 3), keepdims=True) - low, 1e-8)  # [out, in, k, k]
    if w.shape[1] == 3:
        fig, axes = _grid(len(w), ncols=8, cell=(1.0, 1.0))
        for ax, f in zip(axes, w):
            _imshow(ax, f.transpose(1, 2, 0))  # [k, k, 3]
        return fig
    w = w[:, :max_channels]
    fig, axes = _figure(w.shape[0], w.shape[1], (0.8, 0.8))
    for (i, j), ax in np.ndenumerate(axes):
        _imshow(ax, w[i, j])
        ax.set_axis_off()
    return fig


def show_feature_maps(fmaps, ncols: int = 8, max_maps: int = 32, title: str | None = None) -> Figure:
    """The channels of one feature map [C, H, W] (or the first of a batch [B, C, H, W]).

    One axis per channel (up to `max_maps`), each with its own colour scale (viridis).
    """
    x = _numpy(fmaps)
    x = x[0] if x.ndim == 4 else x  # [C, H, W]
    if x.ndim != 3:
        raise ValueError(f"Feature maps must be [C, H, W] or [B, C, H, W], got {x.shape}.")
    x = x[:max_maps]
    fig, axes = _grid(len(x), ncols, cell=(1.4, 1.4))
    for c, ax in enumerate(axes):
        ax.imshow(x[c], cmap="viridis", interpolation="nearest")
        ax.set_title(f"ch {c}", fontsize="x-small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# Anomaly detection: reconstructions, anomaly maps, ROC curves
# --------------------------------------------------------------------------------------------

def show_reconstructions(inputs, recons, n: int = 8, errors: bool = True,
                         titles: Sequence[str] | None = None) -> Figure:
    """The first `n` inputs (top row) above their reconstructions (middle row).

    With `errors=True` a third row shows the error map |input - reconstruction| (mean over
    channels, one colour scale for all, with a colour bar). Inputs and reconstructions are
    [N, C, H, W] in [0, 1]; `titles` names the columns (e.g. "good", "crack"). The figure has
    n x 2 (or n x 3, plus the colour bar) axes.
    """
    x, r = _numpy(inputs)[:n], _numpy(recons)[:n]
    if x.shape != r.shape:
        raise ValueError(f"inputs {x.shape} and reconstructions {r.shape} differ in shape.")
    if titles is not None and len(titles) < len(x):
        raise ValueError(f"Got {len(titles)} titles for {len(x)} columns: pass one title per image shown.")
    error = np.abs(x - r)
    error = error.mean(axis=1) if error.ndim == 4 else error  # [n, H, W]
    rows = [("input", _as_images(x)), ("reconstruction", _as_images(np.clip(r, 0, 1)))]
    fig, axes = _figure(len(rows) + errors, len(x), (1.6, 1.6))
    for row, (name, images) in enumerate(rows):
        for i, ax in enumerate(axes[row]):
            _imshow(ax, images[i])
            if row == 0 and titles is not None:
                ax.set_title(f"{name}: {titles[i]}" if i == 0 else titles[i], fontsize="small")
        if row or titles is None:
            axes[row, 0].set_title(name, loc="left", fontsize="small")
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.tight_layout()
    if errors:
        for i, ax in enumerate(axes[2]):
            shown = ax.imshow(error[i], cmap="inferno", vmin=0, vmax=error.max(), interpolation="nearest")
        axes[2, 0].set_title("|error|", loc="left", fontsize="small")
        fig.colorbar(shown, ax=axes[2].tolist(), fraction=0.02, pad=0.01, label="|error|")
    return fig


def show_anomaly_maps(images, maps=None, masks=None, scores=None, titles: Sequence[str] | None = None,
                      ncols: int = 6, alpha: float = 0.5, vmin: float | None = None,
                      vmax: float | None = None, shared_scale: bool = True,
                      label: str = "anomaly score") -> Figure:
    """Images [N, ...] with anomaly heat-maps [N, h, w] on top and the ground truth outlined in green.

    Every argument but `images` is optional: without `maps` the images are shown with only their
    `masks` [N, H, W] (0.5 contour) outlined, e.g. to show what the defects look like. Maps may
    be smaller than the images (they are stretched to fit); images, maps and masks may also be
    lists of differently sized items (e.g. the `maps` of a `Prediction` for images of several
    sizes). By default all maps share one colour scale (`vmin`..`vmax`, default: the range of all
    maps) with one colour bar labelled `label`, so a calm map on a good image looks calm;
    `shared_scale=False` scales each map to its own range, with its own colour bar. `scores` [N]
    are written under the titles (3 decimals). The figure has N axes plus the colour bar(s).
    """
    if scores is not None and titles is None and all(isinstance(t, str) for t in scores):
        scores, titles = None, scores  # the old call show_anomaly_maps(images, maps, masks, titles)
    x = _as_image_list(images)
    m = _as_map_list(maps) if maps is not None else None
    gt = _as_map_list(masks) if masks is not None else None
    score_list = None if scores is None else [float(s) for s in _numpy(scores).ravel()]
    for name, given in (("anomaly maps", m), ("masks", gt), ("scores", score_list), ("titles", titles)):
        if given is not None and len(given) != len(x):
            raise ValueError(f"Got {len(x)} images but {len(given)} {name}: pass one per image.")
    fig, axes = _grid(len(x), ncols, cell=(2.2, 2.3))
    if m is not None and shared_scale:
        vmin = min(float(mi.min()) for mi in m) if vmin is None else vmin
        vmax = max(float(mi.max()) for mi in m) if vmax is None else vmax
    for i, ax in enumerate(axes):
        _imshow(ax, x[i])
        height, width = x[i].shape[:2]
        if m is not None:
            low, high = (vmin, vmax) if shared_scale else (float(m[i].min()), float(m[i].max()))
            heat = ax.imshow(m[i], cmap="jet", alpha=alpha, vmin=low, vmax=high, interpolation="bilinear",
                             extent=(-0.5, width - 0.5, height - 0.5, -0.5))  # stretch a small map over the image
            if not shared_scale:
                fig.colorbar(heat, ax=ax, fraction=0.046, pad=0.02)
        if gt is not None and gt[i].max() > 0.5:
            cols = np.linspace(0, width - 1, gt[i].shape[1])  # mask pixel -> image pixel
            rows = np.linspace(0, height - 1, gt[i].shape[0])
            ax.contour(cols, rows, gt[i], levels=[0.5], colors="lime", linewidths=2.0)
        lines = ([str(titles[i])] if titles is not None else []) + \
                ([f"score {score_list[i]:.3f}"] if score_list is not None else [])
        if lines:
            ax.set_title("\n".join(lines), fontsize="small")
    if m is not None and shared_scale:
        fig.colorbar(heat, ax=axes, fraction=0.02, label=label)
    elif m is not None:
        fig.suptitle(f"{label} (each map on its own scale)", fontsize="small")
    return fig


def plot_roc(curves: dict[str, tuple], title: str = "ROC") -> Figure:
    """ROC curves of several methods, `{name: (labels [N], scores [N])}`, AUROC in the legend."""
    fig, axes = _figure(1, 1, (4.5, 4.2))
    ax = axes[0, 0]
    for name, (labels, scores) in curves.items():
        fpr, tpr = roc_points(labels, scores)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {image_auroc(labels, scores):.3f})")
    ax.plot([0, 1], [0, 1], color="gray", linestyle=":", label="chance (0.500)")
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title=title,
           xlim=(0, 1), ylim=(0, 1.01), aspect="equal")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# Lab 2: initialisation, loss surfaces, decision boundaries
# --------------------------------------------------------------------------------------------

def plot_layer_statistics(stats: dict[str, dict[str, Sequence[float]]], title: str = "") -> Figure:
    """Std of activations and of weight gradients per layer, one line per setting (log scale).

    `stats` maps a label (e.g. "He, sigma = 0.088") to `cu.models.layer_statistics`' result,
    `{"activation": [depth], "gradient": [depth]}`. Left panel: how big the signal is on the way
    forward; right panel: how big the gradient arriving at each layer's output is (a weight's gradient
    is this times the layer's input). A flat line keeps its size.
    """
    fig, axes = _figure(1, 2, (5.0, 3.6))
    for label, layer_stats in stats.items():
        for ax, key in zip(axes[0], ("activation", "gradient")):
            values = np.asarray(layer_stats[key], dtype=float)  # [depth]
            ax.semilogy(np.arange(1, len(values) + 1), values, marker="o", markersize=3, label=label)
    axes[0, 0].set(xlabel="layer (1 = first)", ylabel="std of the layer's output", title="forward: activations")
    axes[0, 1].set(xlabel="layer (1 = first)", ylabel="std of dLoss/d(layer output)", title="backward: gradients")
    for ax in axes[0]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3, which="major")
    axes[0, 1].legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_loss_surface(loss_grid, w_range: tuple[float, float], b_range: tuple[float, float],
                      paths: dict[str, np.ndarray] | None = None, title: str = "loss surface J(w, b)",
                      resolution: int = 120, log: bool = True) -> Figure:
    """Filled contours of a two-parameter loss J(w, b), with optimisers' paths drawn on it.

    `loss_grid(W, B)` evaluates the loss on arrays of w and b values (same shape) and returns an array of
    that shape; `paths` maps a label to positions [T, 2] (columns w, b), e.g. from
    `cu.train.optimizer_path`: a circle marks the start, a cross the end. Colour is the loss (log scale
    when `log`), with a colour bar. Parts of a path outside the ranges are clipped by the axes; a path
    that ends outside them says so, with its end point, in the legend.
    """
    w = np.linspace(*w_range, resolution)  # [R]
    b = np.linspace(*b_range, resolution)  # [R]
    W, B = np.meshgrid(w, b)  # [R, R] each
    J = np.asarray(loss_grid(W, B), dtype=float)  # [R, R]
    fig, axes = _figure(1, 1, (6.0, 4.8))
    ax = axes[0, 0]
    shown = np.log10(np.maximum(J, 1e-12)) if log else J
    filled = ax.contourf(W, B, shown, levels=30, cmap="viridis")
    ax.contour(W, B, shown, levels=15, colors="white", linewidths=0.4, alpha=0.5)
    fig.colorbar(filled, ax=ax, label="log10 J(w, b)" if log else "J(w, b)")
    for (label, path), colour in zip((paths or {}).items(), ("tab:red", "tab:orange", "magenta", "tab:cyan", "tab:pink")):
        path = np.asarray(path)  # [T, 2]
        inside = w_range[0] <= path[-1, 0] <= w_range[1] and b_range[0] <= path[-1, 1] <= b_range[1]
        where = "" if inside else f", ends off the plot at ({path[-1, 0]:.3g}, {path[-1, 1]:.3g})"
        ax.plot(path[:, 0], path[:, 1], color=colour, linewidth=1.5, marker=".", markersize=3,
                label=f"{label} ({len(path) - 1} steps{where})")
        ax.plot(*path[0], "o", color=colour, markersize=8, markeredgecolor="black")
        ax.plot(*path[-1], "X", color=colour, markersize=10, markeredgecolor="black")
    ax.set(xlabel="w", ylabel="b", title=title, xlim=w_range, ylim=b_range)
    if paths:
        ax.legend(fontsize="small", loc="lower left", framealpha=0.8)
    fig.tight_layout()
    return fig


def plot_decision_boundaries(predictors: dict, points, labels, resolution: int = 200,
                             padding: float = 0.5) -> Figure:
    """Each 2-D classifier's probability of class 1 as a coloured map, its 0.5 line, and the data.

    `predictors` maps a title to a function from points [N, 2] (NumPy) to probabilities [N] of class 1;
    `points` [N, 2] and `labels` [N] (0 or 1) are drawn on every panel. One shared colour bar
    (probability 0 to 1); the black line is where the classifier changes its decision.
    """
    points, labels = np.asarray(points, dtype=float), np.asarray(labels)
    low, high = points.min(axis=0) - padding, points.max(axis=0) + padding  # [2], [2]
    g0, g1 = np.meshgrid(np.linspace(low[0], high[0], resolution), np.linspace(low[1], high[1], resolution))
    grid = np.stack([g0.ravel(), g1.ravel()], axis=1)  # [R * R, 2]
    fig, axes = _figure(1, len(predictors), (4.6, 4.0))
    for ax, (name, predict) in zip(axes[0], predictors.items()):
        probs = np.asarray(predict(grid), dtype=float).reshape(g0.shape)  # [R, R]
        filled = ax.contourf(g0, g1, probs, levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.6)
        ax.contour(g0, g1, probs, levels=[0.5], colors="black", linewidths=2)
        ax.scatter(*points[labels == 0].T, s=22, marker="o", c="tab:blue", edgecolors="black", linewidths=0.6,
                   label="class 0")
        ax.scatter(*points[labels == 1].T, s=26, marker="^", c="tab:red", edgecolors="black", linewidths=0.6,
                   label="class 1")
        ax.set(title=name, xlabel="$x_1$", ylabel="$x_2$")
    axes[0, 0].legend(fontsize="small", loc="lower left")
    fig.tight_layout()
    fig.colorbar(filled, ax=list(axes[0]), fraction=0.03, label="probability of class 1")
    return fig


# --------------------------------------------------------------------------------------------
# Lab 4, part 2: boxes and per-layer curves
# --------------------------------------------------------------------------------------------

def show_boxes(images, true_boxes, pred_boxes=None, titles: Sequence[str] | None = None, ncols: int = 8) -> Figure:
    """Images with their true box (green, solid) and a predicted box (red, dashed).

    Boxes [N, 4] are (x0, y0, x1, y1) as fractions of the image side (`cu.data.paste_on_canvas`'s
    format). `titles` (one per image) can carry the class and the IoU.
    """
    from matplotlib.patches import Rectangle

    arrays = _as_images(images)
    fig, axes = _grid(len(arrays), ncols, (2.0, 2.0))
    for i, ax in enumerate(axes):
        _imshow(ax, arrays[i])
        h, w = arrays[i].shape[:2]
        for boxes, colour, style, label in ((true_boxes, "lime", "-", "true box"),
                                            (pred_boxes, "red", "--", "predicted box")):
            if boxes is None:
                continue
            x0, y0, x1, y1 = _numpy(boxes)[i] * np.array([w, h, w, h])
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=colour,
                                   linestyle=style, linewidth=2, label=label if i == 0 else None))
        if titles is not None:
            ax.set_title(titles[i], fontsize="small")
    fig.tight_layout()
    fig.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize="small")  # below the grid
    return fig


def plot_layer_values(curves: dict[str, Sequence[float]], ylabel: str, title: str = "",
                      log: bool = True) -> Figure:
    """One line per named curve of a value per layer (e.g. gradient norms), layer 1 on the left."""
    fig, axes = _figure(1, 1, (6.5, 3.8))
    ax = axes[0, 0]
    for name, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=name)
    if log:
        ax.set_yscale("log")
    ax.set(xlabel="layer (1 = nearest the input)", ylabel=ylabel, title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    return fig
