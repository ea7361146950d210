"""The MVTec AD layout (labs 5-7): `train/good`, `test/<defect>`, `ground_truth/<defect>/<name>_mask.png`.

`MVTecDataset` and `load_anomaly_data` read a folder in that layout into `AnomalyData`;
`load_image_folder` reads a folder of your own good/defective photos into the same form;
`default_anomaly_root` picks MVTec AD if you downloaded it, else the offline defect data set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from course_utils import device as _device
from course_utils.data.defects import make_defect_dataset
from course_utils.data.images import (
    IMAGE_EXTENSIONS,
    RESIZE_MODES,
    _image_files,
    read_image,
    read_mask,
)
from course_utils.data.paths import DATA_DIR

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
    `path` str. Images of any size, mode and format are brought to S = `image_size` (or (H, W))
    by `resize` ("stretch", "pad" or "crop": `cu.data.fit_to_size`); `image_size=None` keeps
    each image's own size. A detector's `fit`/`predict` can read the data set batch by batch.
    """

    def __init__(self, root: str | Path, split: str = "train", image_size: int | tuple[int, int] | None = 256,
                 allow_missing_masks: bool = False, resize: str = "stretch") -> None:
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, not {resize!r}.")
        self.root, self.split, self.image_size, self.resize = Path(root), split, image_size, resize
        self.samples = list_samples(root, split, allow_missing_masks)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        s, size = self.samples[i], self.image_size
        image = read_image(s.path, size, self.resize)  # [3, S, S] (or [3, H, W])
        mask = read_mask(s.mask_path, size, self.resize) if s.mask_path else torch.zeros(image.shape[-2:])  # [S, S]
        if mask.shape != image.shape[-2:]:
            raise ValueError(f"The mask {s.mask_path} is {tuple(mask.shape)} but its image {s.path} is "
                             f"{tuple(image.shape[-2:])}: give every defect a mask of its image's size.")
        return {"image": image, "label": s.label, "mask": mask[None],
                "defect": s.defect, "path": str(s.path)}


@dataclass
class AnomalyData:
    """An anomaly-detection data set held in memory.

    `train_images` float [N, 3, S, S] in [0, 1] (good only), `test_images` float [M, 3, S, S],
    `test_labels` int64 [M] (1 = defective), `test_masks` float [M, S, S] in {0, 1},
    `test_defects` the defect name of each test image ("good" for good ones), `name` the data
    set's name, `test_paths` the files, `has_masks` False when pixel masks are unknown.
    Loaded with `image_size=None`, images keep their own sizes: `train_images`, `test_images`
    and `test_masks` are then lists of [3, H_i, W_i] and [H_i, W_i] tensors. Images may be
    uint8 (0..255, `dtype=torch.uint8`: a quarter of the memory); detectors accept both.
    """

    train_images: torch.Tensor | list[torch.Tensor]
    test_images: torch.Tensor | list[torch.Tensor]
    test_labels: torch.Tensor
    test_masks: torch.Tensor | list[torch.Tensor]
    test_defects: list[str]
    name: str
    test_paths: list[str] = field(default_factory=list)
    has_masks: bool = True

    def __repr__(self) -> str:
        kinds = sorted(set(self.test_defects))

        def shape(images) -> str:
            return str(tuple(images.shape)) if torch.is_tensor(images) else f"{len(images)} images of own sizes"

        return (f"AnomalyData({self.name!r}: train {shape(self.train_images)}, test "
                f"{shape(self.test_images)} with {int(self.test_labels.sum())} defective, "
                f"kinds {kinds})")


def _stack_or_list(images: list[torch.Tensor], dtype: torch.dtype, same_size: bool) -> torch.Tensor | list:
    """Images [3, H, W] float in [0, 1] as `dtype` (uint8: 0..255), stacked [N, 3, H, W] when `same_size`."""
    if dtype == torch.uint8:
        images = [(im * 255).round_().to(torch.uint8) for im in images]
    elif dtype != torch.float32:
        raise ValueError(f"dtype must be torch.float32 or torch.uint8, not {dtype}.")
    return torch.stack(images) if same_size else images


def load_anomaly_data(root: str | Path, image_size: int | tuple[int, int] | None = 256, n_train: int | None = None,
                      allow_missing_masks: bool = False, resize: str = "stretch",
                      dtype: torch.dtype = torch.float32) -> AnomalyData:
    """Read a whole MVTec-layout folder into memory (see `AnomalyData` for the shapes).

    `n_train` keeps that many training images, evenly spaced over the sorted file list (all by
    default); the test split is always complete. `image_size` (S or (H, W)) and `resize`
    ("stretch", "pad" or "crop", see `cu.data.fit_to_size`) bring images and masks alike to one
    size; `image_size=None` keeps every image at its own size (lists of tensors; give the
    detector `image_size=...` and it brings them to its size and its maps back to each image's).
    `dtype=torch.uint8` keeps images as 0..255 bytes (a quarter of the memory of float32).
    """
    train = MVTecDataset(root, "train", image_size, resize=resize)
    if n_train is not None and n_train < len(train):
        keep = np.linspace(0, len(train) - 1, n_train).round().astype(int)
        train.samples = [train.samples[i] for i in keep]
    test = MVTecDataset(root, "test", image_size, allow_missing_masks, resize)
    items = [test[i] for i in range(len(test))]
    same = image_size is not None
    return AnomalyData(
        train_images=_stack_or_list([train[i]["image"] for i in range(len(train))], dtype, same),  # [N, 3, S, S]
        test_images=_stack_or_list([it["image"] for it in items], dtype, same),  # [M, 3, S, S]
        test_labels=torch.tensor([it["label"] for it in items], dtype=torch.int64),  # [M]
        test_masks=_stack_or_list([it["mask"][0] for it in items], torch.float32, same),  # [M, S, S]
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


def default_anomaly_root(image_size: int = 128, texture: str = "brick",
                         root: str | Path | None = None, n_train: int | None = None,
                         n_test: int | None = None) -> Path:
    """The data set labs 5-7 use: an MVTec AD category you downloaded, else the offline one.

    Looks for the first category folder in `DATA_DIR/mvtec` (`root/mvtec`) in the MVTec layout;
    if there is none, writes (or reuses) `make_defect_dataset` output in
    `DATA_DIR/defects_<texture>` (80 + 48 images in fast mode, 240 + 96 otherwise). `n_train`
    and `n_test` ask for other sizes (e.g. a larger test set, for tighter AUROC intervals); such
    a set gets its own folder, `defects_<texture>_<n_train>_<n_test>`, so labs with different
    sizes do not rewrite each other's. Prints which one it chose.
    """
    root = Path(root or DATA_DIR)
    mvtec = root / "mvtec"
    found = sorted(d for d in mvtec.glob("*") if (d / "train" / "good").is_dir())
    if found:
        print(f"Using MVTec AD category '{found[0].name}' from {found[0]}.")
        return found[0]
    default_train, default_test = (80, 48) if _device.FAST else (240, 96)
    if n_test is not None and n_test < 2:
        raise ValueError(f"n_test must be at least 2 (one good, one defective image), got {n_test}.")
    n_train, n_test = n_train or default_train, n_test or default_test
    name = f"defects_{texture}" if (n_train, n_test) == (default_train, default_test) else \
        f"defects_{texture}_{n_train}_{n_test}"
    path = make_defect_dataset(root / name, texture, n_train, n_test, image_size)
    print(f"Using the offline defect data set {path} (scikit-image '{texture}' texture with "
          "synthetic defects); download real data with cu.data.download_mvtec('bottle').")
    return path
