"""tools/fork.py: every Colab badge, install cell and clone line agrees with [tool.course]; a fork rewrites them all."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("fork", REPO / "tools" / "fork.py")
fork = sys.modules.setdefault("fork", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(fork)

NOTEBOOKS = sorted(REPO.glob("notebooks/[0-9][0-9]_*.ipynb"))
OTHER_GITHUB = re.compile(r"github\.com/(?!anomaly-course/anomaly-detection-course)[\w.-]+/[\w.-]+")


def course_copy(tmp_path: Path) -> Path:
    """The files that carry course links, copied to `tmp_path/course` (the real ones are never rewritten)."""
    root = tmp_path / "course"
    shutil.copytree(REPO / "notebooks", root / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    for name in ("README.md", "CONTRIBUTING.md", "pyproject.toml", "environment.yml", "tests/test_notebook_format.py"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    return root


def install_cell(nb: nbformat.NotebookNode) -> str:
    """The source of the notebook's cell tagged `install`."""
    return next(c.source for c in nb.cells if "install" in c.metadata.get("tags", []))


def test_every_course_link_agrees_with_the_configured_repository():
    assert fork.disagreements(REPO) == []
    course = fork.configured(REPO)
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert course.colab(f"notebooks/{path.name}") in nb.cells[0].source, f"{path.name}: no Colab badge to itself"
        assert f'@ {course.pip}"' in install_cell(nb), f"{path.name}: the install cell does not install {course.pip}"
    assert f"git clone {course.url}\ncd {course.name}" in (REPO / "README.md").read_text(encoding="utf-8")


def test_fork_points_every_link_to_the_new_repository(tmp_path):
    root = course_copy(tmp_path)
    others_before = {p.name: OTHER_GITHUB.findall(p.read_text(encoding="utf-8")) for p in fork.text_files(root)}
    changed = fork.rewrite(root, "jane/ad-course", branch="spring")

    new = fork.configured(root)
    assert (new.slug, new.branch) == ("jane/ad-course", "spring")
    assert fork.disagreements(root) == []
    assert {p.name for p in changed} >= {"README.md", "CONTRIBUTING.md", *(p.name for p in NOTEBOOKS)}
    for path in fork.text_files(root):
        text = path.read_text(encoding="utf-8")
        assert "anomaly-course/anomaly-detection-course" not in text, f"{path.name} still names the old repository"
        others = [o for o in OTHER_GITHUB.findall(text) if not o.startswith("github.com/jane/")]
        assert others == [o for o in others_before[path.name] if not o.startswith("github.com/jane/")], \
            f"{path.name}: a link to another project changed"
    for path in (root / "notebooks").glob("[0-9][0-9]_*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert new.colab(f"notebooks/{path.name}") in nb.cells[0].source
        assert '@ git+https://github.com/jane/ad-course@spring"' in install_cell(nb)
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert "git clone https://github.com/jane/ad-course\ncd ad-course" in readme


def test_a_stale_link_is_reported(tmp_path):
    root = course_copy(tmp_path)
    path = NOTEBOOKS[0].name
    notebook = root / "notebooks" / path
    notebook.write_text(notebook.read_text(encoding="utf-8").replace(
        "github/anomaly-course/anomaly-detection-course/blob/main", "github/someone/else/blob/main"), encoding="utf-8")
    problems = fork.disagreements(root)
    assert len(problems) == 1 and path in problems[0] and "someone/else" in problems[0]


def test_a_bad_repository_name_says_how_to_write_it(tmp_path):
    with pytest.raises(ValueError, match="owner/name"):
        fork.rewrite(course_copy(tmp_path), "https://github.com/jane/ad-course")
