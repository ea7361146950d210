"""course_utils.conv: the lecture slides' tables, exactly, and agreement with PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from course_utils import conv

SLIDE_IMAGE = np.array([[1, 3, 1, 2], [6, 1, 5, 4], [5, 4, 2, 5], [3, 3, 1, 2]])
SLIDE_KERNEL = np.array([[1, 2], [2, 1]])
CONVS = [conv.conv2d, conv.conv2d_fast]


@pytest.mark.parametrize("fn", CONVS)
def test_vertical_edge_slide(fn):
    image = np.tile([10, 10, 10, 0, 0, 0], (5, 1))  # [5, 6]
    out = fn(image, conv.KERNELS["vertical edge"])
    np.testing.assert_array_equal(out, np.tile([0, 30, 30, 0], (3, 1)))


@pytest.mark.parametrize("fn", CONVS)
@pytest.mark.parametrize("stride, padding, expected", [
    (1, 0, [[20, 12, 19], [22, 21, 22], [22, 15, 16]]),
    # The slide prints 4 in row 0, column 1: 1*2 + 3*1 = 5 is right.
    (1, 1, [[1, 5, 7, 4, 4], [8, 20, 12, 19, 10], [17, 22, 21, 22, 14], [13, 22, 15, 16, 9], [6, 9, 5, 5, 2]]),
    (2, 1, [[1, 7, 4], [17, 21, 14], [6, 5, 2]]),
])
def test_center_matters_slides(fn, stride, padding, expected):
    np.testing.assert_array_equal(fn(SLIDE_IMAGE, SLIDE_KERNEL, stride=stride, padding=padding), expected)


@pytest.mark.parametrize("fn", [conv.max_pool2d, conv.max_pool2d_fast])
def test_max_pool_slide(fn):
    np.testing.assert_array_equal(fn(SLIDE_IMAGE, size=2, stride=1), [[6, 5, 5], [6, 5, 5], [5, 4, 5]])
    np.testing.assert_array_equal(fn(SLIDE_IMAGE, size=2, stride=2), [[6, 5], [5, 5]])


@pytest.mark.parametrize("n, f, p, s, expected", [
    (6, 3, 0, 1, 4), (5, 3, 0, 1, 3), (4, 2, 0, 1, 3), (4, 2, 1, 1, 5), (4, 2, 1, 2, 3), (7, 3, 0, 2, 3),
    (32, 5, 0, 1, 28), (224, 3, 1, 2, 112),
])
def test_output_size(n, f, p, s, expected):
    assert conv.output_size(n, f, p, s) == expected
    shape = conv.conv2d_fast(np.ones((n, n)), np.ones((f, f)), stride=s, padding=p).shape
    assert shape == (expected, expected)


def test_output_size_rejects_a_kernel_that_does_not_fit():
    with pytest.raises(ValueError, match="does not fit"):
        conv.output_size(3, 5)
    with pytest.raises(ValueError, match="2-D"):
        conv.conv2d(np.ones((3, 4, 4)), np.ones((3, 3)))
    with pytest.raises(ValueError, match="does not fit"):
        conv.conv2d_multi(np.ones((1, 2, 2)), np.ones((4, 1, 3, 3)))
    with pytest.raises(ValueError, match="padding"):
        conv.conv_transpose2d(np.ones((3, 3)), np.ones((2, 2)), stride=1, padding=2)
    with pytest.raises(ValueError, match="2-D"):
        conv.upsample_nearest(np.ones(3))


@pytest.mark.parametrize("stride, padding", [(1, 0), (2, 1), (3, 2)])
def test_conv2d_matches_torch(stride, padding):
    rng = np.random.default_rng(stride + padding)
    image, kernel = rng.normal(size=(11, 9)), rng.normal(size=(3, 4))
    expected = F.conv2d(torch.tensor(image)[None, None], torch.tensor(kernel)[None, None],
                        stride=stride, padding=padding)[0, 0].numpy()
    np.testing.assert_allclose(conv.conv2d(image, kernel, stride, padding), expected, atol=1e-12)
    np.testing.assert_allclose(conv.conv2d_fast(image, kernel, stride, padding), expected, atol=1e-12)


@pytest.mark.parametrize("size, stride", [(2, 2), (3, 1), (3, 2)])
def test_max_pool_matches_torch(size, stride):
    image = np.random.default_rng(size * stride).normal(size=(10, 13))
    expected = F.max_pool2d(torch.tensor(image)[None, None], size, stride)[0, 0].numpy()
    np.testing.assert_array_equal(conv.max_pool2d(image, size, stride), expected)
    np.testing.assert_array_equal(conv.max_pool2d_fast(image, size, stride), expected)


def test_conv2d_multi_matches_torch_conv_layer():
    rng = np.random.default_rng(0)
    image, kernels, bias = rng.normal(size=(3, 8, 7)), rng.normal(size=(5, 3, 3, 3)), rng.normal(size=5)
    expected = F.conv2d(torch.tensor(image)[None], torch.tensor(kernels), torch.tensor(bias),
                        stride=2, padding=1)[0].numpy()  # [5, 4, 4]
    out = conv.conv2d_multi(image, kernels, bias, stride=2, padding=1)
    assert out.shape == (5, 4, 4)
    np.testing.assert_allclose(out, expected, atol=1e-12)


def test_conv2d_multi_is_a_sum_of_2d_convolutions():
    rng = np.random.default_rng(1)
    image, kernels = rng.normal(size=(2, 6, 6)), rng.normal(size=(1, 2, 3, 3))
    by_channel = conv.conv2d(image[0], kernels[0, 0]) + conv.conv2d(image[1], kernels[0, 1])
    np.testing.assert_allclose(conv.conv2d_multi(image, kernels)[0], by_channel, atol=1e-12)


@pytest.mark.parametrize("stride, padding", [(1, 0), (2, 0), (2, 1), (3, 1)])
def test_conv_transpose_matches_torch(stride, padding):
    rng = np.random.default_rng(stride)
    image, kernel = rng.normal(size=(5, 4)), rng.normal(size=(3, 3))
    expected = F.conv_transpose2d(torch.tensor(image)[None, None], torch.tensor(kernel)[None, None],
                                  stride=stride, padding=padding)[0, 0].numpy()
    np.testing.assert_allclose(conv.conv_transpose2d(image, kernel, stride, padding), expected, atol=1e-12)


def test_conv_transpose_checkerboard_and_its_fix():
    ones = np.ones((6, 6))
    stamped = conv.conv_transpose2d(ones, np.ones((3, 3)), stride=2)[2:-2, 2:-2]  # interior
    assert stamped.min() == 1 and stamped.max() == 4  # uneven overlap: a checkerboard
    smooth = conv.conv2d(conv.upsample_nearest(ones, 2), np.ones((3, 3)) / 9, padding=0)
    np.testing.assert_allclose(smooth, 1.0)  # upsample, then convolve: flat stays flat


def test_conv_explorer_updates_output_and_shape_text():
    pytest.importorskip("ipywidgets")
    box = conv.conv_explorer(np.random.default_rng(0).random((40, 30)))
    kernel, stride, padding, images, text = box.children
    assert "output shape: (38, 28)" in text.value
    first_png = images.children[1].value
    stride.value, padding.value = 2, 1
    assert "output shape: (20, 15)" in text.value
    kernel.value = "sharpen"
    assert images.children[1].value != first_png
    before, after = images.children  # same scale: the stride-2 output is drawn half as wide as the input
    assert before.layout.width == "60px" and after.layout.width == "30px" and after.layout.height == "40px"


@pytest.mark.parametrize("stride, padding", [(1, 0), (2, 1), (1, 1), (3, 2)])
def test_conv_matrix_product_is_the_convolution_and_its_transpose_the_transposed_one(stride, padding):
    rng = np.random.default_rng(stride + padding)
    image, kernel = rng.normal(size=(7, 7)), rng.normal(size=(3, 3))
    matrix = conv.conv_matrix(kernel, image.shape, stride, padding)  # [H'W', HW]
    out_shape = (conv.output_size(7, 3, padding, stride),) * 2
    expected = F.conv2d(torch.tensor(image)[None, None], torch.tensor(kernel)[None, None], stride=stride,
                        padding=padding)[0, 0].numpy()
    np.testing.assert_allclose((matrix @ image.ravel()).reshape(out_shape), expected, atol=1e-12)
    grad = rng.normal(size=out_shape)
    extra = 7 - ((out_shape[0] - 1) * stride - 2 * padding + 3)  # what output_padding must add back
    transposed = F.conv_transpose2d(torch.tensor(grad)[None, None], torch.tensor(kernel)[None, None], stride=stride,
                                    padding=padding, output_padding=extra)[0, 0].numpy()
    np.testing.assert_allclose((matrix.T @ grad.ravel()).reshape(7, 7), transposed, atol=1e-12)


def test_conv_matrix_of_the_slides_example_has_the_kernel_in_every_row():
    matrix = conv.conv_matrix(SLIDE_KERNEL, (4, 4))
    assert matrix.shape == (9, 16) and ((matrix != 0).sum(axis=1) == 4).all()
    assert ((matrix @ SLIDE_IMAGE.ravel()).reshape(3, 3) == [[20, 12, 19], [22, 21, 22], [22, 15, 16]]).all()
    with pytest.raises(ValueError, match="does not fit"):
        conv.conv_matrix(np.ones((5, 5)), (4, 4))


def test_receptive_field_formula_matches_the_gradient_of_a_random_conv_stack():
    torch.manual_seed(0)
    specs = [(3, 1), (3, 2), (5, 1), (2, 2), (3, 1)]  # (kernel, stride)
    net = torch.nn.Sequential(*[torch.nn.Conv2d(1, 1, k, s) for k, s in specs]).double()
    x = torch.randn(1, 1, 64, 64, dtype=torch.float64, requires_grad=True)
    out = net(x)  # [1, 1, h, w]
    out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
    rows = torch.nonzero(x.grad[0, 0].abs().sum(dim=1)).flatten()
    fields = conv.receptive_field([k for k, _ in specs], [s for _, s in specs])
    assert fields[-1] == (int(rows[-1] - rows[0] + 1), 4)  # measured extent, and jump 1*2*1*2*1
    assert conv.receptive_field([3, 3], [1, 1], dilations=[1, 2]) == [(3, 1), (7, 1)]
    with pytest.raises(ValueError, match="one stride"):
        conv.receptive_field([3, 3], [1])


@pytest.mark.parametrize("padding, size, stride", [("SAME", 32, 2), ("SAME", 7, 3), ("VALID", 9, 2), ("SAME", 8, 1)])
def test_tf_style_conv2d_matches_an_nhwc_numpy_convolution(padding, size, stride):
    rng = np.random.default_rng(size)
    images, filters = rng.normal(size=(2, size, size + 1, 3)), rng.normal(size=(5, 4, 3, 6))  # NHWC, HWIO
    out = conv.tf_style_conv2d(torch.tensor(images), torch.tensor(filters), [1, stride, stride, 1], padding).numpy()
    if padding == "SAME":
        assert out.shape == (2, -(-size // stride), -(-(size + 1) // stride), 6)  # TensorFlow's ceil(n / s)
        pad = [(0, 0), conv._same_padding(size, 5, stride), conv._same_padding(size + 1, 4, stride), (0, 0)]
        images = np.pad(images, pad)
    windows = np.lib.stride_tricks.sliding_window_view(images, (5, 4), axis=(1, 2))[:, ::stride, ::stride]
    expected = np.einsum("bhwcuv,uvco->bhwo", windows, filters)  # [B, H', W', C_out], straight from the definition
    np.testing.assert_allclose(out, expected, atol=1e-10)
    with pytest.raises(ValueError, match="NHWC"):
        conv.tf_style_conv2d(torch.tensor(images).permute(0, 3, 1, 2), torch.tensor(filters))
