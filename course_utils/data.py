"""Data for the labs: CIFAR-10, MVTec AD, an offline defect data set and your own images.

Everything here returns plain tensors so that the labs can show every step:

- **CIFAR-10** (labs 1-4): `load_cifar10` reads a local copy, the cached download or, offline in
  fast mode, a loudly announced stand-in made from scikit-learn's handwritten digits.
  `make_loaders` turns the result into normalised (and optionally augmented) DataLoaders;
  `BatchAugmenter` is the worker-free, in-memory loader of the speed-run recipe.
- **MVTec AD** (labs 5-7): `MVTecDataset` and `load_anomaly_data` read the MVTec folder layout
  (`train/good`, `test/<defect>`, `ground_truth/<defect>/<name>_mask.png`); `download_mvtec`
  fetches one official category archive (resumable, checksummed); `load_image_folder` reads a
  folder of your own good/defective photos into the same form.
- **Offline defects** (labs 5-7): `make_defect_dataset` writes an MVTec-layout data set made from
  the real texture photos that scikit-image ships, with synthetic scratches, cracks, stains and
  cut-and-paste patches whose masks are exact. `default_anomaly_root` picks MVTec AD if you
  downloaded it, else this data set.

Downloads and generated data live in `DATA_DIR` (`<course>/data`, or `$COURSE_DATA`), what the labs
write (checkpoints, logs) in `build_dir(...)` (`<course>/build/...`). This module
and `device.py` are the only ones that read environment variables.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import pickle
import shutil
import socket
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from course_utils import device as _device

# ================================================================================================
# 1. Where data lives
# ================================================================================================


def _checkout_root() -> Path | None:
    """The course folder when course_utils runs from a checkout (`pyproject.toml` beside it), else None."""
    repo = Path(__file__).resolve().parent.parent
    return repo if (repo / "pyproject.toml").exists() else None


def _default_data_dir() -> Path:
    """`$COURSE_DATA` if set, else `<repo>/data` next to `pyproject.toml`, else `./data`."""
    if os.environ.get("COURSE_DATA"):
        return Path(os.environ["COURSE_DATA"]).expanduser()
    return (_checkout_root() or Path.cwd()) / "data"


DATA_DIR: Path = _default_data_dir()
"""Folder for downloads and generated data sets (set `COURSE_DATA` to move it, e.g. to Drive)."""


def build_dir(*parts: str) -> Path:
    """The folder `build/<parts>` for what a lab writes (checkpoints, logs, figures), created if missing.

    In a checkout of the course it is `<repo>/build/...`, whatever folder the notebook runs from
    (`notebooks/`, `build/student/`, ...); where course_utils is installed as a package (Colab,
    whose notebooks run in `/content`) it is `./build/...`. Labs write only here and to `DATA_DIR`,
    never with paths like `../build` that depend on the current folder.
    """
    folder = (_checkout_root() or Path.cwd()).joinpath("build", *parts)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _image_files(folder: Path) -> list[Path]:
    """The image files directly inside `folder`, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


# ================================================================================================
# 2. Reading one image or mask (any mode, any size)
# ================================================================================================


def read_image(path: str | Path, image_size: int | None = None) -> torch.Tensor:
    """Read an image file as float RGB [3, H, W] in [0, 1] (or [3, S, S] with `image_size=S`).

    PNG, JPG, BMP and TIFF all work. Grayscale becomes 3 equal channels, RGBA is composited on
    black (transparent = black), palette images are expanded, 16-bit images are scaled by
    1/65535. With `image_size`, the image is resized (bilinear, antialiased) to a square
    S x S, whatever its aspect ratio. A missing or corrupt file raises an error naming the file.
    """
    image = torch.from_numpy(_open_rgb(Path(path))).permute(2, 0, 1)  # [3, H, W]
    if image_size is not None:
        image = _resize(image, image_size)  # [3, S, S]
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


def _resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize float [C, H, W] to [C, size, size] (bilinear, antialiased), kept in [0, 1]."""
    if image.shape[-2:] == (size, size):
        return image
    resized = F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True,
                            align_corners=False)  # [1, C, S, S]
    return resized[0].clamp(0.0, 1.0)


def read_mask(path: str | Path, image_size: int | None = None) -> torch.Tensor:
    """Read a ground-truth mask as float [H, W] in {0, 1} (resized with nearest neighbour).

    Pixels brighter than half the mask's maximum count as defect, so 0/255 and 0/1 masks both
    work; an all-black mask stays empty.
    """
    rgb = _open_rgb(Path(path))  # [H, W, 3]
    mask = torch.from_numpy(rgb.max(axis=2))  # [H, W]
    if image_size is not None and mask.shape != (image_size, image_size):
        mask = F.interpolate(mask[None, None], size=(image_size, image_size), mode="nearest")[0, 0]
    return (mask > 0.5 * mask.max().clamp(min=1e-6)).float()  # [S, S] in {0, 1}


# ================================================================================================
# 3. CIFAR-10: local copies, the cached download, or the offline stand-in
# ================================================================================================

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


@dataclass
class ImageData:
    """A labelled image data set split into train and validation, as uint8 tensors.

    `train_x` uint8 [N, 3, 32, 32], `train_y` int64 [N], `valid_x` uint8 [M, 3, 32, 32],
    `valid_y` int64 [M], `classes` the class names, `source` where the images came from,
    `stand_in` True when these are NOT the real CIFAR-10 images (offline stand-in).
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    valid_x: torch.Tensor
    valid_y: torch.Tensor
    classes: list[str]
    source: str
    stand_in: bool = False

    def __repr__(self) -> str:
        kind = "STAND-IN " if self.stand_in else ""
        return (f"ImageData({kind}train {tuple(self.train_x.shape)}, valid "
                f"{tuple(self.valid_x.shape)}, {len(self.classes)} classes, from {self.source})")


def load_cifar10(source: str | Path | None = None, root: str | Path | None = None,
                 download: bool = True, n_train: int | None = None, n_valid: int | None = None,
                 seed: int = 0) -> ImageData:
    """Load CIFAR-10 (or a local copy of it) as uint8 tensors [N, 3, 32, 32] with int64 labels.

    `source` may be torchvision's `cifar-10-batches-py` folder, an ImageFolder tree
    (`train/<class>/*.png` and `test/<class>/*.png`, or class folders only) or an `.npz` with
    `x` uint8 [N, 32, 32, 3] and `y`. With `source=None` it uses `root/cifar-10-batches-py`
    (`root` defaults to `DATA_DIR`), downloading it if allowed; offline it falls back, in fast
    mode only, to the scikit-learn digits stand-in (announced loudly), and in full mode raises
    an error saying how to get the data. Sources without a split are split with `seed`
    (`n_valid` images, default 20%, for validation); `n_train`/`n_valid` then keep a stratified,
    seeded subset of each split.
    """
    if source is not None:
        data = _read_local_copy(Path(source), n_valid, seed)
    else:
        data = _cached_or_downloaded(Path(root or DATA_DIR), download)
        if data is None:
            data = _stand_in_or_fail(Path(root or DATA_DIR), seed)
    return _subsample(data, n_train, n_valid, seed)


def _read_local_copy(source: Path, n_valid: int | None, seed: int) -> ImageData:
    """Dispatch on the kind of local copy: batches folder, ImageFolder tree or .npz file."""
    if not source.exists():
        raise FileNotFoundError(
            f"CIFAR-10 source {source} does not exist. Pass the path of a 'cifar-10-batches-py' "
            "folder, an ImageFolder tree (train/<class>/*.png) or an .npz file with x and y.")
    if source.is_file() and source.suffix == ".npz":
        return _read_npz(source, n_valid, seed)
    if source.is_dir() and (source / "data_batch_1").exists():
        return _read_cifar_batches(source)
    if source.is_dir():
        return _read_image_folder_tree(source, n_valid, seed)
    raise ValueError(f"Cannot read {source} as CIFAR-10: expected a 'cifar-10-batches-py' folder, "
                     "an ImageFolder tree or an .npz file with x uint8 [N,32,32,3] and y.")


def _read_cifar_batches(folder: Path) -> ImageData:
    """Read torchvision's `cifar-10-batches-py` (data_batch_1..5 = train, test_batch = valid)."""
    train = [p for i in range(1, 6) if (p := folder / f"data_batch_{i}").exists()]
    if not (folder / "test_batch").exists():
        raise FileNotFoundError(f"{folder} has no 'test_batch' file: it is not a complete "
                                f"cifar-10-batches-py folder. Re-download it from {CIFAR10_URL}.")
    train_x, train_y = zip(*(_unpickle_batch(p) for p in train))
    valid_x, valid_y = _unpickle_batch(folder / "test_batch")
    classes = CIFAR10_CLASSES
    if (folder / "batches.meta").exists():
        with open(folder / "batches.meta", "rb") as f:
            classes = [str(c) for c in pickle.load(f, encoding="latin1")["label_names"]]
    return ImageData(torch.cat(train_x), torch.cat(train_y), valid_x, valid_y, classes,
                     source=str(folder))


def _unpickle_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One CIFAR pickle -> (uint8 [N, 3, 32, 32], int64 [N])."""
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    x = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)  # rows are R,G,B planes
    y = np.asarray(batch.get("labels", batch.get("fine_labels")), dtype=np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


def _read_npz(path: Path, n_valid: int | None, seed: int) -> ImageData:
    """An .npz with `x` uint8 [N, 32, 32, 3] and `y` [N]: split with `seed` into train/valid."""
    with np.load(path, allow_pickle=False) as npz:
        if "x" not in npz or "y" not in npz:
            raise KeyError(f"{path} must hold arrays 'x' (uint8 [N,32,32,3]) and 'y' (labels [N]); "
                           f"it has {sorted(npz.keys())}.")
        x, y = npz["x"], npz["y"].astype(np.int64)
        names = [str(c) for c in npz["classes"]] if "classes" in npz else None
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3) or len(x) != len(y):
        raise ValueError(f"{path}: 'x' must be uint8 [N, 32, 32, 3] with one label per image in "
                         f"'y'; got x {x.dtype} {x.shape} and y {y.shape}.")
    images = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()  # [N, 3, 32, 32]
    classes = names or (CIFAR10_CLASSES if y.max() < 10 else [str(c) for c in range(y.max() + 1)])
    return _split(images, torch.from_numpy(y), classes, str(path), n_valid, seed)


def _read_image_folder_tree(folder: Path, n_valid: int | None, seed: int) -> ImageData:
    """`train/<class>/` + `test/<class>/` (or `valid/`, `val/`), or bare class folders (split)."""
    valid_dir = next((folder / d for d in ("test", "valid", "val") if (folder / d).is_dir()), None)
    if (folder / "train").is_dir() and valid_dir is not None:
        train_x, train_y, classes = _read_class_folders(folder / "train")
        valid_x, valid_y, _ = _read_class_folders(valid_dir, classes)
        return ImageData(train_x, train_y, valid_x, valid_y, classes, source=str(folder))
    x, y, classes = _read_class_folders(folder)
    return _split(x, y, classes, str(folder), n_valid, seed)


def _read_class_folders(folder: Path, classes: list[str] | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Read `folder/<class>/*` as uint8 [N, 3, 32, 32] (resized if needed) and int64 labels."""
    classes = classes or sorted(d.name for d in folder.iterdir() if d.is_dir())
    files = [(p, c) for c, name in enumerate(classes) if (folder / name).is_dir()
             for p in _image_files(folder / name)]
    if not files:
        raise FileNotFoundError(f"No images found in {folder}/<class>/: an ImageFolder tree needs "
                                "one sub-folder per class with .png/.jpg files inside.")
    x = torch.stack([(read_image(p, 32) * 255).round().to(torch.uint8) for p, _ in files])
    y = torch.tensor([c for _, c in files], dtype=torch.int64)
    return x, y, classes  # [N, 3, 32, 32], [N]


def _split(x: torch.Tensor, y: torch.Tensor, classes: list[str], source: str,
           n_valid: int | None, seed: int, stand_in: bool = False) -> ImageData:
    """Seeded, stratified split of one labelled set into train and `n_valid` (default 20%)."""
    n_valid = n_valid if n_valid is not None else max(1, len(y) // 5)
    valid_idx = _stratified_subset(y, n_valid, seed)
    train_mask = torch.ones(len(y), dtype=torch.bool)
    train_mask[valid_idx] = False
    return ImageData(x[train_mask], y[train_mask], x[valid_idx], y[valid_idx], classes,
                     source=source, stand_in=stand_in)


def _stratified_subset(y: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Indices of `n` items of `y` drawn with `seed`, keeping the class proportions (sorted)."""
    if n >= len(y):
        return torch.arange(len(y))
    rng = np.random.default_rng(seed)
    labels = y.numpy()
    order = rng.permutation(len(labels))
    # Rank each item within its class (in random order), then take the lowest relative ranks.
    rank = np.empty(len(labels))
    for c in np.unique(labels):
        members = order[labels[order] == c]
        rank[members] = (np.arange(len(members)) + rng.random()) / len(members)
    return torch.from_numpy(np.sort(np.argsort(rank, kind="stable")[:n]))


def _subsample(data: ImageData, n_train: int | None, n_valid: int | None, seed: int) -> ImageData:
    """Keep a stratified, seeded subset of `n_train` train and `n_valid` validation images."""
    if n_train is not None:
        keep = _stratified_subset(data.train_y, n_train, seed)
        data.train_x, data.train_y = data.train_x[keep], data.train_y[keep]
    if n_valid is not None:
        keep = _stratified_subset(data.valid_y, n_valid, seed + 1)
        data.valid_x, data.valid_y = data.valid_x[keep], data.valid_y[keep]
    return data


def _cached_or_downloaded(root: Path, download: bool, timeout: float = 20.0) -> ImageData | None:
    """`root/cifar-10-batches-py` if it is there, else try torchvision's download; None offline."""
    folder = root / "cifar-10-batches-py"
    if not (folder / "test_batch").exists() and download:
        try:
            _torchvision_download(root, timeout)
        except Exception as err:  # any network failure: fall back below
            print(f"CIFAR-10 download from {CIFAR10_URL} failed ({type(err).__name__}: {err}).")
    if (folder / "test_batch").exists():
        return _read_cifar_batches(folder)
    return None


def _torchvision_download(root: Path, timeout: float) -> None:
    """Let torchvision fetch and unpack CIFAR-10 into `root` (gives up after `timeout` s idle)."""
    from torchvision.datasets import CIFAR10

    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        root.mkdir(parents=True, exist_ok=True)
        CIFAR10(str(root), train=False, download=True)
    finally:
        socket.setdefaulttimeout(old)


def _stand_in_or_fail(root: Path, seed: int) -> ImageData:
    """Offline: the digits stand-in in fast mode, else an error saying how to get CIFAR-10."""
    if not _device.FAST:
        raise RuntimeError(
            f"CIFAR-10 is not in {root / 'cifar-10-batches-py'} and could not be downloaded. "
            f"Go online and run again, or download {CIFAR10_URL} and unpack it into {root}, or "
            "pass source= a cifar-10-batches-py folder, an ImageFolder tree or an .npz file "
            "(set COURSE_FAST=1 to use a small stand-in data set instead).")
    data = digits_stand_in(seed)
    _announce(["CIFAR-10 IS NOT AVAILABLE (offline): USING A STAND-IN DATA SET",
               f"scikit-learn's handwritten digits: {len(data.train_y) + len(data.valid_y)} real "
               "images, 10 classes,",
               "resized to 32x32x3: same shapes and code path as CIFAR-10, but the",
               "accuracies you see are NOT CIFAR-10 accuracies.",
               f"Real data: go online, or unpack {CIFAR10_URL}",
               f"into {root}, or pass load_cifar10(source=PATH)."])
    return data


def digits_stand_in(seed: int = 0) -> ImageData:
    """scikit-learn's 1,797 handwritten digits as a CIFAR-10-shaped set (uint8 [N, 3, 32, 32]).

    The 8x8 images (16 grey levels) are upsampled to 32x32 and copied to 3 channels; classes are
    the digits "0".."9"; 20% go to validation (stratified, seeded). `stand_in` is True.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images).float()[:, None] / 16.0  # [1797, 1, 8, 8] in [0, 1]
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)  # [1797, 1, 32, 32]
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1)  # [1797, 3, 32, 32]
    y = torch.from_numpy(digits.target.astype(np.int64))  # [1797]
    return _split(x, y, [str(d) for d in range(10)], "scikit-learn digits (stand-in)",
                  None, seed, stand_in=True)


def _announce(lines: list[str]) -> None:
    """Print `lines` in a box of '#' so that nobody misses them."""
    width = max(len(line) for line in lines) + 4
    print("#" * width)
    for line in lines:
        print(f"# {line.ljust(width - 4)} #")
    print("#" * width)


class ImageTensorDataset(Dataset):
    """uint8 images [N, 3, H, W] + labels -> normalised float items (x [3, H, W], y).

    With `augment=True` each item is randomly shifted (zero padding 4, random crop back to H x W)
    and (if `flip`) flipped left-right with probability 1/2, done on tensors.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: tuple[float, ...],
                 std: tuple[float, ...], augment: bool = False, flip: bool = True) -> None:
        self.images, self.labels, self.augment, self.flip = images, labels, augment, flip
        self.mean = torch.tensor(mean).view(-1, 1, 1)  # [3, 1, 1]
        self.std = torch.tensor(std).view(-1, 1, 1)  # [3, 1, 1]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i].float() / 255.0  # [3, H, W] in [0, 1]
        if self.augment:
            x = random_crop_flip(x, flip=self.flip)  # [3, H, W]
        return (x - self.mean) / self.std, self.labels[i]


def random_crop_flip(x: torch.Tensor, padding: int = 4, flip: bool = True) -> torch.Tensor:
    """Pad float [C, H, W] with zeros, crop a random H x W window, flip left-right half the time (if `flip`)."""
    _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))  # [C, H + 2p, W + 2p]
    top, left = torch.randint(0, 2 * padding + 1, (2,)).tolist()
    x = padded[:, top:top + h, left:left + w]  # [C, H, W]
    return x.flip(-1) if flip and torch.rand(()) < 0.5 else x


def make_loaders(data: ImageData, batch_size: int = 128, augment: bool = False,
                 num_workers: int = 0, mean: tuple[float, ...] = CIFAR10_MEAN,
                 std: tuple[float, ...] = CIFAR10_STD) -> tuple[DataLoader, DataLoader]:
    """Train and validation DataLoaders yielding (x float [B, 3, 32, 32], y int64 [B]).

    Images are scaled to [0, 1] and normalised with `mean`/`std` (CIFAR-10's by default). The
    train loader shuffles (seed it with `cu.seed_everything`) and, with `augment=True`, applies
    `random_crop_flip`; the validation loader keeps the order and never augments. The digits
    stand-in is never mirrored: a mirrored digit is no longer the same digit.
    """
    train = ImageTensorDataset(data.train_x, data.train_y, mean, std, augment, flip=not data.stand_in)
    valid = ImageTensorDataset(data.valid_x, data.valid_y, mean, std, augment=False)
    return (DataLoader(train, batch_size, shuffle=True, num_workers=num_workers),
            DataLoader(valid, batch_size, shuffle=False, num_workers=num_workers))


# ================================================================================================
# 4. MVTec AD layout: train/good, test/<defect>, ground_truth/<defect>/<name>_mask.png
# ================================================================================================

MVTEC_LAYOUT = ("expected <root>/train/good/*.png, <root>/test/good/*.png, "
                "<root>/test/<defect>/*.png and <root>/ground_truth/<defect>/<name>_mask.png")


@dataclass
class Sample:
    """One image of an MVTec-layout folder: its path, label (0 good, 1 defect), mask and defect."""

    path: Path
    label: int
    mask_path: Path | None
    defect: str


def check_mvtec_layout(root: str | Path) -> Path:
    """Check that `root` is one MVTec-layout category folder; return it, or raise a clear error.

    The error says what is missing and what to do (for a folder of categories, which
    sub-folders to use instead).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"The data set folder {root} does not exist. Check the path, download a category with "
            "cu.data.download_mvtec('bottle'), or write the offline one with "
            f"cu.data.make_defect_dataset('{root}').")
    good = root / "train" / "good"
    if not good.is_dir() or not _image_files(good):
        inside = sorted(d.name for d in root.iterdir() if (d / "train" / "good").is_dir())
        hint = f" It holds categories {inside}: pass one of those folders." if inside else ""
        raise FileNotFoundError(f"{root} is not in the MVTec AD layout: no images in {good} "
                                f"({MVTEC_LAYOUT}).{hint}")
    if not (root / "test").is_dir():
        raise FileNotFoundError(f"{root} has no test/ folder ({MVTEC_LAYOUT}). Add test images, "
                                "or use cu.data.load_image_folder for a folder of good images.")
    return root


def list_samples(root: str | Path, split: str = "train",
                 allow_missing_masks: bool = False) -> list[Sample]:
    """All images of one split of an MVTec-layout folder, good first, then defects by name.

    A defective test image needs `ground_truth/<defect>/<name>_mask.png` (`<name>.png` also
    works); a missing mask raises an error naming it, unless `allow_missing_masks=True`, which
    keeps the image with an empty mask (image-level metrics stay right, pixel-level ones do not).
    """
    root = check_mvtec_layout(root)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}.")
    folder = root / split
    defects = ["good"] + sorted(d.name for d in folder.iterdir() if d.is_dir() and d.name != "good")
    samples = []
    for defect in defects:
        for path in _image_files(folder / defect) if (folder / defect).is_dir() else []:
            mask = None if defect == "good" else _find_mask(root, defect, path, allow_missing_masks)
            samples.append(Sample(path, int(defect != "good"), mask, defect))
    if split == "test" and not samples:
        raise FileNotFoundError(f"{folder} holds no images ({MVTEC_LAYOUT}).")
    return samples


def _find_mask(root: Path, defect: str, image: Path, allow_missing: bool) -> Path | None:
    """The mask file of a defective image, or None (allowed) / a clear error (not allowed)."""
    expected = root / "ground_truth" / defect / f"{image.stem}_mask.png"
    for candidate in (expected, expected.with_name(f"{image.stem}.png")):
        if candidate.is_file():
            return candidate
    if allow_missing:
        return None
    raise FileNotFoundError(
        f"Missing ground-truth mask {expected} for the defective image {image}. Add the mask "
        "(white = defect), or pass allow_missing_masks=True to use empty masks (pixel-level "
        "metrics are then meaningless).")


class MVTecDataset(Dataset):
    """An MVTec-layout folder as a PyTorch Dataset of dicts.

    Each item: `image` float [3, S, S] in [0, 1], `label` int (0 good, 1 defective), `mask`
    float [1, S, S] in {0, 1} (all zeros for good images), `defect` str ("good", "scratch", ...),
    `path` str. Images of any size, mode and format are resized to S = `image_size`.
    """

    def __init__(self, root: str | Path, split: str = "train", image_size: int = 256,
                 allow_missing_masks: bool = False) -> None:
        self.root, self.split, self.image_size = Path(root), split, image_size
        self.samples = list_samples(root, split, allow_missing_masks)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        s, size = self.samples[i], self.image_size
        mask = read_mask(s.mask_path, size) if s.mask_path else torch.zeros(size, size)  # [S, S]
        return {"image": read_image(s.path, size), "label": s.label, "mask": mask[None],
                "defect": s.defect, "path": str(s.path)}


@dataclass
class AnomalyData:
    """An anomaly-detection data set held in memory.

    `train_images` float [N, 3, S, S] in [0, 1] (good only), `test_images` float [M, 3, S, S],
    `test_labels` int64 [M] (1 = defective), `test_masks` float [M, S, S] in {0, 1},
    `test_defects` the defect name of each test image ("good" for good ones), `name` the data
    set's name, `test_paths` the files, `has_masks` False when pixel masks are unknown.
    """

    train_images: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    test_masks: torch.Tensor
    test_defects: list[str]
    name: str
    test_paths: list[str] = field(default_factory=list)
    has_masks: bool = True

    def __repr__(self) -> str:
        kinds = sorted(set(self.test_defects))
        return (f"AnomalyData({self.name!r}: train {tuple(self.train_images.shape)}, test "
                f"{tuple(self.test_images.shape)} with {int(self.test_labels.sum())} defective, "
                f"kinds {kinds})")


def load_anomaly_data(root: str | Path, image_size: int = 256, n_train: int | None = None,
                      allow_missing_masks: bool = False) -> AnomalyData:
    """Read a whole MVTec-layout folder into memory (see `AnomalyData` for the shapes).

    `n_train` keeps that many training images, evenly spaced over the sorted file list (all by
    default); the test split is always complete.
    """
    train = MVTecDataset(root, "train", image_size)
    if n_train is not None and n_train < len(train):
        keep = np.linspace(0, len(train) - 1, n_train).round().astype(int)
        train.samples = [train.samples[i] for i in keep]
    test = MVTecDataset(root, "test", image_size, allow_missing_masks)
    items = [test[i] for i in range(len(test))]
    return AnomalyData(
        train_images=torch.stack([train[i]["image"] for i in range(len(train))]),  # [N, 3, S, S]
        test_images=torch.stack([it["image"] for it in items]),  # [M, 3, S, S]
        test_labels=torch.tensor([it["label"] for it in items], dtype=torch.int64),  # [M]
        test_masks=torch.stack([it["mask"][0] for it in items]),  # [M, S, S]
        test_defects=[it["defect"] for it in items], name=Path(root).resolve().name,
        test_paths=[it["path"] for it in items],
        has_masks=all(s.mask_path or not s.label for s in test.samples))


def load_image_folder(good_dir: str | Path, defective_dir: str | Path | None = None,
                      image_size: int = 256, test_fraction: float = 0.2, seed: int = 0,
                      mask_dir: str | Path | None = None) -> AnomalyData:
    """Your own photos as `AnomalyData`: a folder of good images and, optionally, defective ones.

    A seeded `test_fraction` of the good images (at least one) is held out as good test images;
    the rest train. Every image in `defective_dir` is a defective test image. Masks come from
    `mask_dir` (`<name>_mask.png` or `<name>.png`) when given; otherwise they are unknown
    (`has_masks=False`, empty masks), so only image-level metrics make sense.
    """
    good = _folder_images(good_dir, "good_dir")
    defective = _folder_images(defective_dir, "defective_dir") if defective_dir else []
    order = np.random.default_rng(seed).permutation(len(good))
    n_test = max(1, round(test_fraction * len(good))) if len(good) > 1 else 0
    test_good = [good[i] for i in sorted(order[:n_test])]
    train_good = [good[i] for i in sorted(order[n_test:])]
    test_files = test_good + defective
    empty = torch.zeros(image_size, image_size)  # [S, S]: unknown or good
    masks = [_user_mask(p, mask_dir, image_size) for p in defective]
    has_masks = mask_dir is not None and all(m is not None for m in masks)
    masks = [empty] * len(test_good) + [empty if m is None else m for m in masks]
    return AnomalyData(
        train_images=torch.stack([read_image(p, image_size) for p in train_good]),  # [N, 3, S, S]
        test_images=torch.stack([read_image(p, image_size) for p in test_files]),  # [M, 3, S, S]
        test_labels=torch.tensor([0] * len(test_good) + [1] * len(defective)),  # [M]
        test_masks=torch.stack(masks),  # [M, S, S]
        test_defects=["good"] * len(test_good) + ["defect"] * len(defective),
        name=Path(good_dir).resolve().name, test_paths=[str(p) for p in test_files],
        has_masks=has_masks)


def _folder_images(folder: str | Path, what: str) -> list[Path]:
    """The images in a user's folder, or a clear error when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} {folder} does not exist; pass a folder of .png/.jpg "
                                "images.")
    files = _image_files(folder)
    if not files:
        raise FileNotFoundError(f"{what} {folder} holds no images (looked for {IMAGE_EXTENSIONS}).")
    return files


def _user_mask(image: Path, mask_dir: str | Path | None, size: int) -> torch.Tensor | None:
    """The mask of a user's defective image from `mask_dir`, or None when there is none."""
    if mask_dir is None:
        return None
    for name in (f"{image.stem}_mask.png", f"{image.stem}.png"):
        if (Path(mask_dir) / name).is_file():
            return read_mask(Path(mask_dir) / name, size)
    return None


# ================================================================================================
# 5. Downloading one MVTec AD category (official archives; resumable; checksummed)
# ================================================================================================

_MYDRIVE = "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/"
MVTEC_URLS = {
    "bottle": _MYDRIVE + "420937370-1629951468/bottle.tar.xz",
    "cable": _MYDRIVE + "420937413-1629951498/cable.tar.xz",
    "capsule": _MYDRIVE + "420937454-1629951595/capsule.tar.xz",
    "carpet": _MYDRIVE + "420937484-1629951672/carpet.tar.xz",
    "grid": _MYDRIVE + "420937487-1629951814/grid.tar.xz",
    "hazelnut": _MYDRIVE + "420937545-1629951845/hazelnut.tar.xz",
    "leather": _MYDRIVE + "420937607-1629951964/leather.tar.xz",
    "metal_nut": _MYDRIVE + "420937637-1629952063/metal_nut.tar.xz",
    "pill": "https://www.mydrive.ch/shares/43421/11a215a5749fcfb75e331ddd5f8e43ee/download/"
            "420938129-1629953099/pill.tar.xz",
    "screw": _MYDRIVE + "420938130-1629953152/screw.tar.xz",
    "tile": _MYDRIVE + "420938133-1629953189/tile.tar.xz",
    "toothbrush": _MYDRIVE + "420938134-1629953256/toothbrush.tar.xz",
    "transistor": _MYDRIVE + "420938166-1629953277/transistor.tar.xz",
    "wood": _MYDRIVE + "420938383-1629953354/wood.tar.xz",
    "zipper": _MYDRIVE + "420938385-1629953449/zipper.tar.xz",
}
"""The official per-category archives linked from mvtec.com (CC BY-NC-SA 4.0, Bergmann et al.).
MVTec publishes no per-category checksums (anomalib's MVTecAD datamodule verifies only the 4.9 GB
full archive), so `download_mvtec` checks the SHA-256 you pass, else prints the archive's own
checksum; xz's built-in CRC still catches a corrupt archive when it is unpacked."""

def download_mvtec(category: str, root: str | Path | None = None, *, url: str | None = None,
                   sha256: str | None = None, timeout: float = 30.0) -> Path:
    """Download and unpack one MVTec AD category into `root/<category>`; return that folder.

    `root` defaults to `DATA_DIR/mvtec`. The archive is streamed into `<category>.tar.xz.part`
    (an interrupted download resumes where it stopped, with an HTTP Range request), checked
    against `sha256` when you give one, unpacked and deleted. A category that is already
    there is not downloaded again. `url` overrides the official address (e.g. a mirror). Offline,
    it raises a `ConnectionError` that gives the URL and the folder to unpack into by hand.
    """
    if url is None and category not in MVTEC_URLS:
        raise ValueError(f"Unknown MVTec AD category {category!r}; choose one of "
                         f"{sorted(MVTEC_URLS)}.")
    root = Path(root or DATA_DIR / "mvtec")
    target = root / category
    if (target / "train" / "good").is_dir():
        print(f"MVTec AD '{category}' is already in {target}.")
        return target
    url = url or MVTEC_URLS[category]
    archive = root / f"{category}.tar.xz"
    try:
        download_file(url, archive, timeout)
    except (OSError, http.client.HTTPException) as err:  # URLError and timeouts are OSErrors
        raise ConnectionError(
            f"Could not download MVTec AD '{category}' from {url} ({err}); download it by hand "
            f"and unpack it into {root} (so that {target / 'train' / 'good'} exists), or use the "
            "offline data set from cu.data.make_defect_dataset.") from None
    _verify_checksum(archive, sha256)
    _extract(archive, root)
    archive.unlink()
    return check_mvtec_layout(target)


def download_file(url: str, dest: str | Path, timeout: float = 30.0,
                  chunk_size: int = 1 << 20) -> Path:
    """Stream `url` to `dest`, resuming a partial `dest.part` with an HTTP Range request.

    Bytes land in `<dest>.part` first and the file is renamed to `dest` only when complete, so
    an interrupted download never looks finished. `timeout` (seconds) bounds each network wait.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    start = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code != 416:  # 416 = "range not satisfiable": the .part file is already complete
            raise
        return part.rename(dest)
    resumed = start > 0 and response.status == 206  # 200 = the server sent the whole file again
    expected = (start if resumed else 0) + int(response.headers.get("Content-Length") or 0)
    print(f"Downloading {url} -> {dest}" + (f" (resuming at {start:,} bytes)" if resumed else ""))
    with response, open(part, "ab" if resumed else "wb") as f:
        while chunk := response.read(chunk_size):
            f.write(chunk)
        if f.tell() < expected:
            raise OSError(f"download stopped at {f.tell():,} of {expected:,} bytes; run again "
                          "to resume")
    return part.rename(dest)


def _verify_checksum(archive: Path, expected: str | None) -> None:
    """Compare the archive's SHA-256 with `expected`; on a mismatch delete it and raise."""
    digest = sha256_of(archive)
    if expected is None:
        print(f"{archive.name}: sha256 {digest} (no published checksum; xz checks its own CRC).")
    elif digest != expected.lower():
        archive.unlink()
        raise ValueError(f"Checksum mismatch for {archive}: got sha256 {digest}, expected "
                         f"{expected}. The corrupt file was deleted; run the download again.")


def sha256_of(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """The SHA-256 hex digest of a file, read in chunks (works for files larger than memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _extract(archive: Path, root: Path) -> None:
    """Unpack a .tar(.xz/.gz) archive into `root`, refusing paths that leave `root`."""
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
    except (tarfile.TarError, EOFError, OSError) as err:
        archive.unlink()
        raise ValueError(f"Cannot unpack {archive} ({err}); the file was deleted, download "
                         "it again.") from None


# ================================================================================================
# 6. The offline defect data set: scikit-image textures + synthetic defects with exact masks
# ================================================================================================

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


def default_anomaly_root(image_size: int = 128, texture: str = "brick",
                         root: str | Path | None = None) -> Path:
    """The data set labs 5-7 use: an MVTec AD category you downloaded, else the offline one.

    Looks for the first category folder in `DATA_DIR/mvtec` (`root/mvtec`) in the MVTec layout;
    if there is none, writes (or reuses) `make_defect_dataset` output in
    `DATA_DIR/defects_<texture>` (80 + 48 images in fast mode, 240 + 96 otherwise). Prints
    which one it chose.
    """
    root = Path(root or DATA_DIR)
    mvtec = root / "mvtec"
    found = sorted(d for d in mvtec.glob("*") if (d / "train" / "good").is_dir())
    if found:
        print(f"Using MVTec AD category '{found[0].name}' from {found[0]}.")
        return found[0]
    n_train, n_test = (80, 48) if _device.FAST else (240, 96)
    path = make_defect_dataset(root / f"defects_{texture}", texture, n_train, n_test, image_size)
    print(f"Using the offline defect data set {path} (scikit-image '{texture}' texture with "
          "synthetic defects); download real data with cu.data.download_mvtec('bottle').")
    return path


class BatchAugmenter:
    """An in-memory train loader: normalises and augments whole batches at once (no workers).

    Holds uint8 images [N, 3, H, W] and labels [N]; each pass yields shuffled `(x float
    [B, 3, H, W], y [B])`, normalised with `mean`/`std`, each image randomly flipped left-right
    and shifted by up to `shift` pixels (reflection padding), all in a few tensor operations per
    batch. On a 2-core CPU this beats a DataLoader with workers. `len()` is the number of
    batches, so it works with `cu.train.fit` and one-cycle schedules.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                 mean: tuple[float, ...], std: tuple[float, ...], shift: int = 2,
                 flip: bool = True, drop_last: bool = True, channels_last: bool = False) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"BatchAugmenter wants uint8 images [N, C, H, W], got {images.dtype} "
                             f"{tuple(images.shape)}: pass data.train_x from cu.data.load_cifar10.")
        mean_t = torch.tensor(mean).view(1, -1, 1, 1)  # [1, C, 1, 1]
        std_t = torch.tensor(std).view(1, -1, 1, 1)  # [1, C, 1, 1]
        self.images = (images.float() / 255 - mean_t) / std_t  # [N, C, H, W], normalised once
        self.labels, self.batch_size, self.shift, self.flip = labels, batch_size, shift, flip
        self.drop_last, self.channels_last = drop_last, channels_last

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        """Random flip and shift of each image of a batch [B, C, H, W] -> [B, C, H, W]."""
        if self.flip:
            flip = torch.rand(len(x)) < 0.5  # [B]
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)  # [B, C, H, W]
        if self.shift:
            s, (b, _, h, w) = self.shift, x.shape
            padded = F.pad(x, (s, s, s, s), mode="reflect")  # [B, C, H+2s, W+2s]
            dy, dx = torch.randint(0, 2 * s + 1, (2, b, 1))  # [B, 1] each: one shift per image
            rows, cols = dy + torch.arange(h), dx + torch.arange(w)  # [B, H], [B, W]
            crops = padded[torch.arange(b)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
            x = crops.permute(0, 3, 1, 2)  # [B, C, H, W]
        return x

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.labels))  # [N]
        for i in range(len(self)):
            index = order[i * self.batch_size:(i + 1) * self.batch_size]  # [B]
            x = self._augment(self.images[index])  # [B, C, H, W]
            x = x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
            yield x, self.labels[index]
