"""The offline defect data set: scikit-image texture photos with synthetic defects whose masks are exact.

`make_defect_dataset` writes an MVTec-layout data set made from the real texture photos that
scikit-image ships, with synthetic scratches, cracks, stains and cut-and-paste patches;
`add_defect` paints one defect on one image; `cut_paste` makes CutPaste-style synthetic defects in
image tensors (labs 5 and 7).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

TEXTURES = ("brick", "grass", "gravel")
DEFECT_KINDS = ("scratch", "crack", "stain", "patch")
_TINTS = {"brick": (1.0, 0.78, 0.66), "grass": (0.80, 0.95, 0.62), "gravel": (0.95, 0.93, 0.88)}


def make_defect_dataset(root: str | Path, texture: str = "brick", n_train: int = 80,
                        n_test: int = 48, image_size: int = 128, seed: int = 0) -> Path:
    """Write an MVTec-layout defect data set made from a real scikit-image texture photo.

    Layout: `train/good` (`n_train` images), `test/good` (a quarter of `n_test`),
    `test/<kind>` and `ground_truth/<kind>/NNN_mask.png` for the rest, spread evenly over the
    kinds scratch, crack, stain and patch and, within each kind, from subtle to obvious.
    Every image is a random crop of the photo (random flips, brightness jitter), tinted and
    resized to `image_size`; masks are exact (white = the region the defect painted; nothing
    outside it changed).
    Same arguments, same bytes. A folder written earlier with the same arguments is reused.
    The defaults (80 + 48 images at 128 px, a few seconds to write) keep labs 5-7 fast on a CPU.
    """
    if texture not in TEXTURES:
        raise ValueError(f"texture must be one of {TEXTURES}, not {texture!r}.")
    root = Path(root)
    settings = {"texture": texture, "n_train": n_train, "n_test": n_test,
                "image_size": image_size, "seed": seed, "version": 2}
    if _reuse_or_clear(root, settings):
        return root
    photos = {name: _texture_photo(name) for name in TEXTURES}
    for i in range(n_train):
        _save_png(_texture_crop(photos[texture], texture, image_size, _rng(seed, 0, i)),
                  root / "train" / "good" / f"{i:03d}.png")
    n_good = max(1, n_test // 4)
    for i in range(n_good):
        _save_png(_texture_crop(photos[texture], texture, image_size, _rng(seed, 1, i)),
                  root / "test" / "good" / f"{i:03d}.png")
    for j in range(n_test - n_good):
        _write_defective(root, j, n_test - n_good, photos, texture, image_size, _rng(seed, 2, j))
    (root / "dataset.json").write_text(json.dumps(settings, indent=1))
    print(f"Wrote the '{texture}' defect data set to {root} ({n_train} train, {n_test} test).")
    return root


def _write_defective(root: Path, j: int, n_defective: int, photos: dict[str, np.ndarray],
                     texture: str, size: int, rng: np.random.Generator) -> None:
    """Write defective test image `j` and its mask: kinds take turns, severity grows per kind."""
    n_kinds = len(DEFECT_KINDS)
    kind, number = DEFECT_KINDS[j % n_kinds], j // n_kinds
    severity = (number + 0.5) / len(range(j % n_kinds, n_defective, n_kinds))  # 0 subtle..1 obvious
    clean = _texture_crop(photos[texture], texture, size, rng)  # [S, S, 3]
    image, mask = add_defect(clean, kind, severity, rng, photos, texture)  # [S, S, 3], [S, S]
    _save_png(image, root / "test" / kind / f"{number:03d}.png")
    mask_path = root / "ground_truth" / kind / f"{number:03d}_mask.png"
    _save_png(mask[:, :, None].astype(np.float32), mask_path, gray=True)  # 0 / 255


def _reuse_or_clear(root: Path, settings: dict) -> bool:
    """True if `root` holds this data set already; clear an older version; refuse other folders."""
    marker = root / "dataset.json"
    if marker.exists():
        if json.loads(marker.read_text()) == settings:
            return True
        for sub in ("train", "test", "ground_truth"):
            shutil.rmtree(root / sub, ignore_errors=True)
        marker.unlink()
    elif root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty and was not written by make_defect_dataset; "
                              "choose an empty or new folder.")
    return False


def _rng(seed: int, split: int, index: int) -> np.random.Generator:
    """An independent random generator per image, so each image depends only on its own seed."""
    return np.random.default_rng([seed, split, index])


def _texture_photo(name: str) -> np.ndarray:
    """The 512x512 grayscale texture photo from `skimage.data` as float32 [512, 512] in [0, 1]."""
    import skimage.data

    return getattr(skimage.data, name)().astype(np.float32) / 255.0


def _texture_crop(photo: np.ndarray, texture: str, size: int, rng: np.random.Generator,
                  crop: int | None = None) -> np.ndarray:
    """A random `crop`-pixel crop of a texture photo: flipped, brightness-jittered, tinted and
    resized to float [S, S, 3]. By default `crop` is 34-42% of the photo (~170-215 px)."""
    from skimage.transform import resize

    crop = crop or int(rng.uniform(0.34, 0.42) * photo.shape[0])
    top, left = rng.integers(0, photo.shape[0] - crop, size=2)
    gray = photo[top:top + crop, left:left + crop]
    if rng.random() < 0.5:
        gray = gray[:, ::-1]  # left-right flip (brick rows stay horizontal)
    if rng.random() < 0.5:
        gray = gray[::-1, :]
    gray = resize(gray, (size, size), order=1, anti_aliasing=True)  # [S, S]
    gray = gray * rng.uniform(0.93, 1.07) + rng.uniform(-0.03, 0.03)  # brightness jitter
    rgb = gray[:, :, None] * np.array(_TINTS[texture], dtype=np.float32)  # [S, S, 3]
    return np.clip(rgb, 0, 1).astype(np.float32)


def _save_png(image: np.ndarray, path: Path, gray: bool = False) -> None:
    """Save float [H, W, 3] in [0, 1] as an 8-bit PNG (grayscale with `gray=True`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    Image.fromarray(pixels[:, :, 0] if gray else pixels).save(path, format="PNG")


def add_defect(image: np.ndarray, kind: str, severity: float, rng: np.random.Generator,
               photos: dict[str, np.ndarray] | None = None, texture: str = "brick"
               ) -> tuple[np.ndarray, np.ndarray]:
    """Paint one synthetic defect on float [S, S, 3]; return (image, mask bool [S, S]).

    `kind` is one of `DEFECT_KINDS`; `severity` in [0, 1] sets its size and contrast, from
    subtle (0) to obvious (1). The mask is exactly the region the defect painted: pixels outside
    it are left as they were.
    """
    painters = {"scratch": _scratch, "crack": _crack, "stain": _stain, "patch": _patch}
    if kind not in painters:
        raise ValueError(f"kind must be one of {DEFECT_KINDS}, not {kind!r}.")
    photos = photos or {name: _texture_photo(name) for name in TEXTURES}
    target, mask = painters[kind](image, severity, rng, photos, texture)
    return np.where(mask[:, :, None], target, image).astype(np.float32), mask


def _curve(rng: np.random.Generator, size: int, length: float, bend: float, n_points: int = 60
           ) -> np.ndarray:
    """Points [n, 2] (row, col) of a random, gently bent curve of about `length` pixels."""
    angle = rng.uniform(0, np.pi)
    center = rng.uniform(0.25 * size, 0.75 * size, size=2)
    t = np.linspace(-0.5, 0.5, n_points)[:, None]  # [n, 1]
    direction = np.array([np.sin(angle), np.cos(angle)])
    normal = np.array([direction[1], -direction[0]])
    return center + t * length * direction + (0.25 - t ** 2) * bend * normal  # [n, 2]


def _stroke(points: np.ndarray, size: int, width: float) -> np.ndarray:
    """bool [S, S]: the pixels within `width / 2` of the polyline through `points`."""
    from scipy.ndimage import distance_transform_edt
    from skimage.draw import line

    centre = np.zeros((size, size), dtype=bool)
    pts = np.clip(points.round().astype(int), 0, size - 1)
    for (r0, c0), (r1, c1) in zip(pts[:-1], pts[1:]):
        rr, cc = line(r0, c0, r1, c1)
        centre[rr, cc] = True
    return distance_transform_edt(~centre) <= max(width / 2, 0.5)


def _scratch(image: np.ndarray, severity: float, rng: np.random.Generator,
             photos: dict[str, np.ndarray], texture: str) -> tuple[np.ndarray, np.ndarray]:
    """A thin, slightly bent bright or dark line (a scratch in the surface)."""
    size = image.shape[0]
    length, bend = size * (0.25 + 0.45 * severity), size * rng.uniform(-0.2, 0.2)
    points = _curve(rng, size, length, bend)  # [n, 2]
    mask = _stroke(points, size, width=(1.0 + 1.5 * severity) * size / 128)
    strength = 0.25 + 0.6 * severity
    if rng.random() < 0.6:
        target = image + (1.0 - image) * strength  # bright: towards white
    else:
        target = image * (1.0 - strength)  # dark
    return target, mask


def _crack(image: np.ndarray, severity: float, rng: np.random.Generator,
           photos: dict[str, np.ndarray], texture: str) -> tuple[np.ndarray, np.ndarray]:
    """A dark, jagged polyline (a random walk), sometimes with a branch."""
    size = image.shape[0]
    steps = int(5 + 8 * severity)
    points = [rng.uniform(0.25 * size, 0.75 * size, size=2)]
    heading = rng.uniform(0, 2 * np.pi)
    for _ in range(steps):
        heading += rng.uniform(-0.7, 0.7)
        points.append(points[-1] + size * 0.045 * np.array([np.sin(heading), np.cos(heading)]))
    points = np.array(points)
    mask = _stroke(points, size, width=(1.0 + 2.0 * severity) * size / 128)
    if severity > 0.5:  # a side branch from the middle
        branch = points[steps // 2] + np.cumsum(rng.normal(0, 0.035 * size, (4, 2)), axis=0)
        mask |= _stroke(np.vstack([points[steps // 2], branch]), size, width=size / 128)
    return image * (0.75 - 0.6 * severity), mask


def _stain(image: np.ndarray, severity: float, rng: np.random.Generator,
           photos: dict[str, np.ndarray], texture: str) -> tuple[np.ndarray, np.ndarray]:
    """A blob of altered colour (oil, rust, paint), irregular in outline; texture shows through."""
    from scipy.ndimage import gaussian_filter

    size = image.shape[0]
    radius = size * (0.05 + 0.12 * severity)
    center = rng.uniform(0.2 * size, 0.8 * size, size=2)
    rows, cols = np.mgrid[0:size, 0:size]
    aspect = rng.uniform(0.6, 1.0)
    dist = np.hypot((rows - center[0]) / aspect, cols - center[1]) / radius
    wobble = gaussian_filter(rng.normal(size=(size, size)), sigma=radius / 3)
    mask = dist + 0.2 * wobble / (wobble.std() + 1e-6) < 1.0  # an irregular outline
    colour = np.array([(0.55, 0.35, 0.20), (0.30, 0.30, 0.32), (0.85, 0.45, 0.25),
                       (0.40, 0.55, 0.30)][rng.integers(4)], dtype=np.float32)
    amount = 0.3 + 0.6 * severity
    target = image * (1 - amount) + amount * image.mean(axis=2, keepdims=True) * colour * 1.6
    return target, mask


def _patch(image: np.ndarray, severity: float, rng: np.random.Generator,
           photos: dict[str, np.ndarray], texture: str) -> tuple[np.ndarray, np.ndarray]:
    """A rotated patch cut from another texture (or elsewhere in the same one), blended in."""
    from skimage.transform import rotate

    size = image.shape[0]
    side = int(size * (0.14 + 0.2 * severity))
    source = texture if rng.random() < 0.4 else rng.choice([t for t in TEXTURES if t != texture])
    crop = int(2 * side * 0.38 * photos[texture].shape[0] / size)  # same scale as the image
    piece = _texture_crop(photos[str(source)], texture, 2 * side, rng, crop)  # [2s, 2s, 3]
    piece = rotate(piece, rng.uniform(35, 145), order=1)[side // 2: side // 2 + side,
                                                         side // 2: side // 2 + side]  # [s, s, 3]
    top, left = rng.integers(0, size - side, size=2)
    region = image[top:top + side, left:left + side]
    # Match the region's brightness and contrast, so that only the structure is wrong.
    piece = (piece - piece.mean((0, 1))) / (piece.std((0, 1)) + 1e-6)  # zero mean, unit std
    piece = piece * region.std((0, 1)) + region.mean((0, 1))  # [s, s, 3]
    target = image.copy()
    target[top:top + side, left:left + side] = piece
    mask = np.zeros((size, size), dtype=bool)
    mask[top:top + side, left:left + side] = True
    return target, mask


def cut_paste(images: "torch.Tensor", seed: int = 0) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Synthetic defects after CutPaste (Li et al., 2021): copies of images [N, 3, S, S], and masks [N, S, S].

    In each image a rectangle (sides S/8 to S/3) is cut from one place, its brightness changed by
    10-25 % (brighter or darker), and pasted at another place of the same image; the mask marks
    where it landed. Seeded: the same `seed` gives the same defects. Lab 5 uses them to choose
    settings on validation images and to train a self-supervised classifier, lab 7 to train a
    few-shot metric.
    """
    import torch

    if images.ndim != 4 or images.shape[-1] < 8:
        raise ValueError(f"cut_paste needs images [N, C, S, S] of at least 8 pixels, got {tuple(images.shape)}.")
    g = torch.Generator().manual_seed(seed)
    out, masks = images.clone(), torch.zeros(images.shape[0], *images.shape[-2:])
    size = images.shape[-1]
    for i in range(len(images)):
        h, w = torch.randint(size // 8, size // 3, (2,), generator=g).tolist()
        sy, dy = torch.randint(0, size - h, (2,), generator=g).tolist()
        sx, dx = torch.randint(0, size - w, (2,), generator=g).tolist()
        gain = 1 + (0.1 + 0.15 * torch.rand(1, generator=g)) * (1 if torch.rand(1, generator=g) < 0.5 else -1)
        out[i, :, dy:dy + h, dx:dx + w] = (images[i, :, sy:sy + h, sx:sx + w] * gain).clamp(0, 1)
        masks[i, dy:dy + h, dx:dx + w] = 1
    return out, masks
