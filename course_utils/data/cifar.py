"""CIFAR-10 for labs 1-4: local copies, the cached download or the offline digits stand-in, and loaders.

`load_cifar10` reads a local copy, the cached download or, offline in fast mode, a loudly
announced stand-in made from scikit-learn's handwritten digits, split three ways: training,
validation (split off the training images: it chooses epochs, checkpoints and settings) and test
(touched once, at the end). `make_loaders` turns the result into normalised (and optionally
augmented) DataLoaders, `make_test_loader` the test set; `BatchAugmenter` is the worker-free,
in-memory loader of the speed-run recipe.
"""

from __future__ import annotations

import pickle
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from course_utils import device as _device
from course_utils.data.images import _image_files, normalize_uint8, read_image
from course_utils.data.paths import DATA_DIR

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


@dataclass
class ImageData:
    """A labelled image data set split into train, validation and (if the source has one) test.

    `train_x` uint8 [N, 3, 32, 32], `train_y` int64 [N], `valid_x` uint8 [M, 3, 32, 32],
    `valid_y` int64 [M], `classes` the class names, `source` where the images came from,
    `stand_in` True when these are NOT the real CIFAR-10 images (offline stand-in), `test_x`
    uint8 [T, 3, 32, 32] and `test_y` int64 [T] the test set (None for a source with one
    labelled set only, such as an .npz file, which is split into train and validation).
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    valid_x: torch.Tensor
    valid_y: torch.Tensor
    classes: list[str]
    source: str
    stand_in: bool = False
    test_x: torch.Tensor | None = None
    test_y: torch.Tensor | None = None

    def __repr__(self) -> str:
        kind = "STAND-IN " if self.stand_in else ""
        test = f", test {tuple(self.test_x.shape)}" if self.test_x is not None else ", no test set"
        return (f"ImageData({kind}train {tuple(self.train_x.shape)}, valid "
                f"{tuple(self.valid_x.shape)}{test}, {len(self.classes)} classes, from {self.source})")


def load_cifar10(source: str | Path | None = None, root: str | Path | None = None,
                 download: bool = True, n_train: int | None = None, n_valid: int | None = None,
                 n_test: int | None = None, seed: int = 0) -> ImageData:
    """Load CIFAR-10 (or a local copy of it) as uint8 tensors [N, 3, 32, 32] with int64 labels.

    `source` may be torchvision's `cifar-10-batches-py` folder, an ImageFolder tree
    (`train/<class>/*.png` and `test/<class>/*.png`, or class folders only) or an `.npz` with
    `x` uint8 [N, 32, 32, 3] and `y`. With `source=None` it uses `root/cifar-10-batches-py`
    (`root` defaults to `DATA_DIR`), downloading it if allowed; offline it falls back, in fast
    mode only, to the scikit-learn digits stand-in (announced loudly), and in full mode raises
    an error saying how to get the data.

    The validation images are split off the training images with `seed` (stratified): `n_valid`
    of them, by default 10% (CIFAR-10: 45,000 train / 5,000 validation); the source's own test
    set (CIFAR-10's 10,000 test images) stays apart, to be used once at the end. A source with
    one labelled set (an .npz, bare class folders) is split into train and `n_valid` (default
    20%) validation images and has no test set. `n_train`/`n_valid`/`n_test` then keep a
    stratified, seeded subset of each split.
    """
    if source is not None:
        data = _read_local_copy(Path(source), n_valid, seed)
    else:
        data = _cached_or_downloaded(Path(root or DATA_DIR), download, n_valid, seed)
        if data is None:
            data = _stand_in_or_fail(Path(root or DATA_DIR), seed)
    return _subsample(data, n_train, n_valid, n_test, seed)


def _read_local_copy(source: Path, n_valid: int | None, seed: int) -> ImageData:
    """Dispatch on the kind of local copy: batches folder, ImageFolder tree or .npz file."""
    if not source.exists():
        raise FileNotFoundError(
            f"CIFAR-10 source {source} does not exist. Pass the path of a 'cifar-10-batches-py' "
            "folder, an ImageFolder tree (train/<class>/*.png) or an .npz file with x and y.")
    if source.is_file() and source.suffix == ".npz":
        return _read_npz(source, n_valid, seed)
    if source.is_dir() and (source / "data_batch_1").exists():
        return _read_cifar_batches(source, n_valid, seed)
    if source.is_dir():
        return _read_image_folder_tree(source, n_valid, seed)
    raise ValueError(f"Cannot read {source} as CIFAR-10: expected a 'cifar-10-batches-py' folder, "
                     "an ImageFolder tree or an .npz file with x uint8 [N,32,32,3] and y.")


def _read_cifar_batches(folder: Path, n_valid: int | None, seed: int) -> ImageData:
    """Read torchvision's `cifar-10-batches-py`: data_batch_1..5 = train + validation, test_batch = test."""
    train = [p for i in range(1, 6) if (p := folder / f"data_batch_{i}").exists()]
    if not (folder / "test_batch").exists():
        raise FileNotFoundError(f"{folder} has no 'test_batch' file: it is not a complete "
                                f"cifar-10-batches-py folder. Re-download it from {CIFAR10_URL}.")
    train_x, train_y = zip(*(_unpickle_batch(p) for p in train))
    test_x, test_y = _unpickle_batch(folder / "test_batch")
    classes = CIFAR10_CLASSES
    if (folder / "batches.meta").exists():
        with open(folder / "batches.meta", "rb") as f:
            classes = [str(c) for c in pickle.load(f, encoding="latin1")["label_names"]]
    return _split_with_test(torch.cat(train_x), torch.cat(train_y), test_x, test_y, classes,
                            str(folder), n_valid, seed)


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
    """`train/<class>/` with `test/<class>/` and/or `valid/` (or `val/`), or bare class folders (split)."""
    valid_dir = next((folder / d for d in ("valid", "val") if (folder / d).is_dir()), None)
    test_dir = folder / "test" if (folder / "test").is_dir() else None
    if (folder / "train").is_dir() and (valid_dir or test_dir):
        train_x, train_y, classes = _read_class_folders(folder / "train")
        test_x, test_y = _read_class_folders(test_dir, classes)[:2] if test_dir else (None, None)
        if valid_dir is None:
            return _split_with_test(train_x, train_y, test_x, test_y, classes, str(folder), n_valid, seed)
        valid_x, valid_y, _ = _read_class_folders(valid_dir, classes)
        return ImageData(train_x, train_y, valid_x, valid_y, classes, str(folder),
                         test_x=test_x, test_y=test_y)
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


def _split_with_test(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor | None,
                     test_y: torch.Tensor | None, classes: list[str], source: str, n_valid: int | None,
                     seed: int, stand_in: bool = False) -> ImageData:
    """Split `n_valid` validation images (default 10%) off the training images; the test set stays apart."""
    n_valid = n_valid if n_valid is not None else max(1, len(train_y) // 10)
    data = _split(train_x, train_y, classes, source, n_valid, seed, stand_in)
    data.test_x, data.test_y = test_x, test_y
    return data


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


def _subsample(data: ImageData, n_train: int | None, n_valid: int | None, n_test: int | None,
               seed: int) -> ImageData:
    """Keep a stratified, seeded subset of `n_train` train, `n_valid` validation and `n_test` test images."""
    if n_train is not None:
        keep = _stratified_subset(data.train_y, n_train, seed)
        data.train_x, data.train_y = data.train_x[keep], data.train_y[keep]
    if n_valid is not None:
        keep = _stratified_subset(data.valid_y, n_valid, seed + 1)
        data.valid_x, data.valid_y = data.valid_x[keep], data.valid_y[keep]
    if n_test is not None and data.test_y is not None:
        keep = _stratified_subset(data.test_y, n_test, seed + 2)
        data.test_x, data.test_y = data.test_x[keep], data.test_y[keep]
    return data


def _cached_or_downloaded(root: Path, download: bool, n_valid: int | None, seed: int,
                          timeout: float = 20.0) -> ImageData | None:
    """`root/cifar-10-batches-py` if it is there, else try torchvision's download; None offline."""
    folder = root / "cifar-10-batches-py"
    if not (folder / "test_batch").exists() and download:
        try:
            _torchvision_download(root, timeout)
        except Exception as err:  # any network failure: fall back below
            print(f"CIFAR-10 download from {CIFAR10_URL} failed ({type(err).__name__}: {err}).")
    if (folder / "test_batch").exists():
        return _read_cifar_batches(folder, n_valid, seed)
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
               f"scikit-learn's handwritten digits: {len(data.train_y) + len(data.valid_y) + len(data.test_y)} real "
               "images, 10 classes,",
               "resized to 32x32x3: same shapes and code path as CIFAR-10, but the",
               "accuracies you see are NOT CIFAR-10 accuracies.",
               f"Real data: go online, or unpack {CIFAR10_URL}",
               f"into {root}, or pass load_cifar10(source=PATH)."])
    return data


def digits_stand_in(seed: int = 0) -> ImageData:
    """scikit-learn's 1,797 handwritten digits as a CIFAR-10-shaped set (uint8 [N, 3, 32, 32]).

    The 8x8 images (16 grey levels) are upsampled to 32x32 and copied to 3 channels; classes are
    the digits "0".."9"; 20% are the test set, 20% validation, 60% training (stratified,
    seeded). `stand_in` is True.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images).float()[:, None] / 16.0  # [1797, 1, 8, 8] in [0, 1]
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)  # [1797, 1, 32, 32]
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1)  # [1797, 3, 32, 32]
    y = torch.from_numpy(digits.target.astype(np.int64))  # [1797]
    test = torch.zeros(len(y), dtype=torch.bool)
    test[_stratified_subset(y, len(y) // 5, seed + 2)] = True
    return _split_with_test(x[~test], y[~test], x[test], y[test], [str(d) for d in range(10)],
                            "scikit-learn digits (stand-in)", len(y) // 5, seed, stand_in=True)


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
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i]  # uint8 [3, H, W]
        if self.augment:
            x = random_crop_flip(x, flip=self.flip)  # [3, H, W], the padding is black (0)
        return normalize_uint8(x, self.mean, self.std), self.labels[i]


def random_crop_flip(x: torch.Tensor, padding: int = 4, flip: bool = True) -> torch.Tensor:
    """Pad [C, H, W] (uint8 or float) with zeros, crop a random H x W window, flip left-right half the time (if `flip`)."""
    _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))  # [C, H + 2p, W + 2p]
    top, left = torch.randint(0, 2 * padding + 1, (2,)).tolist()
    x = padded[:, top:top + h, left:left + w]  # [C, H, W]
    return x.flip(-1) if flip and torch.rand(()) < 0.5 else x


def make_loaders(data: ImageData, batch_size: int = 128, augment: bool = False,
                 num_workers: int = 0, mean: tuple[float, ...] = CIFAR10_MEAN,
                 std: tuple[float, ...] = CIFAR10_STD, seed: int | None = None) -> tuple[DataLoader, DataLoader]:
    """Train and validation DataLoaders yielding (x float [B, 3, 32, 32], y int64 [B]).

    Images are scaled to [0, 1] and normalised with `mean`/`std` (CIFAR-10's by default). The
    train loader shuffles and, with `augment=True`, applies `random_crop_flip`; the validation
    loader keeps the order and never augments. The digits stand-in is never mirrored: a mirrored
    digit is no longer the same digit. The shuffle follows PyTorch's global random state (seed it
    with `cu.seed_everything`), which anything else that draws random numbers moves on, even
    iterating another DataLoader; with `seed` the train loader draws the order from its own
    generator, so two loaders made with the same seed give the same batches, whatever runs between.
    """
    train = ImageTensorDataset(data.train_x, data.train_y, mean, std, augment, flip=not data.stand_in)
    valid = ImageTensorDataset(data.valid_x, data.valid_y, mean, std, augment=False)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return (DataLoader(train, batch_size, shuffle=True, num_workers=num_workers, generator=generator),
            DataLoader(valid, batch_size, shuffle=False, num_workers=num_workers))


def make_test_loader(data: ImageData, batch_size: int = 128, mean: tuple[float, ...] = CIFAR10_MEAN,
                     std: tuple[float, ...] = CIFAR10_STD) -> DataLoader:
    """A DataLoader of the test set, normalised like `make_loaders`' validation loader (no shuffling).

    Use it once, at the very end, for the number you report: every choice made by looking at a
    set (epochs, checkpoints, settings) makes that set's score optimistic.
    """
    if data.test_x is None:
        raise ValueError(f"{data.source} has no test set (an .npz file or bare class folders are split "
                         "into train and validation only): report the validation score, or load a source "
                         "with its own test set (cifar-10-batches-py, or an ImageFolder tree with test/).")
    test = ImageTensorDataset(data.test_x, data.test_y, mean, std, augment=False)
    return DataLoader(test, batch_size, shuffle=False)


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
        self.images = normalize_uint8(images, mean, std)  # [N, C, H, W], normalised once
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
