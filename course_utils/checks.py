"""Exercise checkers: one call per exercise that says "correct", "not solved yet" or what is wrong.

In class a checker never raises (in grading mode, `COURSE_GRADING=1`, a failed check raises
`NotSolvedError` so that nbgrader gives the cell no points). It runs the student's function (or looks at
their value) on a few test
cases, compares with our reference answer and prints one line: a pass, or the first problem it
found (an error message, a wrong shape or dtype, which values differ and for which inputs, or a
known mistake recognised by name) with a conceptual hint. It returns True or False.

The full answer is given only on request: `solution("conv2d")` prints our reference answer.
From the second failure of the same exercise on, a checker says that `solution` exists; it
never shows the answer itself. `solved_or_reference` lets later cells go on with the student's
answer when it is right and with the reference when it is not, so a notebook always runs top to
bottom.

Layout: the core (`report`, `problem`, `compare`, `check_function`, `exercise`, `solution`,
`solved_or_reference`), then one section per lab with its reference answers and checkers. Labs
append their section at the end; a checker is registered with its reference answer by the
`@exercise("name", reference)` decorator (or in `_register` at the end of the file).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
from typing import Any, Callable, Sequence

import numpy as np

from course_utils import conv, device

# ---------------------------------------------------------------------------------------------
# Core
# ---------------------------------------------------------------------------------------------

NOT_SOLVED = "not solved yet"

SOLUTIONS: dict[str, Any] = {}
"""Exercise name -> our reference answer (a function or a value), printed by `solution(name)`."""

_failures: dict[str, int] = {}  # exercise name -> failed checks so far in this session
_running: list[str] = []  # the exercise whose checker is running (innermost last)
_quiet: list[bool] = []  # non-empty while `solved_or_reference` checks silently (nothing is counted)


class NotSolvedError(AssertionError):
    """A checker's failure in grading mode (`COURSE_GRADING=1`): the autograder gives the cell 0 points."""


def _graded() -> bool:
    """True in grading mode, except inside `solved_or_reference`'s quiet check."""
    return device.grading() and not _quiet


def report(ok: bool, what: str, hint: str = "") -> bool:
    """Print one line, `✅ what` or `❌ what` (plus `hint` on a second line), and return `ok`.

    Every checker's verdict goes through here. Inside a registered checker it also counts the
    failures of that exercise; from the second one on it adds where the full answer is (on request).
    In grading mode (`COURSE_GRADING=1`, set by `make grade`) a failure also raises
    `NotSolvedError`, so nbgrader awards the check cell's points only when the check passes.
    """
    print(f"✅ {what}" if ok else f"❌ {what}")
    if hint and not ok:
        print(f"   hint: {hint}")
    if _running and not _quiet:
        name = _running[-1]
        _failures[name] = 0 if ok else _failures.get(name, 0) + 1
        if _failures[name] >= 2:
            print(f"   still stuck? `cu.checks.solution({name!r})` prints our answer")
    if not ok and _graded():
        raise NotSolvedError(what)
    return bool(ok)


def exercise(name: str, reference: Any) -> Callable[[Callable[[Any], bool]], Callable[[Any], bool]]:
    """Decorator: register a checker under exercise `name` with its `reference` answer.

    The wrapped checker behaves as before; while it runs, `report` knows which exercise it is
    checking (to count failures), and `solution(name)` can print `reference`.
    """
    def register(checker: Callable[[Any], bool]) -> Callable[[Any], bool]:
        SOLUTIONS[name] = reference

        @functools.wraps(checker)
        def run(answer: Any) -> bool:
            _running.append(name)
            try:
                return checker(answer)
            finally:
                _running.pop()
        return run
    return register


def solution(name: str) -> None:
    """Print our answer to exercise `name` (its source code, or its value): only when you ask.

    Try the exercise first: the checker's messages say what is wrong and give a hint. The names
    are the exercises' function names without `my_`, e.g. `solution("conv2d")`.
    """
    if name not in SOLUTIONS:
        print(f"no exercise called {name!r}; the exercises are: {', '.join(sorted(SOLUTIONS))}")
        return
    answer = SOLUTIONS[name]
    if callable(answer):
        print(inspect.getsource(answer))
    else:
        print(f"{name} =\n{_as_array(answer)!r}")


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
    1e-5; exact when `atol` is 0), and reports the first difference with its position and how
    many values differ.
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
    close = np.isclose(answer, expected, atol=atol, rtol=1e-5) if atol else answer == expected
    if not np.all(close):
        diff = np.abs(answer - expected)
        where = np.unravel_index(np.argmax(diff), diff.shape) if diff.ndim else ()
        at = f" at index {tuple(int(i) for i in where)}" if where else ""
        count = f"{int((~close).sum())} of {close.size} values differ; " if close.size > 1 else ""
        return (f"{count}the largest difference is{at}: got {answer[where]:.6g}, expected {expected[where]:.6g}")
    return None


def compare(answer: Any, expected: Any, name: str, hint: str = "", atol: float = 1e-6) -> bool:
    """Check a value against the expected one and report: pass, not solved, or what differs."""
    found = problem(answer, expected, atol)
    return report(found is None, f"{name}: correct" if found is None else f"{name}: {found}", hint)


def _call(fn: Callable, args: Sequence[Any]) -> tuple[Any, str | None]:
    """Call `fn(*args)`; return (result, None), or (None, 'TypeError: ...') if it raised."""
    try:
        return fn(*args), None
    except Exception as error:
        return None, f"it raised {type(error).__name__}: {error}"


def _copies(args: Sequence[Any]) -> list:
    """The arguments with NumPy arrays copied, so that an answer that edits its input harms nothing."""
    return [a.copy() if isinstance(a, np.ndarray) else a for a in args]


def check_function(fn: Any, cases: Sequence[tuple[tuple, Any]], name: str, hint: str = "",
                   atol: float = 1e-6, mistakes: dict[str, Callable] | None = None) -> bool:
    """Run `fn` on each `(args, expected)` case; report the first problem, or a pass for all.

    `fn` that is None, not callable, or returns None counts as "not solved yet". The inputs of a
    failing case are described by their shapes, so the student can reproduce it. `mistakes` maps
    a description of a typical mistake ("the kernel is flipped") to a function that makes it: an
    answer that matches one is told which mistake it made.
    """
    if not callable(fn):
        return report(False, f"{name}: {NOT_SOLVED}", hint)
    for args, expected in cases:
        answer, error = _call(fn, _copies(args))
        found = error or problem(answer, expected, atol)
        if found and found.startswith(NOT_SOLVED):
            return report(False, f"{name}: {NOT_SOLVED} (it returns None)", hint)
        if found:
            inputs = ", ".join(_describe(a) for a in args)
            known = [what for what, wrong in (mistakes or {}).items()
                     if answer is not None and problem(answer, _call(wrong, _copies(args))[0], atol) is None]
            found = f"{known[0]} ({found})" if known else found
            return report(False, f"{name}: {found} (inputs: {inputs})", hint)
    return report(True, f"{name}: correct on {len(cases)} test cases")


def _code_names(code: Any) -> set[str]:
    """Every global and attribute name a function's code uses, nested functions and lambdas included."""
    names = set(code.co_names)
    for const in code.co_consts:
        if inspect.iscode(const):
            names |= _code_names(const)
    return names


def borrowed(fn: Any, names: Sequence[str]) -> str | None:
    """The course function an answer hands the work to (`fn` is one of `names`, or calls one), else None.

    An exercise asks the student to write the computation; an answer that is, or calls, the course's
    own version (e.g. `output_size` or `cu.conv.output_size`) would pass every test case without it.
    """
    own = getattr(fn, "__name__", "")
    if own in names and getattr(fn, "__module__", "").startswith("course_utils"):
        return own
    code = getattr(fn, "__code__", None)
    used = _code_names(code) & set(names) if code is not None else set()
    return sorted(used)[0] if used else None


def _check_own_work(fn: Any, cases: Sequence[tuple[tuple, Any]], name: str, hint: str = "", atol: float = 1e-6,
                   mistakes: dict[str, Callable] | None = None, course_versions: Sequence[str] = ()) -> bool:
    """`check_function`, after refusing an answer that is, or calls, one of the course's `course_versions`."""
    used = borrowed(fn, course_versions) if callable(fn) else None
    if used:
        return report(False, f"{name}: it uses the course's own `{used}`; write the computation yourself", hint)
    return check_function(fn, cases, name, hint, atol=atol, mistakes=mistakes)


def solved_or_reference(value_or_fn: Any, reference: Any, name: str,
                        check: Callable[[Any], bool] | None = None) -> Any:
    """Return the student's answer if it checks out, else `reference`, and say which one is used.

    With `check` (an exercise's checker) the answer is checked quietly by it (this check counts
    as no attempt); without, a value is compared with `reference` and a function is accepted only
    when `check` is given. This lets the cells after an exercise run even when the exercise is
    not solved yet.
    """
    if value_or_fn is not None:
        _quiet.append(True)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                if check is not None:
                    ok = check(value_or_fn)
                else:
                    ok = not callable(value_or_fn) and problem(value_or_fn, reference) is None
        finally:
            _quiet.pop()
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


@exercise("standardize", reference_standardize)
def check_standardize(fn: Any) -> bool:
    """Exercise (lab 1): `standardize(image uint8 [H,W,C], mean, std) -> float32 [H,W,C]`."""
    hint = ("mean and std describe values in [0, 1], so the pixels must be brought to that range first; "
            "NumPy turns uint8 / 255 into float64, which you must undo or avoid")
    if callable(fn):
        answer, _ = _call(fn, [np.full((2, 2, 3), 255, np.uint8), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)])
        if answer is not None and _as_array(answer).dtype != np.float32:
            return report(False, f"standardize: dtype {_as_array(answer).dtype}, expected float32", hint)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    images = [_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8), _rng(1).integers(0, 256, (7, 3, 3), dtype=np.uint8)]
    cases = [((im, mean, std), reference_standardize(im, mean, std)) for im in images]
    mistakes = {"the pixels were not scaled to [0, 1] before the mean was subtracted":
                lambda im, m, s: (im.astype(np.float32) - np.asarray(m, np.float32)) / np.asarray(s, np.float32),
                "you multiplied by std instead of dividing":
                lambda im, m, s: (im.astype(np.float32) / 255 - np.asarray(m, np.float32)) * np.asarray(s, np.float32)}
    return check_function(fn, cases, "standardize", hint, atol=1e-5, mistakes=mistakes)


def reference_dense_params(height: int, width: int, channels: int, neurons: int) -> int:
    """Parameters of a dense layer from a flattened height x width x channels image to `neurons` units."""
    return neurons * (height * width * channels + 1)


@exercise("dense_params", reference_dense_params)
def check_dense_params(fn: Any) -> bool:
    """Exercise (lab 1): `dense_params(height, width, channels, neurons) -> int` (weights + biases)."""
    cases = [((h, w, c, n), reference_dense_params(h, w, c, n))
             for h, w, c, n in [(150, 100, 3, 100), (32, 32, 3, 10), (8, 8, 1, 1), (224, 224, 3, 1000)]]
    mistakes = {"the biases are missing": lambda h, w, c, n: h * w * c * n,
                "one bias for the whole layer instead of one per neuron": lambda h, w, c, n: h * w * c * n + 1}
    return check_function(fn, cases, "dense_params", "count what one neuron owns, then multiply by the number of neurons",
                          atol=0, mistakes=mistakes)


def reference_pairwise_sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between rows: a [N, D], b [M, D] -> [N, M], by broadcasting."""
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=-1)  # [N, M, D] -> [N, M]


@exercise("pairwise_sq_distances", reference_pairwise_sq_distances)
def check_pairwise_sq_distances(fn: Any) -> bool:
    """Exercise (lab 1): `pairwise_sq_distances(a [N,D], b [M,D]) -> [N,M]` without Python loops."""
    pairs = [(_rng(0).normal(size=(4, 3)), _rng(1).normal(size=(6, 3))),
             (_rng(2).normal(size=(1, 5)), _rng(3).normal(size=(2, 5)))]
    cases = [((a, b), reference_pairwise_sq_distances(a, b)) for a, b in pairs]
    mistakes = {"these are distances, not squared distances":
                lambda a, b: np.sqrt(reference_pairwise_sq_distances(a, b)),
                "the result is transposed ([M, N] instead of [N, M])":
                lambda a, b: reference_pairwise_sq_distances(b, a)}
    return check_function(fn, cases, "pairwise_sq_distances",
                          "broadcasting lines axes up from the right: insert a length-1 axis (None) into each "
                          "input so that N and M land on different axes, then reduce over D", mistakes=mistakes)


def reference_is_one(images: np.ndarray) -> np.ndarray:
    """A hand-written rule for 8x8 digits [N, 8, 8] (0..16 ink): True where a 1, False where a 0.

    A 1 is a stroke down the middle; a 0 is a ring around an empty middle. So: is there more ink in
    the two central columns than in the columns either side of them (rows 2-5)?
    """
    centre = images[:, 2:6, 3:5].mean(axis=(1, 2))  # [N]
    sides = images[:, 2:6, [1, 2, 5, 6]].mean(axis=(1, 2))  # [N]
    return centre > sides  # [N]


def zeros_and_ones() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lab 1's hand-rule data: the scikit-learn 0s and 1s, split in half (stratified, `random_state=0`).

    Returns `(train_images [180, 8, 8], test_images [180, 8, 8], train_is_one [180], test_is_one [180])`,
    ink 0..16 and boolean labels (True for a 1). The hand-written rule is designed and checked on the
    training half only; both rules are scored on the held-out half.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    keep = digits.target <= 1  # [1797]
    images, is_one = digits.images[keep], digits.target[keep] == 1  # [360, 8, 8], [360]
    return tuple(train_test_split(images, is_one, test_size=0.5, random_state=0, stratify=is_one))


@exercise("is_one", reference_is_one)
def check_is_one(fn: Any) -> bool:
    """Exercise (lab 1): a hand-written rule `is_one(images [N, 8, 8]) -> [N] bool`, right on 90% of the training 0s and 1s."""
    hint = ("look at a few zeros and ones (cu.plotting.show_pixel_values): where does a 1 have ink that a 0 has not, "
            "and the other way round? Turn that into a comparison of pixel sums, for all images at once")
    if not callable(fn):
        return report(False, f"is_one: {NOT_SOLVED}", hint)
    images, _, truth, _ = zeros_and_ones()  # the training half: the test half stays unseen
    answer, error = _call(fn, [images.copy()])
    if error:
        return report(False, f"is_one: {error} (input: images {images.shape})", hint)
    if answer is None:
        return report(False, f"is_one: {NOT_SOLVED} (it returns None)", hint)
    answer = _as_array(answer)
    if answer.shape != truth.shape:
        return report(False, f"is_one: shape {answer.shape}, expected {truth.shape}: one True/False per image", hint)
    said_one = answer.astype(bool)  # [N]
    right = float(np.mean(said_one == truth))
    if said_one.all() or not said_one.any():
        return report(False, f"is_one: it says {'1' if said_one.all() else '0'} for every image ({right:.0%} right)", hint)
    if right < 0.1:
        return report(False, f"is_one: right on only {right:.0%}: the rule is the wrong way round", hint)
    ok = right >= 0.9
    return report(ok, f"is_one: right on {right:.1%} of the {len(truth)} training zeros and ones"
                  + ("" if ok else ", below the 90% the exercise asks for"), hint)


# ---------------------------------------------------------------------------------------------
# Lab 2: forward and backward propagation
# ---------------------------------------------------------------------------------------------

def reference_neuron_gradient(x: float, y: float, w: float, b: float) -> tuple[float, float]:
    """(dJ/dw, dJ/db) for the neuron y_hat = w * x + b with loss J = (y - y_hat) ** 2."""
    dj_dyhat = -2 * (y - (w * x + b))
    return dj_dyhat * x, dj_dyhat


@exercise("neuron_gradient", reference_neuron_gradient)
def check_neuron_gradient(fn: Any) -> bool:
    """Exercise (lab 2): `neuron_gradient(x, y, w, b) -> (dJ_dw, dJ_db)`; the slides' case gives (-8, -4)."""
    cases = [((x, y, w, b), reference_neuron_gradient(x, y, w, b))
             for x, y, w, b in [(2.0, 7.0, 1.0, 3.0), (-1.5, 0.5, 2.0, -1.0), (3.0, 1.0, 0.0, 0.0)]]
    mistakes = {"both signs are flipped (the inner derivative of y - y_hat with respect to y_hat is -1)":
                lambda x, y, w, b: tuple(-g for g in reference_neuron_gradient(x, y, w, b)),
                "the two results are swapped": lambda x, y, w, b: reference_neuron_gradient(x, y, w, b)[::-1]}
    return check_function(fn, cases, "neuron_gradient",
                          "follow the chain rule along the path w -> y_hat -> J, one factor per arrow",
                          mistakes=mistakes)


def reference_perceptron_step(w: np.ndarray, x: np.ndarray, target: float, lr: float) -> np.ndarray:
    """One perceptron update: w [D + 1] (the bias last), x [D], target 0 or 1 -> the new weights [D + 1].

    Predict f = 1 if w . [x, 1] > 0 else 0, then w + lr (target - f) [x, 1]: no change when right.
    """
    x1 = np.append(x, 1.0)  # [D + 1]: the constant input that carries the bias
    prediction = float(w @ x1 > 0)
    return w + lr * (target - prediction) * x1  # [D + 1]


@exercise("perceptron_step", reference_perceptron_step)
def check_perceptron_step(fn: Any) -> bool:
    """Exercise (lab 2): `perceptron_step(w [D+1], x [D], target, lr) -> new w [D+1]`, the bias last."""
    w = np.array([0.5, -1.0, 0.25])  # [3]: two weights and the bias
    inputs = [(np.array([2.0, 0.5]), 1.0),  # z = 0.75 > 0, predicted 1, right: no change
              (np.array([2.0, 0.5]), 0.0),  # predicted 1, target 0: step down
              (np.array([0.0, 1.0]), 1.0),  # z = -0.75, predicted 0, target 1: step up
              (np.array([1.0, 0.75]), 1.0),  # z = 0 exactly: predicted 0 (only > 0 fires)
              (np.array([0.0, 0.1]), 0.0)]  # z = 0.15 only thanks to the bias: predicted 1, target 0
    cases = [((w, x, t, lr), reference_perceptron_step(w, x, t, lr))
             for (x, t), lr in zip(inputs, (0.1, 0.1, 0.5, 1.0, 0.2))]
    mistakes = {"the bias did not change: it is the weight on a constant input 1, so it is updated too":
                lambda w, x, t, lr: np.append(reference_perceptron_step(w, x, t, lr)[:-1], w[-1]),
                "the step fired at z = 0; the slides' perceptron outputs 1 only for z > 0":
                lambda w, x, t, lr: w + lr * (t - float(w @ np.append(x, 1.0) >= 0)) * np.append(x, 1.0),
                "the update has the wrong sign: a missed 1 (target 1, prediction 0) must move w towards x":
                lambda w, x, t, lr: 2 * w - reference_perceptron_step(w, x, t, lr)}
    return check_function(fn, cases, "perceptron_step",
                          "append the constant 1 to x, predict with the step, then move w by the error "
                          "(target - prediction) times the learning rate times the extended x", mistakes=mistakes)


def reference_relu_backward(x: np.ndarray, grad_out: np.ndarray) -> np.ndarray:
    """Gradient of ReLU: pass `grad_out` where x > 0, else 0 (same shape as x)."""
    return grad_out * (x > 0)


@exercise("relu_backward", reference_relu_backward)
def check_relu_backward(fn: Any) -> bool:
    """Exercise (lab 2): `relu_backward(x, grad_out) -> grad_in`, same shape as x."""
    xs = [_rng(0).normal(size=(5, 4)), np.array([-2.0, -0.0, 0.0, 1e-9, 3.0])]
    cases = [((x, g), reference_relu_backward(x, g)) for x, g in [(xs[0], _rng(1).normal(size=(5, 4))), (xs[1], np.ones(5))]]
    mistakes = {"at exactly x = 0 the gradient must be 0 (PyTorch's choice)": lambda x, g: g * (x >= 0),
                "you returned ReLU's slope without multiplying by grad_out": lambda x, g: (x > 0).astype(float)}
    return check_function(fn, cases, "relu_backward", "local slope times the gradient from above: what is ReLU's slope "
                          "on each side of 0?", mistakes=mistakes)


def reference_softmax_cross_entropy_grad(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Gradient of the mean cross-entropy w.r.t. logits [N, K]: (softmax(logits) - one_hot(labels)) / N."""
    shifted = logits - logits.max(axis=1, keepdims=True)  # [N, K], for numerical safety
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)  # [N, K]
    probs[np.arange(len(labels)), labels] -= 1.0
    return probs / len(labels)  # [N, K]


@exercise("softmax_cross_entropy_grad", reference_softmax_cross_entropy_grad)
def check_softmax_cross_entropy_grad(fn: Any) -> bool:
    """Exercise (lab 2): `softmax_cross_entropy_grad(logits [N,K], labels [N]) -> [N,K]` (mean loss)."""
    inputs = [(_rng(0).normal(size=(6, 4)), _rng(1).integers(0, 4, 6)), (np.array([[1000.0, 0.0, -1000.0]]), np.array([2]))]
    cases = [((z, y), reference_softmax_cross_entropy_grad(z, y)) for z, y in inputs]
    mistakes = {"the values are N times too large: the loss is a mean over the batch":
                lambda z, y: reference_softmax_cross_entropy_grad(z, y) * len(y),
                "the sign is flipped (that is the gradient of minus the loss)":
                lambda z, y: -reference_softmax_cross_entropy_grad(z, y)}
    return check_function(fn, cases, "softmax_cross_entropy_grad",
                          "each row: the probabilities, with 1 taken away at the true class; exp(1000) overflows "
                          "unless you shift the logits first (softmax does not change under a shift)",
                          mistakes=mistakes)


def reference_kl_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p || q) = sum_k p_k log(p_k / q_k) per row of p, q [N, K] (probabilities), natural log -> [N].

    A term with p_k = 0 counts 0 (the limit of p log p), even where q_k is 0 too.
    """
    with np.errstate(divide="ignore"):  # q = 0 where p > 0: KL is infinite, and says so
        ratio = np.where(p > 0, p / np.where(p > 0, q, 1.0), 1.0)  # [N, K], 1 where p = 0 (log 1 = 0)
        return (p * np.log(ratio)).sum(axis=1)  # [N]


@exercise("kl_divergence", reference_kl_divergence)
def check_kl_divergence(fn: Any) -> bool:
    """Exercise (lab 2): `kl_divergence(p [N, K], q [N, K]) -> [N]`, KL(p || q) per row, 0 log 0 = 0."""
    def rows(seed: int, n: int, k: int) -> np.ndarray:
        e = np.exp(_rng(seed).normal(size=(n, k)))  # [n, k]
        return e / e.sum(axis=1, keepdims=True)  # [n, k], rows sum to 1
    one_hot = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # [2, 3]: p with zeros
    pairs = [(rows(0, 4, 5), rows(1, 4, 5)), (one_hot, rows(2, 2, 3)), (rows(3, 3, 3), rows(3, 3, 3))]
    cases = [((p, q), reference_kl_divergence(p, q)) for p, q in pairs]
    mistakes = {"p and q are swapped: that is KL(q || p), and KL is not symmetric":
                lambda p, q: reference_kl_divergence(q, p),
                "the sign is flipped: KL(p || q) = sum p log(p / q) is never negative":
                lambda p, q: -reference_kl_divergence(p, q),
                "that is the mean over the K classes, not the sum":
                lambda p, q: reference_kl_divergence(p, q) / p.shape[1]}
    return check_function(fn, cases, "kl_divergence",
                          "one sum per row of p times the log of the ratio p / q; where p is 0 the term is 0 "
                          "(the limit of p log p), so keep log(0) out of those entries (np.where)", mistakes=mistakes)


def reference_dense_backward(x: np.ndarray, w: np.ndarray, grad_out: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward pass of y = x @ w + b: x [N, D], w [D, H], grad_out [N, H] -> (grad_x [N, D], grad_w [D, H], grad_b [H])."""
    return grad_out @ w.T, x.T @ grad_out, grad_out.sum(axis=0)


@exercise("dense_backward", reference_dense_backward)
def check_dense_backward(fn: Any) -> bool:
    """Exercise (lab 2): `dense_backward(x, w, grad_out) -> (grad_x, grad_w, grad_b)`."""
    shapes = [(5, 3, 4), (1, 6, 2)]
    cases = []
    for seed, (n, d, h) in enumerate(shapes):
        x, w, g = _rng(seed).normal(size=(n, d)), _rng(seed + 10).normal(size=(d, h)), _rng(seed + 20).normal(size=(n, h))
        cases.append(((x, w, g), reference_dense_backward(x, w, g)))
    mistakes = {"grad_b averages over the batch; the bias is added to every row, so its gradient sums":
                lambda x, w, g: (g @ w.T, x.T @ g, g.mean(axis=0))}
    return check_function(fn, cases, "dense_backward",
                          "let the shapes decide: grad_x must be [N, D] and grad_w [D, H]; there is one way to "
                          "multiply grad_out [N, H] with w (or with x) into each of them", mistakes=mistakes)


# ---------------------------------------------------------------------------------------------
# Lab 3: convolution by hand
# ---------------------------------------------------------------------------------------------

_SLIDE_IMAGE = np.array([[1, 3, 1, 2], [6, 1, 5, 4], [5, 4, 2, 5], [3, 3, 1, 2]], dtype=np.float64)


@exercise("output_size", conv.output_size)
def check_output_size(fn: Any) -> bool:
    """Exercise (lab 3): `output_size(n, f, padding, stride) -> int`, the slides' formula."""
    params = [(4, 2, 0, 1), (4, 2, 1, 1), (4, 2, 1, 2), (7, 3, 0, 2), (6, 3, 0, 1), (5, 3, 0, 1),
              (32, 5, 2, 1), (224, 7, 3, 2), (10, 3, 0, 3)]
    cases = [(p, conv.output_size(*p)) for p in params]
    mistakes = {"the padding counts on one side only; it is added at both ends": lambda n, f, p, s: (n + p - f) // s + 1,
                "the first position is not counted (+1)": lambda n, f, p, s: (n + 2 * p - f) // s,
                "the stride divides too much: only the positions after the first are counted in strides":
                lambda n, f, p, s: (n + 2 * p - f + 1) // s}
    return _check_own_work(fn, cases, "output_size",
                          "the kernel's first cell can start at positions 0, s, 2s, ... of the padded input, "
                          "as long as the whole kernel still fits; count those positions", atol=0, mistakes=mistakes,
                          course_versions=("output_size", "conv2d", "conv2d_fast", "conv2d_multi"))


@exercise("conv2d", conv.conv2d)
def check_conv2d(fn: Any) -> bool:
    """Exercise (lab 3): `my_conv2d(image [H,W], kernel [kh,kw]) -> [H-kh+1, W-kw+1]` (no padding, stride 1)."""
    edge_image = np.tile([10.0, 10, 10, 0, 0, 0], (5, 1))  # [5, 6]
    pairs = [(edge_image, conv.KERNELS["vertical edge"]), (_SLIDE_IMAGE, np.array([[1.0, 2], [2, 1]])),
             (_rng(0).normal(size=(7, 9)), _rng(1).normal(size=(3, 2)))]
    cases = [((im, k), conv.conv2d(im, k)) for im, k in pairs]
    mistakes = {"the kernel is flipped (that is the mathematicians' convolution; deep learning does not flip)":
                lambda im, k: conv.conv2d(im, k[::-1, ::-1])}
    return _check_own_work(fn, cases, "my_conv2d",
                          "one output pixel per position where the whole kernel fits inside the image; each is "
                          "the sum of the element-wise products of the kernel and the pixels under it",
                          mistakes=mistakes, course_versions=("conv2d", "conv2d_fast", "conv2d_multi", "conv_matrix"))


@exercise("max_pool2d", conv.max_pool2d)
def check_max_pool2d(fn: Any) -> bool:
    """Exercise (lab 3): `my_max_pool2d(image [H,W], size, stride) -> [H', W']`."""
    params = [(_SLIDE_IMAGE, 2, 1), (_SLIDE_IMAGE, 2, 2), (_rng(0).normal(size=(7, 8)), 3, 2)]
    cases = [(p, conv.max_pool2d(*p)) for p in params]
    mistakes = {"the windows move by 1 whatever the stride": lambda im, size, stride: conv.max_pool2d(im, size, 1)}
    return _check_own_work(fn, cases, "my_max_pool2d",
                          "output pixel (i, j) summarises the window whose top-left corner is i and j strides "
                          "from the image's corner; its size follows the formula of exercise 2",
                          mistakes=mistakes, course_versions=("max_pool2d", "max_pool2d_fast"))


@exercise("horizontal_edge_kernel", conv.KERNELS["horizontal edge"])
def check_horizontal_edge_kernel(kernel: Any) -> bool:
    """Exercise (lab 3): a 3x3 kernel that fires on horizontal edges, and is 0 on flat areas and vertical edges."""
    name = "horizontal edge kernel"
    hint = ("a horizontal edge is a change from one row to the next, so the kernel must weigh the rows above and "
            "below differently; which of its sums must be 0 so that a flat image, or a change from left to right, "
            "gives nothing?")
    if kernel is None:
        return report(False, f"{name}: {NOT_SOLVED}", hint)
    try:
        kernel = _as_array(kernel).astype(np.float64)
    except (TypeError, ValueError):
        return report(False, f"{name}: expected a 3x3 array of numbers, got {_describe(kernel)}", hint)
    if kernel.shape != (3, 3):
        return report(False, f"{name}: shape {kernel.shape}, expected (3, 3)", hint)
    horizontal = np.repeat([[10.0], [10], [10], [0], [0], [0]], 5, axis=1)  # [6, 5]: bright top, dark bottom
    flat = conv.conv2d(np.ones((4, 4)), kernel)  # [2, 2]
    vertical = conv.conv2d(horizontal.T, kernel)[0]  # one row of the [3, 4] output
    response = conv.conv2d(horizontal, kernel)[:, 0]  # one column of the [4, 3] output
    if not np.allclose(flat, 0):
        return report(False, f"{name}: on a flat image of ones it gives {flat[0, 0]:g}, not 0; "
                             "the weights should add up to 0", hint)
    if not np.allclose(vertical, 0):
        return report(False, f"{name}: across a vertical edge (bright left, dark right) it gives "
                             f"{np.round(vertical, 3).tolist()}, not all 0", hint)
    fires = bool(np.any(np.abs(response) > 1e-9))
    return report(fires, f"{name}: correct" if fires else
                  f"{name}: down a horizontal edge (bright top, dark bottom) it gives {response.tolist()}, all 0", hint)


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

    name, hint = "train_step", ("the slides' five steps, in order: clear the old gradients, forward, loss, backward, "
                                "update; return the loss as a plain Python number")
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
        return report(False, f"{name}: the weights after the step are wrong ({found}); "
                      "did you zero the old gradients and call optimizer.step()?", hint)
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
             for labels, k, eps in [(torch.tensor([0, 2, 1]), 3, 0.1), (torch.tensor([9, 0]), 10, 0.2),
                                    (torch.tensor([1]), 2, 0.0)]]
    return check_function(fn, cases, "smooth_labels",
                          "every class gets an equal share of eps and the true class keeps the rest of the "
                          "probability; each row must still sum to 1")


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
                          "a left-right mirror reverses the width axis (which one is it in [B, C, H, W]?); "
                          "average the model's logits for the image and for its mirror")


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
                          "three steps: centre the data, find each row's coordinates along the k components "
                          "(the codes, [N, k]), then rebuild the rows from their codes and undo the centring",
                          atol=1e-5)


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
                          "per image: how many pixels is `fraction` of the map (at least one)? average the "
                          "largest that many values", atol=1e-5)


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
                          "an image is flagged when its score reaches the threshold; a false alarm is a flagged "
                          "good image, a miss an unflagged defective one; return two ints", atol=0)


def reference_gram_matrix(features: Any) -> Any:
    """Gram matrices [B, C, C] of feature maps [B, C, h, w], averaged over the h*w positions."""
    from course_utils.losses import gram_matrix

    return gram_matrix(features)  # [B, C, C]


def check_gram_matrix(fn: Any) -> bool:
    """Exercise (lab 6): `gram_matrix(features [B, C, h, w]) -> [B, C, C]`."""
    cases = [((f,), reference_gram_matrix(f)) for f in
             (_lab56_tensors(0, (1, 3, 4, 4))[0], _lab56_tensors(1, (2, 8, 5, 7))[0])]
    return check_function(fn, cases, "gram_matrix",
                          "entry (i, j) compares channel i with channel j over all positions: an average of "
                          "products; batched matrix products do all pairs at once",
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
                          "a squared error per value, then one average per position: over which axis?", atol=1e-6)


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
                          "each test patch scores the distance to its nearest memory-bank entry (Euclidean, "
                          "not squared)", atol=1e-4)


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
                          "greedy: the next point is the one farthest from everything chosen so far; keep each "
                          "point's distance to its nearest chosen point up to date instead of recomputing it",
                          atol=0)


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
                          "like a Euclidean distance to the mean, but measured with the inverse covariance; "
                          "one quadratic form per row, then the square root", atol=1e-3)


def _register(name: str, checker_name: str, reference: Any) -> None:
    """Register a checker defined above without the decorator (labs 4-7) under exercise `name`."""
    globals()[checker_name] = exercise(name, reference)(globals()[checker_name])


for _name, _reference in [("train_step", reference_train_step), ("smooth_labels", reference_smooth_labels),
                          ("flip_tta", reference_flip_tta), ("pca_reconstruct", reference_pca_reconstruct),
                          ("topk_score", reference_topk_score), ("count_mistakes", reference_count_mistakes),
                          ("gram_matrix", reference_gram_matrix), ("feature_error", reference_feature_error),
                          ("patch_scores", reference_patch_scores), ("farthest_points", reference_farthest_points),
                          ("mahalanobis", reference_mahalanobis)]:
    _register(_name, f"check_{_name}", _reference)


# ---------------------------------------------------------------------------------------------
# Lab 3 (issue 15): convolution as a matrix product, receptive fields
# ---------------------------------------------------------------------------------------------

def reference_conv_matrix(kernel: np.ndarray, input_shape: tuple[int, int]) -> np.ndarray:
    """The matrix M [H'*W', H*W] of a convolution without padding, stride 1: conv2d(x, k).ravel() == M @ x.ravel()."""
    return conv.conv_matrix(kernel, input_shape)


@exercise("conv_matrix", reference_conv_matrix)
def check_conv_matrix(fn: Any) -> bool:
    """Exercise (lab 3): `my_conv_matrix(kernel [kh, kw], input_shape (H, W)) -> [H'*W', H*W]`."""
    pairs = [(np.array([[1.0, 2], [2, 1]]), (4, 4)), (conv.KERNELS["vertical edge"], (5, 6)),
             (_rng(2).normal(size=(2, 3)), (4, 5))]
    cases = [((k, shape), reference_conv_matrix(k, shape)) for k, shape in pairs]
    mistakes = {"the kernel is flipped (deep learning's convolution does not flip it)":
                lambda k, shape: conv.conv_matrix(np.asarray(k)[::-1, ::-1], shape),
                "the matrix is transposed: one row per output pixel, one column per input pixel":
                lambda k, shape: conv.conv_matrix(k, shape).T}
    return _check_own_work(fn, cases, "my_conv_matrix",
                          "row r belongs to output pixel r (counted row by row, as ravel() does); it holds the "
                          "kernel's weights in the columns of the input pixels that output reads, 0 elsewhere",
                          mistakes=mistakes, course_versions=("conv_matrix", "reference_conv_matrix"))


def reference_receptive_field(kernel_sizes: Sequence[int], strides: Sequence[int]) -> int:
    """Receptive field in input pixels of the last layer of a chain of layers (kernel sizes, strides)."""
    return conv.receptive_field(kernel_sizes, strides)[-1][0]


@exercise("receptive_field", reference_receptive_field)
def check_receptive_field(fn: Any) -> bool:
    """Exercise (lab 3): `my_receptive_field(kernel_sizes, strides) -> int` for a chain of layers."""
    params = [([3], [1]), ([3, 3], [1, 1]), ([3, 3, 3], [1, 1, 1]), ([3, 3], [2, 1]), ([2, 2], [2, 2]),
              ([7, 3, 3], [2, 2, 1]), ([3, 3, 3, 3], [2, 1, 2, 1]), ([5, 2, 5, 2], [1, 2, 1, 2])]
    cases = [(p, reference_receptive_field(*p)) for p in params]
    mistakes = {"the strides are ignored: every layer adds k - 1 pixels":
                lambda ks, ss: 1 + sum(k - 1 for k in ks),
                "each layer's own stride is counted too early: it only spaces the cells of the *next* layer":
                lambda ks, ss: 1 + sum((k - 1) * int(np.prod(ss[:i + 1])) for i, k in enumerate(ks))}
    return _check_own_work(fn, cases, "my_receptive_field",
                          "each layer sees k neighbouring cells of the layer below, so it adds k - 1 steps; how many "
                          "input pixels apart are the cells of the layer below (what did the strides so far do)?",
                          atol=0, mistakes=mistakes, course_versions=("receptive_field", "reference_receptive_field",
                                                                      "layer_receptive_fields"))


# ---------------------------------------------------------------------------------------------
# Lab 2, part 2: weight decay and initialisation
# ---------------------------------------------------------------------------------------------

def _adam_step(params: dict, grads: dict, state: dict, lr: float, beta1: float = 0.9, beta2: float = 0.999,
               eps: float = 1e-8) -> None:
    """One Adam step in place on a dict of NumPy arrays (lab 2's `adam_update`, state keys "t", "k.m", "k.v")."""
    state["t"] = t = state.get("t", 0) + 1
    for k in params:
        m = state[k + ".m"] = beta1 * state.get(k + ".m", 0.0) + (1 - beta1) * grads[k]
        v = state[k + ".v"] = beta2 * state.get(k + ".v", 0.0) + (1 - beta2) * grads[k] ** 2
        params[k] -= lr * (m / (1 - beta1 ** t)) / (np.sqrt(v / (1 - beta2 ** t)) + eps)


def reference_adamw_update(params: dict, grads: dict, state: dict, lr: float, weight_decay: float = 0.01) -> None:
    """AdamW (decoupled weight decay), in place: shrink every weight by (1 - lr * weight_decay), then Adam."""
    for k in params:
        params[k] *= 1 - lr * weight_decay  # the decay does not go through Adam's normalisation
    _adam_step(params, grads, state, lr)


def _run_optimizer(update: Callable, start: dict, steps: list[dict], lr: float, weight_decay: float) -> tuple:
    """The parameters (a tuple of arrays, sorted by name) after `update` took every step of `steps`."""
    params, state = {k: v.copy() for k, v in start.items()}, {}
    for grads in steps:
        update(params, {k: g.copy() for k, g in grads.items()}, state, lr, weight_decay)
    return tuple(params[k] for k in sorted(params))


def _torch_adamw(start: dict, steps: list[dict], lr: float, weight_decay: float) -> tuple:
    """The same steps taken by `torch.optim.AdamW` (float64): what the exercise must reproduce."""
    import torch

    tensors = {k: torch.tensor(v, dtype=torch.float64) for k, v in start.items()}
    optimizer = torch.optim.AdamW(list(tensors.values()), lr=lr, weight_decay=weight_decay)
    for grads in steps:
        for k, t in tensors.items():
            t.grad = torch.tensor(grads[k], dtype=torch.float64)
        optimizer.step()
    return tuple(tensors[k].numpy() for k in sorted(tensors))


_ADAMW_MISTAKES = {
    "this is Adam with L2 (weight_decay * w added to the gradient, then normalised), not decoupled decay":
        lambda p, g, s, lr, wd: _adam_step(p, {k: g[k] + wd * p[k] for k in p}, s, lr),
    "your decay does not scale with the learning rate (in AdamW it does)":
        lambda p, g, s, lr, wd: (p.update({k: p[k] * (1 - wd) for k in p}), _adam_step(p, g, s, lr)),
    "the weights are decayed after the Adam step; AdamW decays the old weights, before it":
        lambda p, g, s, lr, wd: (_adam_step(p, g, s, lr), p.update({k: p[k] * (1 - lr * wd) for k in p})),
    "there is no weight decay in your update (plain Adam)": lambda p, g, s, lr, wd: _adam_step(p, g, s, lr),
}


@exercise("adamw_update", reference_adamw_update)
def check_adamw_update(fn: Any) -> bool:
    """Exercise (lab 2): `adamw_update(params, grads, state, lr, weight_decay)` changes `params` in place.

    Three steps on two arrays, compared with `torch.optim.AdamW` on the same gradients.
    """
    name, hint = "adamw_update", ("AdamW shrinks each weight by a factor that uses the learning rate and the decay, "
                                  "directly, and leaves the gradient that Adam normalises untouched")
    if not callable(fn):
        return report(False, f"{name}: {NOT_SOLVED}", hint)
    rng = _rng(0)
    start = {"w": rng.normal(size=(3, 2)), "b": rng.normal(size=2)}
    steps = [{k: rng.normal(size=v.shape) * scale for k, v in start.items()} for scale in (1.0, 0.01, 3.0)]
    lr, weight_decay = 0.1, 0.5
    expected = _torch_adamw(start, steps, lr, weight_decay)
    try:
        answer = _run_optimizer(fn, start, steps, lr, weight_decay)
    except Exception as error:
        return report(False, f"{name}: it raised {type(error).__name__}: {error}", hint)
    if all(np.array_equal(a, start[k]) for a, k in zip(answer, sorted(start))):
        return report(False, f"{name}: {NOT_SOLVED} (the parameters did not change: update them in place)", hint)
    found = problem(answer, expected, atol=1e-9)
    if found:
        known = [what for what, wrong in _ADAMW_MISTAKES.items()
                 if problem(answer, _run_optimizer(wrong, start, steps, lr, weight_decay), atol=1e-9) is None]
        return report(False, f"{name}: {known[0] if known else found} (after 3 steps, lr {lr}, weight_decay "
                      f"{weight_decay}, compared with torch.optim.AdamW)", hint)
    return report(True, f"{name}: matches torch.optim.AdamW over 3 steps")


def reference_leaky_relu_std(n_in: int, slope: float) -> float:
    """The weight std that keeps E[x^2] through Linear(n_in, .) + leaky ReLU with negative slope `slope`."""
    return float(np.sqrt(2.0 / ((1.0 + slope ** 2) * n_in)))


@exercise("leaky_relu_std", reference_leaky_relu_std)
def check_leaky_relu_std(fn: Any) -> bool:
    """Exercise (lab 2): `leaky_relu_std(n_in, slope) -> sigma`; slope 0 is He's, slope 1 the linear layer's."""
    cases = [((n, a), reference_leaky_relu_std(n, a)) for n, a in [(100, 0.2), (64, 0.01), (256, 1.0), (10, 0.0)]]
    mistakes = {"the negative side is ignored (that is He's ReLU value)": lambda n, a: float(np.sqrt(2.0 / n)),
                "the slope must be squared: it scales z, so it scales z^2 by slope^2":
                    lambda n, a: float(np.sqrt(2.0 / ((1.0 + a) * n))),
                "that is the variance; the function returns the standard deviation":
                    lambda n, a: 2.0 / ((1.0 + a ** 2) * n)}
    return check_function(fn, cases, "leaky_relu_std",
                          "for z symmetric around 0, half of E[z^2] comes from z > 0 (kept) and half from z < 0 "
                          "(multiplied by the slope): what fraction of E[z^2] survives?", atol=1e-9, mistakes=mistakes)


# ---------------------------------------------------------------------------------------------
# Lab 4, part 2: what a convolution costs, boxes, balanced accuracy
# ---------------------------------------------------------------------------------------------

def reference_conv_cost(c_in: int, c_out: int, k: int, h_out: int, w_out: int) -> tuple[int, int]:
    """(parameters, multiply-adds) of a k x k convolution with biases, c_in -> c_out channels, output h_out x w_out."""
    per_output = c_in * k * k  # one filter's weights: one multiply-add each, per output value
    return c_out * (per_output + 1), c_out * h_out * w_out * per_output


@exercise("conv_cost", reference_conv_cost)
def check_conv_cost(fn: Any) -> bool:
    """Exercise (lab 4): `conv_cost(c_in, c_out, k, h_out, w_out) -> (parameters, macs)` for one image."""
    cases = [((c_in, c_out, k, h, w), reference_conv_cost(c_in, c_out, k, h, w))
             for c_in, c_out, k, h, w in [(1, 6, 5, 28, 28), (3, 96, 11, 54, 54), (16, 8, 3, 7, 5), (192, 64, 1, 28, 28)]]
    mistakes = {"the biases are missing from the parameters":
                lambda c_in, c_out, k, h, w: (c_out * c_in * k * k, reference_conv_cost(c_in, c_out, k, h, w)[1]),
                "a filter sees all input channels: the multiply-adds miss the factor c_in":
                lambda c_in, c_out, k, h, w: (reference_conv_cost(c_in, c_out, k, h, w)[0], c_out * h * w * k * k),
                "the multiply-adds count the biases too (one more per output value)":
                lambda c_in, c_out, k, h, w: (reference_conv_cost(c_in, c_out, k, h, w)[0],
                                              c_out * h * w * (c_in * k * k + 1))}
    return check_function(fn, cases, "conv_cost",
                          "count what one filter owns (its weights over all input channels, and a bias); a filter "
                          "does one multiply-add per weight for every output value it produces", atol=0,
                          mistakes=mistakes)


def _overlap_over_sum(a: Sequence[float], b: Sequence[float]) -> float:
    """A known mistake: the intersection divided by the sum of both areas (the shared part counted twice)."""
    iou = reference_iou(a, b)
    return iou / (1 + iou)  # inter / (area_a + area_b), since union = area_a + area_b - inter


def reference_iou(box_a: Sequence[float], box_b: Sequence[float]) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1."""
    width = max(0.0, min(box_a[2], box_b[2]) - max(box_a[0], box_b[0]))  # overlap's width, 0 if apart
    height = max(0.0, min(box_a[3], box_b[3]) - max(box_a[1], box_b[1]))
    inter = width * height
    area_a = (box_a[2] - box_a[0]) * (box_a[3] - box_a[1])
    area_b = (box_b[2] - box_b[0]) * (box_b[3] - box_b[1])
    return inter / (area_a + area_b - inter)


@exercise("iou", reference_iou)
def check_iou(fn: Any) -> bool:
    """Exercise (lab 4): `iou(box_a, box_b) -> float` for boxes (x0, y0, x1, y1)."""
    boxes = [((0, 0, 2, 2), (1, 1, 3, 3)), ((0.1, 0.2, 0.5, 0.6), (0.1, 0.2, 0.5, 0.6)),
             ((0, 0, 4, 4), (1, 1, 2, 2)), ((0, 0, 1, 1), (2, 2, 3, 3)), ((0, 0, 1, 1), (0.5, 3, 2, 4)),
             ((0.2, 0.1, 0.7, 0.4), (0.5, 0.3, 0.9, 0.9))]
    cases = [((a, b), reference_iou(a, b)) for a, b in boxes]

    def unclipped(a: Sequence[float], b: Sequence[float]) -> float:
        inter = (min(a[2], b[2]) - max(a[0], b[0])) * (min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union

    mistakes = {"boxes that do not overlap must give 0: a negative width or height of the overlap was not clipped":
                unclipped,
                "the union counts the overlap twice (area_a + area_b without subtracting the intersection)":
                lambda a, b: _overlap_over_sum(a, b)}
    return check_function(fn, cases, "iou",
                          "the overlap of two boxes is a box too: its left edge is the larger of the two left "
                          "edges, its right edge the smaller of the two right edges; if they cross, there is no "
                          "overlap. The union is both areas minus what they share", mistakes=mistakes)


def reference_balanced_accuracy(preds: Any, targets: Any) -> float:
    """The mean over the classes present in `targets` of each class's accuracy (its recall)."""
    preds, targets = _as_array(preds), _as_array(targets)
    return float(np.mean([np.mean(preds[targets == c] == c) for c in np.unique(targets)]))


@exercise("balanced_accuracy", reference_balanced_accuracy)
def check_balanced_accuracy(fn: Any) -> bool:
    """Exercise (lab 4): `balanced_accuracy(preds [N], targets [N]) -> float`, class indices in both."""
    rng = _rng(3)
    targets = [np.array([0] * 90 + [1] * 10), rng.choice(4, size=50, p=[0.7, 0.2, 0.05, 0.05]), np.array([2, 2, 0, 0])]
    preds = [np.zeros(100, dtype=np.int64), np.where(rng.random(50) < 0.6, targets[1], rng.integers(0, 4, 50)),
             np.array([2, 1, 0, 1])]
    cases = [((p, t), reference_balanced_accuracy(p, t)) for p, t in zip(preds, targets)]
    mistakes = {"this is the plain accuracy, in which the common classes count more": lambda p, t: float(np.mean(p == t)),
                "this averages over the predicted classes (the precision), not over the true ones":
                lambda p, t: float(np.mean([np.mean(t[p == c] == c) for c in np.unique(p)]))}
    return check_function(fn, cases, "balanced_accuracy",
                          "split the images by their TRUE class, take the accuracy within each class, then give "
                          "every class the same weight, however many images it has", atol=1e-9, mistakes=mistakes)


# Lab 5: the slides' three scenarios (free text); lab 7: the contrastive loss (issue #15)
# ---------------------------------------------------------------------------------------------

SCENARIOS = ("screws", "bank", "coffee")
_SETTINGS = ("supervised", "semi-supervised", "unsupervised", "novelty", "outlier")


def reference_scenarios() -> dict[str, str]:
    """Our model answers to lab 5's scenarios: normal, anomalous, the data, the setting. Others can be right too."""
    return {
        "screws": "Normal: screws of the current type, within tolerance. Anomalous: bent or broken screws, "
                  "missing or damaged threads, wrong heads; and a screw of the previous type after a "
                  "changeover (normal last week, anomalous now: a context anomaly). Data: camera images of "
                  "every screw (plus machine signals and the changeover log); millions of good screws, rare "
                  "and varied defects, hardly any labels. Setting: semi-supervised novelty detection, one model "
                  "of 'good' per screw type, trained on clean good images (this lab); after every changeover "
                  "it must be refitted from a few good images of the new type (lab 7's few-shot curve).",
        "bank": "Normal: a developer reads a few customer records at a time, during working hours, for their "
                "tickets. Anomalous: a bulk download of many records, at an odd time or to an odd destination "
                "(data theft) - yet a planned migration looks the same, so the context (ticket, approval) "
                "decides. Data: access logs (user, time, query, rows, destination), unlabelled and possibly "
                "already containing past incidents; almost no labelled thefts. Setting: unsupervised outlier "
                "detection in the logs (e.g. an isolation forest on per-user features), compared with each "
                "user's own history (a pattern anomaly); a person reviews what is flagged.",
        "coffee": "Normal: beans from certified fair-trade farms, in the quantities those farms can grow, at "
                  "fair-trade prices, of the declared grade. Anomalous: non-certified beans blended in or "
                  "relabelled (a farm selling more than it can harvest, prices below the fair-trade minimum), "
                  "and defective beans (mould, insect damage, broken). Data: supply-chain records (farms, "
                  "certificates, quantities, prices, routes) and samples or images of beans. Setting: "
                  "unsupervised outlier or pattern detection on the records; for bean defects, whose kinds are "
                  "known and graded, supervised classification is feasible, or novelty detection on good beans.",
    }


@exercise("scenarios", reference_scenarios)
def check_scenarios(answers: Any) -> bool:
    """Exercise (lab 5): `scenarios = {"screws": str, "bank": str, "coffee": str}`, free text.

    There is no single right answer, so this checks only that each scenario got a few sentences that
    name a setting (supervised, semi-supervised, unsupervised, novelty or outlier detection).
    """
    if not isinstance(answers, dict):
        return report(False, f"scenarios: {NOT_SOLVED} (expected a dict with keys {', '.join(SCENARIOS)})")
    missing = [k for k in SCENARIOS if len(str(answers.get(k) or "").split()) < 15]
    if missing:
        return report(False, f"scenarios: {NOT_SOLVED} for {', '.join(missing)} (a few sentences each)",
                      "for each: what is normal, what would be anomalous, what data you would see, which setting")
    unnamed = [k for k in SCENARIOS if not any(s in str(answers[k]).lower() for s in _SETTINGS)]
    if unnamed:
        return report(False, f"scenarios: name a setting for {', '.join(unnamed)}",
                      "supervised, semi-supervised (novelty detection) or unsupervised (outlier detection)?")
    return report(True, "scenarios: answered; now compare with our model answers: cu.checks.solution('scenarios')")


def reference_contrastive_loss(distances: Any, similar: Any, margin: float) -> Any:
    """Hadsell et al.'s contrastive loss, mean over pairs: s d^2 + (1 - s) max(0, margin - d)^2."""
    from course_utils.losses import contrastive_loss

    return contrastive_loss(distances, similar, margin)


def check_contrastive_loss(fn: Any) -> bool:
    """Exercise (lab 7): `contrastive_loss(distances [P], similar [P], margin) -> scalar` (mean over pairs)."""
    import torch

    g = torch.Generator().manual_seed(0)
    cases = []
    for p, margin in [(6, 1.0), (50, 2.5)]:
        distances = 3 * torch.rand(p, generator=g)  # [P], some beyond the margin
        similar = (torch.rand(p, generator=g) < 0.5).float()  # [P]
        cases.append(((distances, similar, margin), reference_contrastive_loss(distances, similar, margin)))
    mistakes = {"dissimilar pairs beyond the margin still count (a clamp at 0 is missing)":
                    lambda d, s, m: (s * d**2 + (1 - s) * (m - d) ** 2).mean(),
                "the dissimilar term is not squared": lambda d, s, m: (s * d**2 + (1 - s) * (m - d).clamp(min=0)).mean(),
                "the two terms are swapped (similar pairs pushed apart)":
                    lambda d, s, m: ((1 - s) * d**2 + s * (m - d).clamp(min=0) ** 2).mean(),
                "summed over pairs instead of averaged": lambda d, s, m: (s * d**2 + (1 - s) * (m - d).clamp(min=0) ** 2).sum()}
    return check_function(fn, cases, "contrastive_loss",
                          "a similar pair costs its squared distance; a dissimilar pair costs only while it is closer "
                          "than the margin (then by how much, squared); average over the pairs",
                          atol=1e-5, mistakes=mistakes)


_register("contrastive_loss", "check_contrastive_loss", reference_contrastive_loss)
