"""Where data lives: `DATA_DIR` for downloads and generated data sets, `build_dir(...)` for what labs write.

This module and `course_utils.device` are the only ones that read environment variables.
"""

from __future__ import annotations

import os
from pathlib import Path


def _checkout_root() -> Path | None:
    """The course folder when course_utils runs from a checkout (`pyproject.toml` beside it), else None."""
    repo = Path(__file__).resolve().parents[2]  # course_utils/data/paths.py -> the checkout
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
