"""What the test files share: the course folder, its notebooks, and the tools loaded as modules.

pytest puts this folder on `sys.path`, so test modules import these names with
`from conftest import REPO, NOTEBOOKS, load_tool`. (`tests/browser` is a package, so that its own
conftest.py is `browser.conftest` and never shadows this one.)
"""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
"""The course checkout: the folder with pyproject.toml, notebooks/, course_utils/ and tools/."""

NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
"""Every notebook of the course, lab 0 (`00_setup`) included."""

LABS = [p for p in NOTEBOOKS if not p.name.startswith("00_")]
"""The labs proper: every notebook but lab 0, which checks the machine and has no exercises."""


@functools.cache
def load_tool(name: str) -> ModuleType:
    """`tools/<name>.py` imported as a module (tools/ is a folder of scripts, not a package).

    Loaded once per test session and shared by every test module that asks for it.
    """
    path = REPO / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"Cannot load {path} as a module: does the file exist?")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def python_source(source: str) -> str:
    """A code cell's source with IPython-only lines (`!cmd`, `%magic`) replaced by `pass`."""
    return "\n".join(re.sub(r"^(\s*)[!%].*", r"\1pass", line) for line in source.splitlines())


@pytest.fixture(scope="session")
def backbone() -> torch.nn.Module:
    """The bundled pretrained EfficientNet-Lite0, built once per test session."""
    from course_utils.backbones import pretrained_backbone

    return pretrained_backbone("efficientnet_lite0")


def texture(n: int, seed: int, size: int) -> torch.Tensor:
    """Stationary 'good' images for detector tests: smoothed noise around mid-grey, [n, 3, size, size] in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(n, 1, size // 4, size // 4, generator=g)  # [n, 1, s/4, s/4]
    gray = F.interpolate(noise, size=size, mode="bilinear", align_corners=False)  # [n, 1, size, size]
    images = 0.35 + 0.3 * gray.repeat(1, 3, 1, 1) + 0.02 * torch.randn(n, 3, size, size, generator=g)
    return images.clamp(0, 1)
