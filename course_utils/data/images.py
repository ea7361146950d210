"""Reading one image or mask file (any mode, any size), bringing it to a model's size (pad, crop or stretch) and back,
and turning uint8 images into normalised floats."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _image_files(folder: Path) -> list[Path]:
    """The image files directly inside `folder`, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def read_image(path: str | Path, image_size: int | tuple[int, int] | None = None,
               resize: str = "stretch") -> torch.Tensor:
    """Read an image file as float RGB [3, H, W] in [0, 1] (or [3, S, S] with `image_size=S`).

    PNG, JPG, BMP and TIFF all work. Grayscale becomes 3 equal channels, RGBA is composited on
    black (transparent = black), palette images are expanded, 16-bit images are scaled by
    1/65535. With `image_size` (S or (H, W)) the image is brought to that size by `resize`
    ("stretch": plain resize, whatever its aspect ratio; "pad": aspect kept, black borders;
    "crop": aspect kept, centre crop; see `fit_to_size`). A missing or corrupt file raises an
    error naming the file.
    """
    image = torch.from_numpy(_open_rgb(Path(path))).permute(2, 0, 1)  # [3, H, W]
    if image_size is not None:
        image = fit_to_size(image, image_size, resize)  # [3, S, S]
    return image


def _open_rgb(path: Path) -> np.ndarray:
    """Open `path` with Pillow and return float32 [H, W, 3] in [0, 1]; clear errors on failure."""
    if not path.is_file():
        raise FileNotFoundError(f"Image file {path} does not exist; check the path.")
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so that a truncated file fails here
            return _to_rgb_array(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(
            f"Cannot read image file {path}: it is corrupt or not an image ({err}). "
            "Delete or replace this file, then run again.") from None


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """Any Pillow image -> float32 [H, W, 3] in [0, 1]."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):  # 16-bit, 32-bit or float gray
        gray = np.asarray(img, dtype=np.float32)  # [H, W]
        if img.mode != "F":
            gray = gray / (65535.0 if img.mode.startswith("I;16") or gray.max() > 255 else 255.0)
        return np.repeat(np.clip(gray, 0, 1)[:, :, None], 3, axis=2)  # [H, W, 3]
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0  # [H, W, 4]
        return rgba[:, :, :3] * rgba[:, :, 3:]  # composite on black
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0  # [H, W, 3]


RESIZE_MODES = ("pad", "crop", "stretch")


class Placement(NamedTuple):
    """Where an image of `original` size (H, W) lies once brought to the model's `size` (S_h, S_w):
    scaled to `scaled` (h, w), its top-left corner at (`top`, `left`) of the model's canvas
    (negative when `crop` cut the borders off)."""

    original: tuple[int, int]
    size: tuple[int, int]
    scaled: tuple[int, int]
    top: int
    left: int


def _size_pair(size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) from S or (H, W)."""
    return (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


def placement(original: Sequence[int], size: int | Sequence[int], resize: str = "pad") -> Placement:
    """How `fit_to_size` brings an image of `original` (H, W) to `size` (S or (S_h, S_w)).

    "stretch" resizes to the size (the aspect ratio changes); "pad" scales by min(S_h/H, S_w/W)
    and centres the image on a black canvas (nothing lost, some canvas wasted); "crop" scales by
    max(S_h/H, S_w/W) and keeps the centre (nothing wasted, the borders lost).
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, not {resize!r}.")
    (h, w), (sh, sw) = _size_pair(original), _size_pair(size)
    if resize == "stretch":
        return Placement((h, w), (sh, sw), (sh, sw), 0, 0)
    scale = min(sh / h, sw / w) if resize == "pad" else max(sh / h, sw / w)
    scaled = (max(1, round(h * scale)), max(1, round(w * scale)))
    if resize == "pad":
        scaled = (min(scaled[0], sh), min(scaled[1], sw))
    else:
        scaled = (max(scaled[0], sh), max(scaled[1], sw))
    return Placement((h, w), (sh, sw), scaled, (sh - scaled[0]) // 2, (sw - scaled[1]) // 2)


def _place(x: torch.Tensor, where: Placement) -> torch.Tensor:
    """Put x [C, h, w] (already at `where.scaled`) on the model's canvas [C, S_h, S_w]: pad with 0 or crop."""
    (sh, sw), (h, w) = where.size, where.scaled
    if where.top >= 0 and where.left >= 0:  # pad (or stretch: no-op)
        return F.pad(x, (where.left, sw - w - where.left, where.top, sh - h - where.top))  # [C, S_h, S_w]
    return x[:, -where.top:-where.top + sh, -where.left:-where.left + sw]  # [C, S_h, S_w]


def fit_to_size(image: torch.Tensor, size: int | Sequence[int], resize: str = "pad") -> torch.Tensor:
    """Bring a float image [C, H, W] in [0, 1] to the model's size [C, S_h, S_w] by `resize` ("pad", "crop", "stretch").

    Bilinear, antialiased; `placement` says where the image lands, `map_to_image` undoes it for an anomaly map.
    """
    where = placement(image.shape[-2:], size, resize)
    if tuple(image.shape[-2:]) != where.scaled:
        image = F.interpolate(image[None].float(), size=where.scaled, mode="bilinear", antialias=True,
                              align_corners=False)[0].clamp(0.0, 1.0)  # [C, h, w]
    return _place(image, where)  # [C, S_h, S_w]


def fit_mask_to_size(mask: torch.Tensor, size: int | Sequence[int], resize: str = "pad") -> torch.Tensor:
    """A binary mask [H, W] brought to [S_h, S_w] exactly as `fit_to_size` brings its image (`resize_mask` scaling)."""
    where = placement(mask.shape, size, resize)
    return _place(resize_mask(mask, where.scaled)[None], where)[0]  # [S_h, S_w]


def map_to_image(maps: torch.Tensor, original: Sequence[int], resize: str = "pad") -> torch.Tensor:
    """Anomaly maps [N, S_h, S_w] of images brought to the model by `fit_to_size`, back at the images' own size [N, H, W].

    "pad": the canvas is cut back to the image; "crop": the lost borders take the nearest map
    value (the model never saw them); then a bilinear resize to (H, W).
    """
    where = placement(original, maps.shape[-2:], resize)
    (sh, sw), (h, w) = where.size, where.scaled
    x = maps[:, None]  # [N, 1, S_h, S_w]
    if where.top >= 0 and where.left >= 0:
        x = x[..., where.top:where.top + h, where.left:where.left + w]  # [N, 1, h, w]
    else:
        x = F.pad(x, (-where.left, w - sw + where.left, -where.top, h - sh + where.top), mode="replicate")  # [N, 1, h, w]
    if tuple(x.shape[-2:]) != where.original:
        x = F.interpolate(x, size=where.original, mode="bilinear", align_corners=False)  # [N, 1, H, W]
    return x[:, 0]  # [N, H, W]


def read_mask(path: str | Path, image_size: int | tuple[int, int] | None = None,
              resize: str = "stretch") -> torch.Tensor:
    """Read a ground-truth mask as float [H, W] in {0, 1}, brought to `image_size` as its image (`fit_mask_to_size`).

    Pixels brighter than half the mask's maximum count as defect, so 0/255 and 0/1 masks both
    work; an all-black mask stays empty.
    """
    rgb = _open_rgb(Path(path))  # [H, W, 3]
    mask = torch.from_numpy(rgb.max(axis=2))  # [H, W]
    mask = (mask > 0.5 * mask.max().clamp(min=1e-6)).float()  # [H, W] in {0, 1}
    return mask if image_size is None else fit_mask_to_size(mask, image_size, resize)  # [S, S]


def resize_mask(mask: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """A binary mask [H, W] at [size, size] (or `size` = (h, w)): shrunk so that thin defects stay connected.

    Shrinking with nearest neighbour keeps one pixel in k and turns a 1-pixel crack into dots;
    here a pixel of the small mask is defect if any pixel it covers is (max pooling), so a thin
    line stays a line and a region grows by at most one pixel at its edge. Enlarging uses nearest
    neighbour.
    """
    if mask.ndim != 2:
        raise ValueError(f"resize_mask takes one mask [H, W], got shape {tuple(mask.shape)}.")
    size = _size_pair(size)
    if tuple(mask.shape) == size:
        return mask
    x = mask[None, None].float()  # [1, 1, H, W]
    if mask.shape[0] > size[0] or mask.shape[1] > size[1]:
        x = F.adaptive_max_pool2d(x, (min(size[0], mask.shape[0]), min(size[1], mask.shape[1])))  # shrink first
    return F.interpolate(x, size=size, mode="nearest")[0, 0]  # [h, w]


def normalize_uint8(images: torch.Tensor, mean: Sequence[float] | None = None,
                    std: Sequence[float] | None = None) -> torch.Tensor:
    """uint8 images [..., C, H, W] -> float32: divided by 255, then `(x - mean) / std` per channel.

    Without `mean`/`std` the result is in [0, 1]; with them (e.g. `CIFAR10_MEAN`, `CIFAR10_STD`)
    each channel is standardised, as the networks of labs 2-4 expect. Works on one image
    [C, H, W] or a batch [N, C, H, W].
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"normalize_uint8 wants uint8 images (0..255), got {images.dtype}; "
                        "images that are already float in [0, 1] need only `(x - mean) / std`.")
    if (mean is None) != (std is None):
        raise ValueError("Pass both mean and std (one value per channel), or neither.")
    x = images.float() / 255  # [..., C, H, W] in [0, 1]
    if mean is None:
        return x
    if len(mean) != x.shape[-3] or len(std) != x.shape[-3]:
        raise ValueError(f"mean and std need one value per channel ({x.shape[-3]}), "
                         f"got {len(mean)} and {len(std)}.")
    mean_t = torch.tensor(mean, dtype=x.dtype).view(-1, 1, 1)  # [C, 1, 1]
    std_t = torch.tensor(std, dtype=x.dtype).view(-1, 1, 1)  # [C, 1, 1]
    return (x - mean_t) / std_t  # [..., C, H, W]


def paste_on_canvas(images: torch.Tensor, canvas: int = 64, sizes: tuple[int, int] = (20, 40),
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste each image, resized, at a random place on a dark canvas: a data set for localisation.

    `images` uint8 [N, C, H, W] -> (canvases uint8 [N, C, canvas, canvas], boxes float32 [N, 4]).
    Each image is resized to a random side in `sizes` (inclusive) and put at a random position;
    its box is (x0, y0, x1, y1) as fractions of the canvas side (0..1), the format of
    `cu.metrics.box_iou`. The background is dark noise, so the box is learnable but not trivial.
    The same `seed` gives the same canvases.
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise TypeError(f"paste_on_canvas wants uint8 images [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
    low, high = sizes
    if not 1 <= low <= high <= canvas:
        raise ValueError(f"sizes must satisfy 1 <= low <= high <= canvas ({canvas}), got {sizes}")
    g = torch.Generator().manual_seed(seed)
    n, c = images.shape[:2]
    out = torch.randint(0, 40, (n, c, canvas, canvas), generator=g, dtype=torch.uint8)  # [N, C, S, S] dark noise
    sides = torch.randint(low, high + 1, (n,), generator=g)  # [N]
    corners = (torch.rand(n, 2, generator=g) * (canvas - sides + 1)[:, None]).long()  # [N, 2] = (x0, y0)
    for side in sides.unique().tolist():  # resize all images of one side at once
        index = (sides == side).nonzero().flatten()
        resized = F.interpolate(images[index].float(), size=(side, side), mode="bilinear", align_corners=False)
        resized = resized.round().clamp(0, 255).to(torch.uint8)  # [n_side, C, side, side]
        for i, patch in zip(index.tolist(), resized):
            x0, y0 = corners[i].tolist()
            out[i, :, y0:y0 + side, x0:x0 + side] = patch
    boxes = torch.cat([corners, corners + sides[:, None]], dim=1).float() / canvas  # [N, 4] = (x0, y0, x1, y1)
    return out, boxes
