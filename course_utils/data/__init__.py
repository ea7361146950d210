"""Data for the labs: CIFAR-10, MVTec AD, an offline defect data set and your own images.

Everything here returns plain tensors so that the labs can show every step. One module per concern:

- `paths`: `DATA_DIR` (`<course>/data`, or `$COURSE_DATA`) for downloads and generated data sets,
  `build_dir(...)` (`<course>/build/...`) for what the labs write (checkpoints, logs).
- `images`: `read_image`, `read_mask`, `resize_mask` (any file format, mode and size), `fit_to_size` /
  `map_to_image` (an image to a model's size by "pad", "crop" or "stretch", and its anomaly map back), `normalize_uint8`
  (uint8 images -> floats in [0, 1], standardised per channel if you pass a mean and std) and
  `paste_on_canvas` (images at random places on a larger canvas, with their boxes: lab 4's localisation).
- `cifar` (labs 1-4): `load_cifar10` reads a local copy, the cached download or, offline in fast
  mode, a loudly announced stand-in made from scikit-learn's handwritten digits; `make_loaders`
  and `BatchAugmenter` turn it into normalised, optionally augmented batches.
- `mvtec` (labs 5-7): `MVTecDataset` and `load_anomaly_data` read the MVTec folder layout
  (`train/good`, `test/<defect>`, `ground_truth/<defect>/<name>_mask.png`) into `AnomalyData`;
  `load_image_folder` reads a folder of your own good/defective photos into the same form;
  `default_anomaly_root` picks MVTec AD if you downloaded it, else the offline data set.
- `download`: `download_mvtec` fetches one official category archive (resumable, checksummed).
- `defects`: `make_defect_dataset` writes an MVTec-layout data set made from the real texture
  photos that scikit-image ships, with synthetic scratches, cracks, stains and cut-and-paste
  patches whose masks are exact; `cut_paste` makes CutPaste-style synthetic defects in tensors.

Every public name is available as `cu.data.<name>`, whichever module defines it.
"""

from __future__ import annotations

from course_utils.data.cifar import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR10_URL,
    BatchAugmenter,
    ImageData,
    ImageTensorDataset,
    digits_stand_in,
    load_cifar10,
    make_loaders,
    make_test_loader,
    random_crop_flip,
)
from course_utils.data.defects import (
    DEFECT_KINDS,
    TEXTURES,
    add_defect,
    cut_paste,
    make_defect_dataset,
)
from course_utils.data.download import (
    MVTEC_URLS,
    download_file,
    download_mvtec,
    sha256_of,
)
from course_utils.data.images import (
    IMAGE_EXTENSIONS,
    RESIZE_MODES,
    Placement,
    fit_mask_to_size,
    fit_to_size,
    map_to_image,
    normalize_uint8,
    paste_on_canvas,
    placement,
    read_image,
    read_mask,
    resize_mask,
)
from course_utils.data.mvtec import (
    MVTEC_LAYOUT,
    AnomalyData,
    MVTecDataset,
    Sample,
    check_mvtec_layout,
    default_anomaly_root,
    list_samples,
    load_anomaly_data,
    load_image_folder,
)
from course_utils.data.paths import DATA_DIR, build_dir

__all__ = [
    "CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR10_URL", "DATA_DIR", "DEFECT_KINDS",
    "IMAGE_EXTENSIONS", "MVTEC_LAYOUT", "MVTEC_URLS", "RESIZE_MODES", "TEXTURES",
    "AnomalyData", "BatchAugmenter", "ImageData", "ImageTensorDataset", "MVTecDataset", "Placement", "Sample",
    "add_defect", "build_dir", "check_mvtec_layout", "cut_paste", "default_anomaly_root", "digits_stand_in",
    "download_file", "download_mvtec", "fit_mask_to_size", "fit_to_size", "list_samples", "load_anomaly_data",
    "load_cifar10", "load_image_folder", "make_defect_dataset", "make_loaders", "make_test_loader", "map_to_image",
    "normalize_uint8", "paste_on_canvas", "placement",
    "random_crop_flip", "read_image", "read_mask", "resize_mask", "sha256_of",
]
