"""course_utils.checks: every checker accepts the solution, rejects the stub and a wrong answer, never raises."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from course_utils import checks, conv


def stub(*args):
    """What a student edition holds before the exercise is done: `return None`."""
    return None


def crashes(*args):
    raise IndexError("index 9 is out of bounds")


def my_output_size(n, f, padding, stride):
    return (n + 2 * padding - f) // stride + 1


def my_max_pool(image, size, stride):
    windows = np.lib.stride_tricks.sliding_window_view(image, (size, size))[::stride, ::stride]  # [H', W', size, size]
    return windows.max(axis=(2, 3))


def my_conv2d(image, kernel):
    windows = np.lib.stride_tricks.sliding_window_view(image, kernel.shape)  # [H', W', kh, kw]
    return np.einsum("ijuv,uv->ij", windows, kernel)


def my_conv_matrix(kernel, input_shape):
    (h, w), (kh, kw) = input_shape, kernel.shape
    m = np.zeros(((h - kh + 1) * (w - kw + 1), h * w))  # [H'W', HW]
    for row in range(len(m)):
        i, j = divmod(row, w - kw + 1)
        for u in range(kh):
            m[row, (i + u) * w + j:(i + u) * w + j + kw] = kernel[u]
    return m


def my_receptive_field(kernel_sizes, strides):
    field, jump = 1, 1
    for k, s in zip(kernel_sizes, strides):
        field, jump = field + (k - 1) * jump, jump * s
    return field


# (checker, solution, wrong answer): the wrong answers are the mistakes students make.
CASES = {
    "standardize": (checks.check_standardize, checks.reference_standardize,
                    lambda im, m, s: (im / 255.0 - np.asarray(m)) / np.asarray(s)),  # float64, not float32
    "standardize_no_scaling": (checks.check_standardize, checks.reference_standardize,
                               lambda im, m, s: ((im - np.asarray(m)) / np.asarray(s)).astype(np.float32)),
    "dense_params": (checks.check_dense_params, checks.reference_dense_params, lambda h, w, c, n: h * w * c * n),
    "pairwise": (checks.check_pairwise_sq_distances, checks.reference_pairwise_sq_distances,
                 lambda a, b: np.sqrt(checks.reference_pairwise_sq_distances(a, b))),
    "is_one": (checks.check_is_one, checks.reference_is_one, lambda im: ~checks.reference_is_one(im)),  # reversed
    "is_one_weak": (checks.check_is_one, checks.reference_is_one, lambda im: im[:, :, :4].sum(axis=(1, 2)) > 60),
    "perceptron": (checks.check_perceptron_step, checks.reference_perceptron_step,
                   lambda w, x, t, lr: w + lr * (t - float(w[:-1] @ x > 0)) * np.append(x, 1.0)),  # bias left out of z
    "kl": (checks.check_kl_divergence, checks.reference_kl_divergence, lambda p, q: (p * np.log(p / q)).sum(axis=1)),
    "neuron": (checks.check_neuron_gradient, checks.reference_neuron_gradient,
               lambda x, y, w, b: (2 * (y - w * x - b) * x, 2 * (y - w * x - b))),
    "relu": (checks.check_relu_backward, checks.reference_relu_backward, lambda x, g: g * (x >= 0)),
    "softmax_ce": (checks.check_softmax_cross_entropy_grad, checks.reference_softmax_cross_entropy_grad,
                   lambda z, y: checks.reference_softmax_cross_entropy_grad(z, y) * len(y)),  # forgot the mean
    "dense_backward": (checks.check_dense_backward, checks.reference_dense_backward,
                       lambda x, w, g: (g @ w.T, x.T @ g, g.mean(axis=0))),
    "output_size": (checks.check_output_size, my_output_size, lambda n, f, p, s: (n + p - f) // s + 1),
    "conv2d": (checks.check_conv2d, my_conv2d, lambda im, k: my_conv2d(im, k[::-1, ::-1])),  # true convolution
    "max_pool": (checks.check_max_pool2d, my_max_pool, lambda im, size, stride: my_max_pool(im, size, 1)),
    "horizontal_edge": (checks.check_horizontal_edge_kernel, conv.KERNELS["sobel y"], conv.KERNELS["vertical edge"]),
    "conv_matrix": (checks.check_conv_matrix, my_conv_matrix,
                    lambda k, shape: my_conv_matrix(np.asarray(k)[::-1, ::-1], shape)),  # flipped kernel
    "receptive_field": (checks.check_receptive_field, my_receptive_field,
                        lambda ks, ss: 1 + sum(k - 1 for k in ks)),  # strides ignored
}


@pytest.mark.parametrize("name", CASES)
def test_checker_accepts_solution_rejects_stub_and_wrong(name, capsys):
    checker, solution, wrong = CASES[name]
    assert checker(solution) is True
    assert "✅" in capsys.readouterr().out
    assert checker(None) is False
    assert checks.NOT_SOLVED in capsys.readouterr().out
    if callable(solution):
        assert checker(stub) is False
        assert checks.NOT_SOLVED in capsys.readouterr().out
        assert checker(crashes) is False
        assert "IndexError" in capsys.readouterr().out
    assert checker(wrong) is False
    out = capsys.readouterr().out
    assert "❌" in out and "hint:" in out


@pytest.fixture(autouse=True)
def fresh_attempts():
    """Every test starts with no failed attempts on record."""
    checks._failures.clear()
    yield
    checks._failures.clear()


def test_answer_only_on_request_and_never_on_the_first_failure(capsys):
    wrong = CASES["conv2d"][2]
    assert not checks.check_conv2d(wrong)
    first = capsys.readouterr().out
    assert "kernel is flipped" in first and "solution(" not in first  # says what is wrong, not the answer
    assert "sum(window * kernel)" not in first and "for i in range" not in first
    assert not checks.check_conv2d(wrong)
    assert "cu.checks.solution('conv2d')" in capsys.readouterr().out  # from the second failure on: where to look
    checks.solution("conv2d")
    assert "def conv2d(" in capsys.readouterr().out
    checks.solution("horizontal_edge_kernel")
    assert "[-1., -1., -1.]" in capsys.readouterr().out
    checks.solution("nonsense")
    assert "the exercises are:" in capsys.readouterr().out


@pytest.mark.parametrize("checker, borrowed", [
    (checks.check_output_size, conv.output_size),
    (checks.check_output_size, lambda n, f, p, s: conv.output_size(n, f, p, s)),
    (checks.check_conv2d, conv.conv2d),
    (checks.check_conv2d, lambda im, k: conv.conv2d_fast(im, k)),
    (checks.check_max_pool2d, lambda im, size, stride: conv.max_pool2d(im, size, stride)),
    (checks.check_conv_matrix, checks.reference_conv_matrix),
    (checks.check_receptive_field, lambda ks, ss: conv.receptive_field(ks, ss)[-1][0]),
])
def test_an_answer_that_calls_the_course_version_is_refused(checker, borrowed, capsys):
    assert checker(borrowed) is False
    assert "write the computation yourself" in capsys.readouterr().out


def test_quiet_checks_do_not_count_as_attempts(capsys):
    for _ in range(3):
        checks.solved_or_reference(stub, checks.reference_relu_backward, "relu_backward", check=checks.check_relu_backward)
    assert not checks.check_relu_backward(stub)
    assert "solution(" not in capsys.readouterr().out


def test_every_checker_is_registered_with_a_reference():
    checkers = [name for name in dir(checks) if name.startswith("check_") and name != "check_function"]
    assert len(checks.SOLUTIONS) == len(checkers) >= 22
    for name, reference in checks.SOLUTIONS.items():
        assert reference is not None, name


@pytest.mark.parametrize("checker, wrong, says", [
    (checks.check_dense_params, lambda h, w, c, n: h * w * c * n, "biases are missing"),
    (checks.check_pairwise_sq_distances, lambda a, b: np.sqrt(checks.reference_pairwise_sq_distances(a, b)), "not squared"),
    (checks.check_output_size, lambda n, f, p, s: (n + p - f) // s + 1, "one side only"),
    (checks.check_relu_backward, lambda x, g: g * (x >= 0), "exactly x = 0"),
    (checks.check_dense_backward, lambda x, w, g: (g @ w.T, x.T @ g, g.mean(axis=0)), "sums"),
    (checks.check_is_one, lambda im: ~checks.reference_is_one(im), "wrong way round"),
    (checks.check_is_one, lambda im: np.ones(len(im), bool), "for every image"),
    (checks.check_perceptron_step, lambda w, x, t, lr: np.append(checks.reference_perceptron_step(w, x, t, lr)[:-1], w[-1]),
     "bias did not change"),
    (checks.check_perceptron_step, lambda w, x, t, lr: w + lr * (t - float(w @ np.append(x, 1.0) >= 0)) * np.append(x, 1.0),
     "z = 0"),
    (checks.check_kl_divergence, lambda p, q: checks.reference_kl_divergence(q, p), "swapped"),
])
def test_known_mistakes_are_named(checker, wrong, says, capsys):
    assert not checker(wrong)
    assert says in capsys.readouterr().out


def test_horizontal_edge_kernel_accepts_other_valid_kernels_and_explains(capsys):
    assert checks.check_horizontal_edge_kernel(-conv.KERNELS["horizontal edge"])
    assert checks.check_horizontal_edge_kernel(torch.tensor([[0.0, 0, 0], [1, 1, 1], [-1, -1, -1]]))
    assert not checks.check_horizontal_edge_kernel(np.ones((3, 3)))
    assert "flat image of ones it gives 9" in capsys.readouterr().out
    assert not checks.check_horizontal_edge_kernel(conv.KERNELS["vertical edge"])
    assert "vertical edge (bright left, dark right) it gives [0.0, 30.0, 30.0, 0.0]" in capsys.readouterr().out
    assert not checks.check_horizontal_edge_kernel(np.eye(2))
    assert "shape (2, 2)" in capsys.readouterr().out


def test_problem_describes_shape_values_and_tuples():
    assert checks.problem(np.ones((2, 3)), np.ones((2, 3))) is None
    assert "shape (3, 2), expected (2, 3)" in checks.problem(np.ones((3, 2)), np.ones((2, 3)))
    found = checks.problem(np.array([1.0, 2.0, 5.0]), np.array([1.0, 2.0, 3.0]))
    assert "index (2,)" in found and "got 5" in found and "expected 3" in found
    assert "result 1" in checks.problem((1.0, 2.0), (1.0, 3.0))
    assert "tuple of 2" in checks.problem(1.0, (1.0, 3.0))
    assert "NaN" in checks.problem(np.array([np.nan]), np.array([1.0]))
    assert checks.problem(torch.ones(2, requires_grad=True), np.ones(2)) is None
    assert "expected numbers" in checks.problem("five", 5)


def test_report_returns_its_verdict(capsys):
    assert checks.report(True, "fine", hint="unused") is True
    assert checks.report(False, "broken", hint="try again") is False
    out = capsys.readouterr().out
    assert "✅ fine" in out and "❌ broken" in out and "hint: try again" in out and "unused" not in out


def test_solved_or_reference_picks_the_right_one(capsys):
    reference = checks.reference_relu_backward
    assert checks.solved_or_reference(None, reference, "relu_backward") is reference
    assert checks.solved_or_reference(stub, reference, "relu_backward", check=checks.check_relu_backward) is reference
    assert "using the reference relu_backward" in capsys.readouterr().out
    mine = lambda x, g: g * (x > 0)  # noqa: E731
    assert checks.solved_or_reference(mine, reference, "relu_backward", check=checks.check_relu_backward) is mine
    out = capsys.readouterr().out
    assert out.strip() == "using your relu_backward"  # the checker itself stays quiet
    assert checks.solved_or_reference(4_500_100, 4_500_100, "count") == 4_500_100
    assert checks.solved_or_reference(4_500_000, 4_500_100, "count") == 4_500_100
    assert checks.solved_or_reference(mine, reference, "relu_backward") is reference  # functions need a check


# Lab 2, part 2 (weight decay, initialisation): (checker, solution, wrong answer).
def _adamw_coupled(params, grads, state, lr, weight_decay):  # Adam(weight_decay=...): L2 through the normalisation
    checks._adam_step(params, {k: grads[k] + weight_decay * params[k] for k in params}, state, lr)


CASES_LAB2_PART2 = {
    "adamw": (checks.check_adamw_update, checks.reference_adamw_update, _adamw_coupled),
    "leaky_relu_std": (checks.check_leaky_relu_std, checks.reference_leaky_relu_std, lambda n, a: (2 / n) ** 0.5),
}


@pytest.mark.parametrize("name", CASES_LAB2_PART2)
def test_lab2_part2_checkers(name, capsys):
    checker, solution, wrong = CASES_LAB2_PART2[name]
    assert checker(solution) is True and "✅" in capsys.readouterr().out
    for not_solved in (None, stub):
        assert checker(not_solved) is False and checks.NOT_SOLVED in capsys.readouterr().out
    assert checker(crashes) is False and "IndexError" in capsys.readouterr().out
    assert checker(wrong) is False
    out = capsys.readouterr().out
    assert "❌" in out and "hint:" in out


def test_adamw_reference_is_torch_adamw_and_not_adam_with_l2():
    rng = np.random.default_rng(3)
    start, steps = {"w": rng.normal(size=4)}, [{"w": rng.normal(size=4)} for _ in range(2)]
    ours = checks._run_optimizer(checks.reference_adamw_update, start, steps, 0.05, 0.3)
    assert np.allclose(ours, checks._torch_adamw(start, steps, 0.05, 0.3))
    w = torch.tensor(start["w"], requires_grad=True)
    adam_l2 = torch.optim.Adam([w], lr=0.05, weight_decay=0.3)
    for grads in steps:
        w.grad = torch.tensor(grads["w"])
        adam_l2.step()
    assert np.allclose(checks._run_optimizer(_adamw_coupled, start, steps, 0.05, 0.3)[0], w.detach().numpy())
    assert not np.allclose(ours[0], w.detach().numpy())


def test_zeros_and_ones_splits_the_hand_rule_digits_in_two_disjoint_halves():
    train_images, test_images, train_labels, test_labels = checks.zeros_and_ones()
    assert train_images.shape == test_images.shape == (180, 8, 8) and train_labels.dtype == bool
    assert abs(train_labels.mean() - test_labels.mean()) < 0.02  # stratified: about as many ones in each half
    train_rows = {image.tobytes() for image in train_images}
    assert not any(image.tobytes() in train_rows for image in test_images)  # no test digit is a training digit


def test_scenarios_checker_wants_three_answers_that_name_a_setting(capsys):
    from course_utils import checks

    assert not checks.check_scenarios(None)
    assert not checks.check_scenarios({"screws": "good screws", "bank": "", "coffee": ""})
    assert "screws, bank, coffee" in capsys.readouterr().out
    vague = {k: "a long answer " * 10 for k in checks.SCENARIOS}
    assert not checks.check_scenarios(vague)
    assert "name a setting" in capsys.readouterr().out
    assert checks.check_scenarios(checks.reference_scenarios())
    checks.solution("scenarios")
    assert "fair-trade" in capsys.readouterr().out


def test_contrastive_loss_checker_accepts_the_formula_and_names_mistakes(capsys):
    import torch

    from course_utils import checks, losses

    assert checks.check_contrastive_loss(losses.contrastive_loss)
    assert not checks.check_contrastive_loss(lambda d, s, m: (s * d**2 + (1 - s) * (m - d) ** 2).mean())
    assert "clamp at 0 is missing" in capsys.readouterr().out
    assert not checks.check_contrastive_loss(lambda d, s, m: None)
    # the loss itself: a similar pair costs d^2, a dissimilar one (m - d)^2 inside the margin, 0 beyond
    d, s = torch.tensor([0.5, 0.5, 2.0]), torch.tensor([1.0, 0.0, 0.0])
    assert float(losses.contrastive_loss(d, s, margin=1.0)) == pytest.approx((0.25 + 0.25 + 0.0) / 3)
    with pytest.raises(ValueError, match="same shape"):
        losses.contrastive_loss(d, s[:2])
