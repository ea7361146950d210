"""Convolution and pooling by hand, on plain NumPy arrays (lab 3).

Deep-learning "convolution" is cross-correlation: slide a small kernel over the image and, at
every stop, multiply element by element and add up. This module writes that down twice: first
with loops that read like the lecture slides (`conv2d`, `max_pool2d`), then vectorised with
`sliding_window_view` (`conv2d_fast`, `max_pool2d_fast`), which gives the same numbers much
faster. `conv2d_multi` adds channels and several filters, `conv_transpose2d` runs the operation
backwards (and shows where checkerboard artefacts come from), and `conv_explorer` is a small
ipywidgets app to try kernels, strides and paddings on a real image. `conv_matrix` writes a
convolution as one matrix product, `receptive_field` applies the receptive-field formula to a
stack of layers, and `tf_style_conv2d` runs a TensorFlow-layout convolution with PyTorch.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

if TYPE_CHECKING:
    import ipywidgets
    import torch

KERNELS: dict[str, np.ndarray] = {
    "identity": np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=np.float64),
    "vertical edge": np.array([[1, 0, -1], [1, 0, -1], [1, 0, -1]], dtype=np.float64),
    "horizontal edge": np.array([[1, 1, 1], [0, 0, 0], [-1, -1, -1]], dtype=np.float64),
    "sobel x": np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=np.float64),
    "sobel y": np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=np.float64),
    "blur": np.full((3, 3), 1 / 9),
    "gaussian blur": np.outer([1, 2, 1], [1, 2, 1]) / 16.0,
    "sharpen": np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], dtype=np.float64),
    "outline": np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]], dtype=np.float64),
}
"""Classic 3x3 filters by name: the hand-made ancestors of the filters a CNN learns."""


def output_size(n: int, f: int, padding: int = 0, stride: int = 1) -> int:
    """Output length along one axis of a convolution or pooling (lab 3, exercise 2, derives it).

    `n` is the input size, `f` the kernel (or pooling window) size. Raises a ValueError when the
    kernel does not fit into the padded input, instead of returning a size of zero or less.
    """
    if stride < 1 or padding < 0:
        raise ValueError(f"need stride >= 1 and padding >= 0, got stride={stride}, padding={padding}")
    if f > n + 2 * padding:
        raise ValueError(f"a kernel of size {f} does not fit into an input of size {n} with "
                         f"padding {padding}; use a smaller kernel or more padding")
    return (n + 2 * padding - f) // stride + 1


def _output_shape(shape: tuple[int, ...], window: tuple[int, ...], padding: int, stride: int
                  ) -> tuple[int, int]:
    """(H', W') for an input of spatial `shape` [..., H, W] and a `window` [..., kh, kw]; validates."""
    return (output_size(shape[-2], window[-2], padding, stride),
            output_size(shape[-1], window[-1], padding, stride))


def _check_2d(image: np.ndarray, kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Turn both inputs into float arrays and insist that they are 2-D."""
    image, kernel = np.asarray(image, dtype=np.float64), np.asarray(kernel, dtype=np.float64)
    if image.ndim != 2 or kernel.ndim != 2:
        raise ValueError(f"conv2d works on 2-D arrays [H, W]; got image {image.shape} and kernel "
                         f"{kernel.shape}. For channels use conv2d_multi(image [C,H,W], kernels [F,C,k,k]).")
    return image, kernel


def conv2d(image: np.ndarray, kernel: np.ndarray, stride: int = 1, padding: int = 0) -> np.ndarray:
    """Cross-correlate a 2-D `image` [H, W] with a 2-D `kernel` [kh, kw], written with loops.

    The image is zero-padded by `padding` pixels on every side, then the kernel visits every
    `stride`-th position; each output pixel is sum(window * kernel). Returns a float array
    [H', W'] with H' = output_size(H, kh, padding, stride) (same for W).
    """
    image, kernel = _check_2d(image, kernel)
    kh, kw = kernel.shape
    out_h = output_size(image.shape[0], kh, padding, stride)
    out_w = output_size(image.shape[1], kw, padding, stride)
    padded = np.pad(image, padding)  # [H + 2p, W + 2p]
    out = np.zeros((out_h, out_w))  # [H', W']
    for i in range(out_h):
        for j in range(out_w):
            window = padded[i * stride:i * stride + kh, j * stride:j * stride + kw]  # [kh, kw]
            out[i, j] = np.sum(window * kernel)
    return out


def conv2d_fast(image: np.ndarray, kernel: np.ndarray, stride: int = 1, padding: int = 0) -> np.ndarray:
    """The same as `conv2d`, vectorised: all windows at once with `sliding_window_view`.

    `sliding_window_view` gives a [H'', W'', kh, kw] view of every window without copying;
    slicing with the stride keeps every `stride`-th one, and `einsum` multiplies each window by
    the kernel and sums. Returns [H', W'], identical to `conv2d` up to float rounding.
    """
    image, kernel = _check_2d(image, kernel)
    _output_shape(image.shape, kernel.shape, padding, stride)  # validates the sizes
    padded = np.pad(image, padding)  # [H + 2p, W + 2p]
    windows = sliding_window_view(padded, kernel.shape)[::stride, ::stride]  # [H', W', kh, kw]
    return np.einsum("ijkl,kl->ij", windows, kernel)  # [H', W']


def max_pool2d(image: np.ndarray, size: int = 2, stride: int = 2) -> np.ndarray:
    """Max pooling of a 2-D `image` [H, W] with a `size` x `size` window, written with loops.

    Each output pixel is the largest value of its window; windows start every `stride` pixels.
    Returns [H', W'] with H' = output_size(H, size, 0, stride).
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"max_pool2d works on 2-D arrays [H, W]; got shape {image.shape}")
    out_h, out_w = _output_shape(image.shape, (size, size), 0, stride)
    out = np.zeros((out_h, out_w), dtype=image.dtype)  # [H', W']
    for i in range(out_h):
        for j in range(out_w):
            out[i, j] = image[i * stride:i * stride + size, j * stride:j * stride + size].max()
    return out


def max_pool2d_fast(image: np.ndarray, size: int = 2, stride: int = 2) -> np.ndarray:
    """The same as `max_pool2d`, vectorised with `sliding_window_view`: [H, W] -> [H', W']."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"max_pool2d_fast works on 2-D arrays [H, W]; got shape {image.shape}")
    _output_shape(image.shape, (size, size), 0, stride)  # validates the sizes
    windows = sliding_window_view(image, (size, size))[::stride, ::stride]  # [H', W', size, size]
    return windows.max(axis=(2, 3))  # [H', W']


def conv2d_multi(image: np.ndarray, kernels: np.ndarray, bias: np.ndarray | None = None,
                 stride: int = 1, padding: int = 0) -> np.ndarray:
    """A convolutional layer's forward pass: `image` [C, H, W], `kernels` [F, C, kh, kw] -> [F, H', W'].

    Every filter spans all C input channels: it is convolved with each channel and the C results
    are added (plus `bias[f]`), giving one output channel per filter. This is what
    `torch.nn.Conv2d` computes for one image (without the batch axis).
    """
    image, kernels = np.asarray(image, dtype=np.float64), np.asarray(kernels, dtype=np.float64)
    if image.ndim != 3 or kernels.ndim != 4 or kernels.shape[1] != image.shape[0]:
        raise ValueError(f"need image [C, H, W] and kernels [F, C, kh, kw] with the same C; got "
                         f"{image.shape} and {kernels.shape}")
    _output_shape(image.shape, kernels.shape, padding, stride)  # validates the sizes
    padded = np.pad(image, ((0, 0), (padding, padding), (padding, padding)))  # [C, H+2p, W+2p]
    windows = sliding_window_view(padded, kernels.shape[2:], axis=(1, 2))[:, ::stride, ::stride]  # [C, H', W', kh, kw]
    out = np.einsum("cijkl,fckl->fij", windows, kernels)  # [F, H', W']
    if bias is not None:
        out = out + np.asarray(bias, dtype=np.float64)[:, None, None]  # [F, H', W']
    return out


def _check_transposed(shape: tuple[int, int], window: tuple[int, int], padding: int, stride: int) -> None:
    """Raise a clear ValueError unless stride >= 1 and `padding` leaves a non-empty output."""
    full = min((shape[0] - 1) * stride + window[0], (shape[1] - 1) * stride + window[1])
    if stride < 1 or padding < 0 or 2 * padding >= full:
        raise ValueError(f"need stride >= 1 and 0 <= padding < {(full + 1) // 2} for image {shape} "
                         f"and kernel {window}; got stride={stride}, padding={padding}")


def conv_transpose2d(image: np.ndarray, kernel: np.ndarray, stride: int = 1, padding: int = 0) -> np.ndarray:
    """Transposed convolution of a 2-D `image` [H, W] with `kernel` [kh, kw], written with loops.

    Runs a convolution backwards: every input pixel stamps a copy of the kernel, scaled by its
    value, onto the output, `stride` pixels apart; where stamps overlap they add up. Output is
    [(H - 1) * stride + kh - 2 * padding, ...] (`padding` crops the border, as in PyTorch's
    `conv_transpose2d`). When kh is not a multiple of the stride, some output pixels receive more
    stamps than others: the checkerboard artefact.
    """
    image, kernel = _check_2d(image, kernel)
    kh, kw = kernel.shape
    h, w = image.shape
    _check_transposed(image.shape, kernel.shape, padding, stride)
    out = np.zeros(((h - 1) * stride + kh, (w - 1) * stride + kw))  # [H_full, W_full]
    for i in range(h):
        for j in range(w):
            out[i * stride:i * stride + kh, j * stride:j * stride + kw] += image[i, j] * kernel
    if padding:
        out = out[padding:-padding, padding:-padding]  # [H_full - 2p, W_full - 2p]
    return out


def conv_matrix(kernel: np.ndarray, input_shape: tuple[int, int], stride: int = 1, padding: int = 0) -> np.ndarray:
    """The matrix M [H'*W', H*W] with conv2d(image, kernel, stride, padding).ravel() == M @ image.ravel().

    Row r belongs to output pixel r (row-major order) and holds the kernel's weights in the columns of
    the input pixels that pixel reads; every other entry is 0 (taps that land on the zero padding are
    dropped, since they multiply a zero). `M.T` maps an output back to the input's shape: that product
    is the transposed convolution, `conv_transpose2d(output, kernel, stride, padding)`, whenever that
    has the input's size (PyTorch's `output_padding` covers the other cases).
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim != 2 or len(input_shape) != 2:
        raise ValueError(f"conv_matrix needs a 2-D kernel [kh, kw] and an input shape (H, W); got kernel "
                         f"{kernel.shape} and input shape {tuple(input_shape)}")
    (h, w), (kh, kw) = input_shape, kernel.shape
    out_h, out_w = _output_shape((h, w), kernel.shape, padding, stride)
    matrix = np.zeros((out_h * out_w, h * w))  # [H'W', HW]
    for i in range(out_h):
        for j in range(out_w):
            for u in range(kh):
                for v in range(kw):
                    y, x = i * stride + u - padding, j * stride + v - padding  # the input pixel under K[u, v]
                    if 0 <= y < h and 0 <= x < w:
                        matrix[i * out_w + j, y * w + x] = kernel[u, v]
    return matrix


def receptive_field(kernel_sizes: Sequence[int], strides: Sequence[int],
                    dilations: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """Receptive field and jump after each layer of a chain of convolutions (or poolings): [(r, j), ...].

    The receptive field r is how many input pixels (along one axis) one cell of the layer's output
    depends on; the jump j is the distance, in input pixels, between neighbouring cells of that output.
    Lab 3 (exercise 6) derives the rule; a dilation d spreads a kernel's k cells d steps apart.
    Branches that skip layers (residual connections) add nothing: the longest path counts.
    """
    dilations = [1] * len(kernel_sizes) if dilations is None else list(dilations)
    if not len(kernel_sizes) == len(strides) == len(dilations):
        raise ValueError(f"need one stride (and dilation) per kernel size; got {len(kernel_sizes)} kernel "
                         f"sizes, {len(strides)} strides and {len(dilations)} dilations")
    size, jump, fields = 1, 1, []
    for k, s, d in zip(kernel_sizes, strides, dilations):
        if k < 1 or s < 1 or d < 1:
            raise ValueError(f"kernel sizes, strides and dilations must be >= 1; got k={k}, s={s}, d={d}")
        size, jump = size + (k - 1) * d * jump, jump * s
        fields.append((size, jump))
    return fields


def _same_padding(n: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow's "SAME" padding along one axis: (before, after), the extra pixel (if any) after."""
    total = max((-(-n // s) - 1) * s + k - n, 0)  # output ceil(n / s) needs this much padding
    return total // 2, total - total // 2


def tf_style_conv2d(inputs: torch.Tensor, filters: torch.Tensor, strides: Sequence[int] = (1, 1, 1, 1),
                    padding: str = "VALID") -> torch.Tensor:
    """`tf.nn.conv2d(inputs, filters, strides, padding)` written with PyTorch: TensorFlow layouts in and out.

    `inputs` is NHWC [B, H, W, C_in] and `filters` HWIO [kh, kw, C_in, C_out], as in TensorFlow;
    `strides` is [1, s_h, s_w, 1]; `padding` is "VALID" (none) or "SAME" (output ceil(H / s_h) x
    ceil(W / s_w), the odd extra pixel of padding at the bottom and right, as TensorFlow does). We
    permute to PyTorch's NCHW and OIHW, call `F.conv2d`, and permute the result back to NHWC
    [B, H', W', C_out].
    """
    import torch.nn.functional as F

    if inputs.dim() != 4 or filters.dim() != 4 or inputs.shape[3] != filters.shape[2]:
        raise ValueError(f"need inputs NHWC [B, H, W, C] and filters HWIO [kh, kw, C, C_out] with the same C; "
                         f"got {tuple(inputs.shape)} and {tuple(filters.shape)}")
    if len(strides) != 4 or strides[0] != 1 or strides[3] != 1 or padding not in ("SAME", "VALID"):
        raise ValueError(f"need strides [1, s_h, s_w, 1] and padding 'SAME' or 'VALID'; got {list(strides)}, {padding!r}")
    x = inputs.permute(0, 3, 1, 2)  # [B, C_in, H, W]: NHWC -> NCHW
    weight = filters.permute(3, 2, 0, 1)  # [C_out, C_in, kh, kw]: HWIO -> OIHW
    if padding == "SAME":
        (top, bottom), (left, right) = (_same_padding(x.shape[2], weight.shape[2], strides[1]),
                                        _same_padding(x.shape[3], weight.shape[3], strides[2]))
        x = F.pad(x, (left, right, top, bottom))  # [B, C_in, H + pad, W + pad]
    out = F.conv2d(x, weight, stride=(strides[1], strides[2]))  # [B, C_out, H', W']
    return out.permute(0, 2, 3, 1)  # [B, H', W', C_out]: NCHW -> NHWC


def upsample_nearest(image: np.ndarray, factor: int = 2) -> np.ndarray:
    """Nearest-neighbour upsampling: repeat every pixel `factor` x `factor` times, [H, W] -> [H*f, W*f]."""
    if np.ndim(image) != 2 or factor < 1:
        raise ValueError(f"upsample_nearest needs a 2-D array [H, W] and factor >= 1; got shape "
                         f"{np.shape(image)} and factor {factor}")
    return np.repeat(np.repeat(np.asarray(image), factor, axis=0), factor, axis=1)


def _to_png(array: np.ndarray) -> bytes:
    """Min-max scale a 2-D array to 0..255 and encode it as PNG bytes (for an ipywidgets Image)."""
    from PIL import Image

    low, high = float(array.min()), float(array.max())
    scaled = (array - low) / (high - low) if high > low else np.zeros_like(array)
    buffer = io.BytesIO()
    Image.fromarray((scaled * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def conv_explorer(image: np.ndarray, kernels: dict[str, np.ndarray] | None = None,
                  pixels_per_value: int = 2) -> ipywidgets.VBox:
    """An ipywidgets app: pick a kernel, a stride and a padding with sliders, see the output.

    `image` is a 2-D grayscale array [H, W]. Returns an `ipywidgets.VBox` holding three sliders
    (kernel, stride, padding), the input and output images side by side, and a text line
    `output shape: (H', W')` that updates with every slider move. Input and output are drawn at
    the same scale, `pixels_per_value` screen pixels per array value, so a stride of 2 shows a
    half-size output and padding a larger one. Display it in a notebook cell (it is also usable
    without a browser: change `box.children[0].value` and read the text).
    """
    import ipywidgets as widgets

    kernels = kernels or KERNELS
    image = np.asarray(image, dtype=np.float64)
    kernel_slider = widgets.SelectionSlider(options=list(kernels), value=next(iter(kernels)),
                                            description="kernel", continuous_update=False)
    stride_slider = widgets.IntSlider(value=1, min=1, max=4, description="stride", continuous_update=False)
    padding_slider = widgets.IntSlider(value=0, min=0, max=4, description="padding", continuous_update=False)
    shape_text = widgets.HTML()

    def layout(shape: tuple[int, ...]) -> dict[str, str]:
        """Screen size of an array of `shape` [H, W] at the common scale (no stretching)."""
        return {"width": f"{shape[1] * pixels_per_value}px", "height": f"{shape[0] * pixels_per_value}px",
                "object_fit": "fill", "margin": "0 12px 0 0"}

    before = widgets.Image(value=_to_png(image), format="png", layout=layout(image.shape))
    after = widgets.Image(format="png", layout=layout(image.shape))

    def update(_change: object = None) -> None:
        out = conv2d_fast(image, kernels[kernel_slider.value], stride_slider.value, padding_slider.value)  # [H', W']
        after.value = _to_png(out)
        after.layout.width, after.layout.height = layout(out.shape)["width"], layout(out.shape)["height"]
        shape_text.value = (f"input shape: {image.shape} &rarr; <b>output shape: {out.shape}</b> "
                            f"(both drawn at {pixels_per_value} screen pixels per value)")

    for slider in (kernel_slider, stride_slider, padding_slider):
        slider.observe(update, names="value")
    update()
    return widgets.VBox([kernel_slider, stride_slider, padding_slider,
                         widgets.HBox([before, after], layout={"align_items": "flex-start"}), shape_text])
