"""Exercise checkers: one call per exercise that says "correct", "not solved yet" or what is wrong.

A checker never raises. It runs the student's function (or looks at their value) on a few test
cases, compares with our reference answer and prints one line: a pass, or the first problem it
found (an error message, a wrong shape or dtype, the largest difference) with a hint. It returns
True or False. `solved_or_reference` lets later cells go on with the student's answer when it is
right and with the reference when it is not, so a notebook always runs top to bottom.

Layout: the core (`report`, `compare`, `check_function`, `solved_or_reference`), then one
section per lab with its reference answers and checkers. Labs append their section at the end.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Callable, Sequence

import numpy as np

from course_utils import conv

# ---------------------------------------------------------------------------------------------
# Core
# ---------------------------------------------------------------------------------------------

NOT_SOLVED = "not solved yet"


def report(ok: bool, what: str, hint: str = "") -> bool:
    """Print one line, `✅ what` or `❌ what` (plus `hint` on a second line), and return `ok`."""
    print(f"✅ {what}" if ok else f"❌ {what}")
    if hint and not ok:
        print(f"   hint: {hint}")
    return bool(ok)


def _as_array(value: Any) -> np.ndarray:
    """NumPy view of a number, list, NumPy array or torch tensor (detached, on the CPU)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _describe(value: Any) -> str:
    """A short description of an argument: its shape for arrays, its value for small things."""
    if hasattr(value, "shape") and getattr(value, "ndim", 0) > 0:
        return f"array {tuple(value.shape)}"
    return repr(value) if len(repr(value)) < 40 else type(value).__name__


def problem(answer: Any, expected: Any, atol: float = 1e-6) -> str | None:
    """What is wrong with `answer` compared with `expected`, in words, or None when it matches.

    Handles numbers, arrays, tensors and tuples of those (e.g. several gradients). Checks, in
    order: not solved (None), tuple length, shape, finiteness, values (within `atol`, relative
    1e-5; exact when `atol` is 0), and reports the first difference with its position.
    """
    if answer is None:
        return f"{NOT_SOLVED} (the answer is None)"
    if isinstance(expected, tuple):
        if not isinstance(answer, (tuple, list)) or len(answer) != len(expected):
            return f"expected a tuple of {len(expected)} results, got {_describe(answer)}"
        for k, (a, e) in enumerate(zip(answer, expected)):
            found = problem(a, e, atol)
            if found:
                return f"result {k}: {found}"
        return None
    try:
        answer, expected = _as_array(answer).astype(np.float64), _as_array(expected).astype(np.float64)
    except (TypeError, ValueError):
        return f"expected numbers, got {type(answer).__name__}"
    if answer.shape != expected.shape:
        return f"shape {answer.shape}, expected {expected.shape}"
    if not np.all(np.isfinite(answer)):
        return "the answer contains NaN or inf"
    close = np.array_equal(answer, expected) if atol == 0 else np.allclose(answer, expected, atol=atol, rtol=1e-5)
    if not close:
        diff = np.abs(answer - expected)
        where = np.unravel_index(np.argmax(diff), diff.shape) if diff.ndim else ()
        at = f" at index {tuple(int(i) for i in where)}" if where else ""
        return (f"values differ{at}: got {answer[where]:.6g}, expected {expected[where]:.6g} "
                f"(max abs difference {diff.max():.3g})")
    return None


def compare(answer: Any, expected: Any, name: str, hint: str = "", atol: float = 1e-6) -> bool:
    """Check a value against the expected one and report: pass, not solved, or what differs."""
    found = problem(answer, expected, atol)
    return report(found is None, f"{name}: correct" if found is None else f"{name}: {found}", hint)


def _call(fn: Callable, args: Sequence[Any]) -> tuple[Any, str | None]:
    """Call `fn(*args)`; return (result, None), or (None, 'TypeError: ...') if it raised."""
    try:
        return fn(*args), None
    except Exception as error:  # noqa: BLE001 - a checker must never crash the notebook
        return None, f"it raised {type(error).__name__}: {error}"


def check_function(fn: Any, cases: Sequence[tuple[tuple, Any]], name: str, hint: str = "",
                   atol: float = 1e-6) -> bool:
    """Run `fn` on each `(args, expected)` case; report the first problem, or a pass for all.

    `fn` that is None, not callable, or returns None counts as "not solved yet". The inputs of a
    failing case are described by their shapes, so the student can reproduce it.
    """
    if not callable(fn):
        return report(False, f"{name}: {NOT_SOLVED}", hint)
    for args, expected in cases:
        answer, error = _call(fn, [a.copy() if isinstance(a, np.ndarray) else a for a in args])
        found = error or problem(answer, expected, atol)
        if found and found.startswith(NOT_SOLVED):
            return report(False, f"{name}: {NOT_SOLVED} (it returns None)", hint)
        if found:
            inputs = ", ".join(_describe(a) for a in args)
            return report(False, f"{name}: {found} (inputs: {inputs})", hint)
    return report(True, f"{name}: correct on {len(cases)} test cases")


def solved_or_reference(value_or_fn: Any, reference: Any, name: str,
                        check: Callable[[Any], bool] | None = None) -> Any:
    """Return the student's answer if it checks out, else `reference`, and say which one is used.

    With `check` (an exercise's checker) the answer is checked quietly by it; without, a value is
    compared with `reference` and a function is accepted only when `check` is given. This lets
    the cells after an exercise run even when the exercise is not solved yet.
    """
    if value_or_fn is not None:
        with contextlib.redirect_stdout(io.StringIO()):
            if check is not None:
                ok = check(value_or_fn)
            else:
                ok = not callable(value_or_fn) and problem(value_or_fn, reference) is None
        if ok:
            print(f"using your {name}")
            return value_or_fn
    print(f"using the reference {name} (yours does not pass its check yet)")
    return reference


def _rng(seed: int = 0) -> np.random.Generator:
    """The random generator every checker draws its test inputs from (fixed seeds)."""
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------------------------
# Lab 1: how a computer sees numbers
# ---------------------------------------------------------------------------------------------

def reference_standardize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 image [H, W, C] -> float32 [H, W, C]: scale to [0, 1], subtract `mean`, divide by `std` per channel."""
    scaled = image.astype(np.float32) / 255.0  # [H, W, C] in [0, 1]
    return (scaled - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)  # [H, W, C]


def check_standardize(fn: Any) -> bool:
    """Exercise (lab 1): `standardize(image uint8 [H,W,C], mean, std) -> float32 [H,W,C]`."""
    hint = "divide by 255.0 first (as float32), then (x - mean) / std; mean and std broadcast over the last axis"
    if callable(fn):
        answer, _ = _call(fn, [np.full((2, 2, 3), 255, np.uint8), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)])
        if answer is not None and _as_array(answer).dtype != np.float32:
            return report(False, f"standardize: dtype {_as_array(answer).dtype}, expected float32", hint)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    images = [_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8), _rng(1).integers(0, 256, (7, 3, 3), dtype=np.uint8)]
    cases = [((im, mean, std), reference_standardize(im, mean, std)) for im in images]
    return check_function(fn, cases, "standardize", hint, atol=1e-5)


def reference_dense_params(height: int, width: int, channels: int, neurons: int) -> int:
    """Parameters of a dense layer from a flattened height x width x channels image to `neurons` units."""
    return neurons * (height * width * channels + 1)


def check_dense_params(fn: Any) -> bool:
    """Exercise (lab 1): `dense_params(height, width, channels, neurons) -> int` (weights + biases)."""
    cases = [((h, w, c, n), reference_dense_params(h, w, c, n))
             for h, w, c, n in [(150, 100, 3, 100), (32, 32, 3, 10), (8, 8, 1, 1), (224, 224, 3, 1000)]]
    return check_function(fn, cases, "dense_params", "every neuron has one weight per input value, plus one bias", atol=0)


def reference_pairwise_sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between rows: a [N, D], b [M, D] -> [N, M], by broadcasting."""
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=-1)  # [N, M, D] -> [N, M]


def check_pairwise_sq_distances(fn: Any) -> bool:
    """Exercise (lab 1): `pairwise_sq_distances(a [N,D], b [M,D]) -> [N,M]` without Python loops."""
    pairs = [(_rng(0).normal(size=(4, 3)), _rng(1).normal(size=(6, 3))), (_rng(2).normal(size=(1, 5)), _rng(3).normal(size=(2, 5)))]
    cases = [((a, b), reference_pairwise_sq_distances(a, b)) for a, b in pairs]
    return check_function(fn, cases, "pairwise_sq_distances",
                          "a[:, None, :] is [N, 1, D] and b[None, :, :] is [1, M, D]; their difference broadcasts to [N, M, D]")


# ---------------------------------------------------------------------------------------------
# Lab 2: forward and backward propagation
# ---------------------------------------------------------------------------------------------

def reference_neuron_gradient(x: float, y: float, w: float, b: float) -> tuple[float, float]:
    """(dJ/dw, dJ/db) for the neuron y_hat = w * x + b with loss J = (y - y_hat) ** 2."""
    dj_dyhat = -2 * (y - (w * x + b))
    return dj_dyhat * x, dj_dyhat


def check_neuron_gradient(fn: Any) -> bool:
    """Exercise (lab 2): `neuron_gradient(x, y, w, b) -> (dJ_dw, dJ_db)`; the slides' case gives (-8, -4)."""
    cases = [((x, y, w, b), reference_neuron_gradient(x, y, w, b))
             for x, y, w, b in [(2.0, 7.0, 1.0, 3.0), (-1.5, 0.5, 2.0, -1.0), (3.0, 1.0, 0.0, 0.0)]]
    return check_function(fn, cases, "neuron_gradient", "chain rule: dJ/dw = dJ/dy_hat * dy_hat/dw, with dJ/dy_hat = -2 (y - y_hat)")


def reference_relu_backward(x: np.ndarray, grad_out: np.ndarray) -> np.ndarray:
    """Gradient of ReLU: pass `grad_out` where x > 0, else 0 (same shape as x)."""
    return grad_out * (x > 0)


def check_relu_backward(fn: Any) -> bool:
    """Exercise (lab 2): `relu_backward(x, grad_out) -> grad_in`, same shape as x."""
    xs = [_rng(0).normal(size=(5, 4)), np.array([-2.0, -0.0, 0.0, 1e-9, 3.0])]
    cases = [((x, g), reference_relu_backward(x, g)) for x, g in [(xs[0], _rng(1).normal(size=(5, 4))), (xs[1], np.ones(5))]]
    return check_function(fn, cases, "relu_backward", "ReLU's slope is 1 where x > 0 and 0 elsewhere (also at exactly 0)")


def reference_softmax_cross_entropy_grad(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Gradient of the mean cross-entropy w.r.t. logits [N, K]: (softmax(logits) - one_hot(labels)) / N."""
    shifted = logits - logits.max(axis=1, keepdims=True)  # [N, K], for numerical safety
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)  # [N, K]
    probs[np.arange(len(labels)), labels] -= 1.0
    return probs / len(labels)  # [N, K]


def check_softmax_cross_entropy_grad(fn: Any) -> bool:
    """Exercise (lab 2): `softmax_cross_entropy_grad(logits [N,K], labels [N]) -> [N,K]` (mean loss)."""
    inputs = [(_rng(0).normal(size=(6, 4)), _rng(1).integers(0, 4, 6)), (np.array([[1000.0, 0.0, -1000.0]]), np.array([2]))]
    cases = [((z, y), reference_softmax_cross_entropy_grad(z, y)) for z, y in inputs]
    return check_function(fn, cases, "softmax_cross_entropy_grad",
                          "softmax minus one-hot, divided by N; subtract the row max before exp to avoid overflow")


def reference_dense_backward(x: np.ndarray, w: np.ndarray, grad_out: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward pass of y = x @ w + b: x [N, D], w [D, H], grad_out [N, H] -> (grad_x [N, D], grad_w [D, H], grad_b [H])."""
    return grad_out @ w.T, x.T @ grad_out, grad_out.sum(axis=0)


def check_dense_backward(fn: Any) -> bool:
    """Exercise (lab 2): `dense_backward(x, w, grad_out) -> (grad_x, grad_w, grad_b)`."""
    shapes = [(5, 3, 4), (1, 6, 2)]
    cases = []
    for seed, (n, d, h) in enumerate(shapes):
        x, w, g = _rng(seed).normal(size=(n, d)), _rng(seed + 10).normal(size=(d, h)), _rng(seed + 20).normal(size=(n, h))
        cases.append(((x, w, g), reference_dense_backward(x, w, g)))
    return check_function(fn, cases, "dense_backward",
                          "match the shapes: grad_x [N,D] = grad_out [N,H] @ w.T [H,D]; grad_w [D,H] = x.T @ grad_out; grad_b sums over the batch")


# ---------------------------------------------------------------------------------------------
# Lab 3: convolution by hand
# ---------------------------------------------------------------------------------------------

_SLIDE_IMAGE = np.array([[1, 3, 1, 2], [6, 1, 5, 4], [5, 4, 2, 5], [3, 3, 1, 2]], dtype=np.float64)


def check_output_size(fn: Any) -> bool:
    """Exercise (lab 3): `output_size(n, f, padding, stride) -> int`, the slides' formula."""
    params = [(4, 2, 0, 1), (4, 2, 1, 1), (4, 2, 1, 2), (7, 3, 0, 2), (6, 3, 0, 1), (32, 5, 2, 1), (224, 7, 3, 2), (10, 3, 0, 3)]
    cases = [(p, conv.output_size(*p)) for p in params]
    return check_function(fn, cases, "output_size", "floor((n + 2p - f) / s) + 1; Python's // floors", atol=0)


def check_conv2d(fn: Any) -> bool:
    """Exercise (lab 3): `my_conv2d(image [H,W], kernel [kh,kw]) -> [H-kh+1, W-kw+1]` (no padding, stride 1)."""
    edge_image = np.tile([10.0, 10, 10, 0, 0, 0], (5, 1))  # [5, 6]
    pairs = [(edge_image, conv.KERNELS["vertical edge"]), (_SLIDE_IMAGE, np.array([[1.0, 2], [2, 1]])),
             (_rng(0).normal(size=(7, 9)), _rng(1).normal(size=(3, 2)))]
    cases = [((im, k), conv.conv2d(im, k)) for im, k in pairs]
    return check_function(fn, cases, "my_conv2d",
                          "output[i, j] = sum(image[i:i+kh, j:j+kw] * kernel); the output is (H-kh+1) x (W-kw+1)")


def check_max_pool2d(fn: Any) -> bool:
    """Exercise (lab 3): `my_max_pool2d(image [H,W], size, stride) -> [H', W']`."""
    params = [(_SLIDE_IMAGE, 2, 1), (_SLIDE_IMAGE, 2, 2), (_rng(0).normal(size=(7, 8)), 3, 2)]
    cases = [(p, conv.max_pool2d(*p)) for p in params]
    return check_function(fn, cases, "my_max_pool2d",
                          "window (i, j) starts at row i*stride, column j*stride; H' = (H - size) // stride + 1")


def check_horizontal_edge_kernel(kernel: Any) -> bool:
    """Exercise (lab 3): a 3x3 kernel that fires on horizontal edges, and is 0 on flat areas and vertical edges."""
    name, hint = "horizontal edge kernel", "rotate the slides' vertical edge kernel by 90 degrees: positive row on top, negative row at the bottom"
    if kernel is None:
        return report(False, f"{name}: {NOT_SOLVED}", hint)
    try:
        kernel = _as_array(kernel).astype(np.float64)
    except (TypeError, ValueError):
        return report(False, f"{name}: expected a 3x3 array of numbers, got {_describe(kernel)}", hint)
    if kernel.shape != (3, 3):
        return report(False, f"{name}: shape {kernel.shape}, expected (3, 3)", hint)
    horizontal = np.repeat([[10.0], [10], [10], [0], [0], [0]], 5, axis=1)  # [6, 5]: bright top, dark bottom
    flat_zero = np.allclose(conv.conv2d(np.ones((4, 4)), kernel), 0)
    blind_to_vertical = np.allclose(conv.conv2d(horizontal.T, kernel), 0)
    response = conv.conv2d(horizontal, kernel)[:, 0]  # one column of the [4, 3] output
    fires = bool(np.any(np.abs(response) > 1e-9))
    if not flat_zero:
        return report(False, f"{name}: it responds to a flat image; its values should add up to 0", hint)
    if not blind_to_vertical:
        return report(False, f"{name}: it responds to vertical edges too", hint)
    return report(fires, f"{name}: correct" if fires else f"{name}: no response at the edge (got {response})", hint)


# ---------------------------------------------------------------------------------------------
# Lab 4: CNN classification on CIFAR-10
# ---------------------------------------------------------------------------------------------

def reference_train_step(net: Any, inputs: Any, labels: Any, optimizer: Any, criterion: Callable) -> float:
    """The slides' five steps on one batch: zero_grad, forward, loss, backward, step; returns the loss as a float."""
    optimizer.zero_grad()
    loss = criterion(net(inputs), labels)  # [] mean over the batch
    loss.backward()
    optimizer.step()
    return loss.item()


def check_train_step(fn: Any) -> bool:
    """Exercise (lab 4): `train_step(net, inputs, labels, optimizer, criterion) -> float` (the batch's loss)."""
    import copy

    import torch

    name, hint = "train_step", "optimizer.zero_grad(); loss = criterion(net(inputs), labels); loss.backward(); optimizer.step(); return loss.item()"
    if not callable(fn):
        return report(False, f"{name}: {NOT_SOLVED}", hint)
    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))]
    nets.append(copy.deepcopy(nets[0]))
    inputs, labels = torch.randn(5, 3, 2, 2), torch.tensor([0, 1, 2, 1, 0])
    for p in nets[0].parameters():  # stale gradients that a missing zero_grad would add in
        p.grad = torch.ones_like(p)
    results = []
    for net, step in zip(nets, (fn, reference_train_step)):
        optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
        value, error = _call(step, [net, inputs, labels, optimizer, torch.nn.CrossEntropyLoss()])
        if error:
            return report(False, f"{name}: {error}", hint)
        results.append(value)
    if results[0] is None:
        return report(False, f"{name}: {NOT_SOLVED} (it returned None)", hint)
    found = problem(float(results[0]) if not hasattr(results[0], "shape") else results[0], results[1], atol=1e-5)
    if found:
        return report(False, f"{name}: the returned loss: {found}", hint)
    found = problem(torch.cat([p.detach().flatten() for p in nets[0].parameters()]),
                    torch.cat([p.detach().flatten() for p in nets[1].parameters()]), atol=1e-5)
    if found:
        return report(False, f"{name}: the weights after the step are wrong ({found}); did you zero the old gradients and call optimizer.step()?", hint)
    return report(True, f"{name}: correct (loss and updated weights match)")


def reference_smooth_labels(labels: Any, n_classes: int, eps: float) -> Any:
    """Label smoothing: int labels [N] -> soft targets [N, K] = (1 - eps) * one_hot + eps / K."""
    import torch

    one_hot = torch.nn.functional.one_hot(labels, n_classes).float()  # [N, K]
    return (1 - eps) * one_hot + eps / n_classes  # [N, K]


def check_smooth_labels(fn: Any) -> bool:
    """Exercise (lab 4): `smooth_labels(labels [N], n_classes, eps) -> [N, n_classes]`, rows sum to 1."""
    import torch

    cases = [((labels, k, eps), reference_smooth_labels(labels, k, eps))
             for labels, k, eps in [(torch.tensor([0, 2, 1]), 3, 0.1), (torch.tensor([9, 0]), 10, 0.2), (torch.tensor([1]), 2, 0.0)]]
    return check_function(fn, cases, "smooth_labels",
                          "one_hot(labels, K) * (1 - eps) + eps / K: the true class keeps 1 - eps + eps/K, every class gets eps/K")


def reference_flip_tta(model: Callable, images: Any) -> Any:
    """Flip test-time augmentation: mean of model(images) and model(images flipped left-right), [B, K]."""
    return (model(images) + model(images.flip(-1))) / 2  # [B, K]


def check_flip_tta(fn: Any) -> bool:
    """Exercise (lab 4): `tta_logits(model, images [B,C,H,W]) -> [B,K]`, the mean over the image and its mirror."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 5, 6)).requires_grad_(False)
    cases = [((model, x), reference_flip_tta(model, x)) for x in (torch.randn(2, 3, 4, 5), torch.randn(7, 3, 4, 5))]
    return check_function(fn, cases, "tta_logits",
                          "a left-right mirror flips the last (width) axis: images.flip(-1); average the two logits")


# ---------------------------------------------------------------------------------------------
# Labs 5-6: autoencoders and feature losses
# ---------------------------------------------------------------------------------------------

def _lab56_tensors(seed: int, *shapes: tuple[int, ...]) -> list:
    """Random float32 torch tensors in [0, 1) of the given shapes, from a fixed seed."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return [torch.rand(*shape, generator=g) for shape in shapes]


def reference_pca_reconstruct(x: Any, mean: Any, components: Any) -> Any:
    """Project rows x [N, D] onto the k principal `components` [k, D] around `mean` [D]; back to [N, D]."""
    codes = (x - mean) @ components.T  # [N, k]
    return mean + codes @ components  # [N, D]


def check_pca_reconstruct(fn: Any) -> bool:
    """Exercise (lab 5): `pca_reconstruct(x [N, D], mean [D], components [k, D]) -> [N, D]`."""
    import torch

    cases = []
    for seed, (n, d, k) in enumerate([(5, 6, 2), (12, 20, 5)]):
        x, mean, a = _lab56_tensors(seed, (n, d), (d,), (d, d))
        components = torch.linalg.qr(a)[0].T[:k]  # [k, D], orthonormal rows
        cases.append(((x, mean, components), reference_pca_reconstruct(x, mean, components)))
    return check_function(fn, cases, "pca_reconstruct",
                          "centre (x - mean), project (@ components.T gives the codes [N, k]), "
                          "map back (@ components) and add the mean again", atol=1e-5)


def reference_topk_score(maps: Any, fraction: float) -> Any:
    """Mean of the highest `fraction` of the pixels of each map [N, H, W] -> [N] (at least one pixel)."""
    from course_utils.anomaly import image_scores

    return image_scores(maps, "topk", top_k=fraction)  # [N]


def check_topk_score(fn: Any) -> bool:
    """Exercise (lab 5): `topk_score(maps [N, H, W], fraction) -> [N]`."""
    cases = [((m, f), reference_topk_score(m, f)) for m, f in
             [(_lab56_tensors(0, (4, 10, 10))[0], 0.05), (_lab56_tensors(1, (3, 16, 16))[0], 0.001),
              (_lab56_tensors(2, (2, 8, 8))[0], 1.0)]]
    return check_function(fn, cases, "topk_score",
                          "flatten each map to [N, H*W]; k = max(1, round(fraction * H*W)); "
                          "tensor.topk(k, dim=1).values.mean(dim=1)", atol=1e-5)


def reference_count_mistakes(labels: Any, scores: Any, threshold: float) -> tuple[int, int]:
    """(false alarms, missed defects) when images with `score >= threshold` are flagged; labels 1 = defective."""
    from course_utils.metrics import anomaly_confusion

    (_, false_alarms), (missed, _) = anomaly_confusion(labels, scores, threshold)  # [[tn, fp], [fn, tp]]
    return int(false_alarms), int(missed)


def check_count_mistakes(fn: Any) -> bool:
    """Exercise (lab 5): `count_mistakes(labels [N], scores [N], threshold) -> (false_alarms, missed)`."""
    import torch

    labels = torch.tensor([0, 0, 0, 1, 1, 1, 0, 1])
    scores = torch.tensor([0.1, 0.5, 0.3, 0.2, 0.9, 0.5, 0.05, 0.7])
    cases = [((labels, scores, t), reference_count_mistakes(labels, scores, t)) for t in (0.0, 0.3, 0.5, 1.0)]
    return check_function(fn, cases, "count_mistakes",
                          "flagged = scores >= threshold; a false alarm is flagged and good (label 0), "
                          "a miss is not flagged and defective (label 1); return two ints", atol=0)


def reference_gram_matrix(features: Any) -> Any:
    """Gram matrices [B, C, C] of feature maps [B, C, h, w], averaged over the h*w positions."""
    from course_utils.losses import gram_matrix

    return gram_matrix(features)  # [B, C, C]


def check_gram_matrix(fn: Any) -> bool:
    """Exercise (lab 6): `gram_matrix(features [B, C, h, w]) -> [B, C, C]`."""
    cases = [((f,), reference_gram_matrix(f)) for f in
             (_lab56_tensors(0, (1, 3, 4, 4))[0], _lab56_tensors(1, (2, 8, 5, 7))[0])]
    return check_function(fn, cases, "gram_matrix",
                          "flatten to [B, C, h*w], multiply by its transpose (batched @), divide by h*w",
                          atol=1e-5)


def reference_feature_error(features: Any, recons: Any) -> Any:
    """Per-position squared feature error, averaged over channels: [N, C, h, w] x 2 -> [N, h, w]."""
    from course_utils.anomaly import feature_error_map

    return feature_error_map(features, recons)  # [N, h, w]


def check_feature_error(fn: Any) -> bool:
    """Exercise (lab 6): `feature_error(features [N, C, h, w], recons [N, C, h, w]) -> [N, h, w]`."""
    cases = [(tuple(args), reference_feature_error(*args)) for args in
             (_lab56_tensors(0, (2, 5, 3, 3), (2, 5, 3, 3)), _lab56_tensors(1, (4, 16, 6, 8), (4, 16, 6, 8)))]
    return check_function(fn, cases, "feature_error",
                          "square the difference and average over the channel dimension (dim=1)", atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Lab 7: state-of-the-art detectors (PatchCore, PaDiM)
# ---------------------------------------------------------------------------------------------

def _torch_cases(seed: int, *shapes: tuple[int, ...]) -> list:
    """Random float32 torch tensors of the given shapes (torch is imported only by lab 7's checkers)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for shape in shapes]


def reference_patch_scores(test_patches: Any, bank: Any) -> Any:
    """Distance [P] from each test patch [P, D] to its nearest memory-bank entry [M, D]."""
    from course_utils.anomaly import nearest_neighbours

    distances, _ = nearest_neighbours(test_patches, bank, k=1)  # [P, 1]
    return distances[:, 0]  # [P]


def check_patch_scores(fn: Any) -> bool:
    """Exercise (lab 7): `patch_scores(test_patches [P, D], bank [M, D]) -> [P]` nearest-neighbour distances."""
    cases = [(tuple(_torch_cases(s, (p, d), (m, d))), None) for s, (p, m, d) in enumerate([(5, 7, 3), (40, 12, 16), (1, 3, 2)])]
    cases = [(args, reference_patch_scores(*args)) for args, _ in cases]
    return check_function(fn, cases, "patch_scores",
                          "torch.cdist(test_patches, bank) is [P, M]; take the minimum over the bank (dim=1), "
                          "Euclidean distance, not squared", atol=1e-4)


def reference_farthest_points(points: Any, n: int, first: int = 0) -> Any:
    """Greedy k-center: indices [n] starting at `first`, each next point the farthest from those chosen."""
    import torch

    chosen = [first]
    nearest = torch.cdist(points, points[first:first + 1])[:, 0]  # [N] distance to the chosen set
    for _ in range(n - 1):
        chosen.append(int(nearest.argmax()))
        nearest = torch.minimum(nearest, torch.cdist(points, points[chosen[-1]:chosen[-1] + 1])[:, 0])
    return torch.tensor(chosen)


def check_farthest_points(fn: Any) -> bool:
    """Exercise (lab 7): `farthest_points(points [N, D], n, first=0) -> indices [n]` (k-center greedy)."""
    cases = [((pts, n, first), reference_farthest_points(pts, n, first))
             for pts, n, first in [(_torch_cases(0, (50, 2))[0], 6, 0), (_torch_cases(1, (200, 8))[0], 20, 7)]]
    return check_function(fn, cases, "farthest_points",
                          "keep a vector of each point's distance to its nearest chosen point; add the argmax; "
                          "update the vector with torch.minimum", atol=0)


def reference_mahalanobis(x: Any, mean: Any, cov: Any) -> Any:
    """Mahalanobis distances [N] of rows x [N, C] to a Gaussian with mean [C] and covariance [C, C]."""
    import torch

    from course_utils.anomaly import mahalanobis_maps

    features = x[:, :, None, None]  # [N, C, 1, 1]: one patch position per image
    return mahalanobis_maps(features, mean[None], torch.linalg.inv(cov)[None]).flatten()  # [N]


def check_mahalanobis(fn: Any) -> bool:
    """Exercise (lab 7): `mahalanobis(x [N, C], mean [C], cov [C, C]) -> [N]`."""
    import torch

    cases = []
    for seed, (n, c) in enumerate([(6, 3), (20, 10)]):
        x, mean, a = _torch_cases(seed, (n, c), (c,), (c, c))
        cov = a @ a.T + 0.5 * torch.eye(c)  # [C, C], symmetric positive definite
        cases.append(((x, mean, cov), reference_mahalanobis(x, mean, cov)))
    return check_function(fn, cases, "mahalanobis",
                          "delta = x - mean; the squared distance is delta^T cov^-1 delta per row "
                          "(torch.linalg.inv, then a row-wise sum); take the square root", atol=1e-3)
