"""Notebooks write only into the course's data/ and build/, wherever they run, and run twice alike.

A lab that writes `../build/x` works from notebooks/ only: from build/student/ it writes
build/build/x, and on Colab (cwd /content) it writes /build/x. So labs get their folders from
`cu.data.DATA_DIR` and `cu.data.build_dir(...)`, never from path strings. Two checks:

- statically, no code cell of any lab holds a path string that leaves the course (`../`, an
  absolute or home path) or asks for a folder outside it (`tempfile`, `os.chdir`, `Path.home`);
- dynamically, lab 3 runs twice in place in fast mode: afterwards only files under data/ and
  build/ are new or changed, and the two runs print the same text (cells that print timings aside).
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import nbformat
import pytest
from conftest import NOTEBOOKS, REPO, python_source

RERUN_NOTEBOOK = REPO / "notebooks" / "03_convolution_by_hand.ipynb"  # cheap: ~15 s in fast mode
ALLOWED = ("data", "build")  # top-level folders that notebooks may write into
NOT_WATCHED = {".git", ".venv", "__pycache__", ".ipynb_checkpoints", ".pytest_cache"}
ESCAPING_PATH = re.compile(r"^(/[\w.]|~|[A-Za-z]:[\\/])|(^|[\\/])\.\.([\\/]|$)")  # /abs, ~, C:\, ..
OUTSIDE_CALLS = re.compile(r"^(tempfile\.\w+|os\.chdir|(pathlib\.)?Path\.home|os\.path\.expanduser)$")
TIMING = re.compile(r"\d\s*(s|ms|µs|us|ns|sec|seconds?|x|×)\b|\b(faster|slower|speed-?up|per second)\b", re.I)


def string_literals(tree: ast.AST) -> list[str]:
    """Every string literal in `tree`; an f-string counts as one, with `{}` for each field."""
    found, parts = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            parts |= {id(v) for v in node.values}
            found.append("".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values))
    found += [n.value for n in ast.walk(tree)
              if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in parts]
    return found


def leaks(source: str) -> list[str]:
    """What in a code cell's source would read or write outside the course's data/ and build/."""
    tree = ast.parse(python_source(source))
    paths = [f"path {s!r}" for s in string_literals(tree) if ESCAPING_PATH.search(s)]
    calls = [f"call {ast.unparse(n.func)}()" for n in ast.walk(tree)
             if isinstance(n, ast.Call) and OUTSIDE_CALLS.match(ast.unparse(n.func))]
    return paths + calls


def files_in(root: Path) -> dict[str, int]:
    """{path relative to `root`: modification time in ns} of every file, skipping NOT_WATCHED folders."""
    found = {}
    for folder, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in NOT_WATCHED]
        for name in files:
            path = Path(folder, name)
            found[path.relative_to(root).as_posix()] = path.stat().st_mtime_ns
    return found


def written_outside(before: dict[str, int], after: dict[str, int]) -> list[str]:
    """Files new or changed between two `files_in` snapshots that lie outside data/ and build/."""
    changed = [path for path, mtime in after.items() if before.get(path) != mtime]
    return sorted(p for p in changed if p.split("/")[0] not in ALLOWED)


def execute(path: Path, timeout: int = 600) -> nbformat.NotebookNode:
    """Run the notebook at `path` in its own folder (as Jupyter does) with a fresh kernel; return it."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    return nb


def printed(nb: nbformat.NotebookNode) -> dict[int, str]:
    """{cell index: the text it printed} for the code cells whose printed text holds no timing."""
    texts = {i: "".join(o.get("text", "") for o in c.outputs if o.output_type == "stream")
             for i, c in enumerate(nb.cells) if c.cell_type == "code"}
    return {i: text for i, text in texts.items() if not TIMING.search(text)}


# ---------------------------------------------------------------------------------------------
# Static: no path in any lab leaves the course
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_no_code_cell_names_a_path_outside_data_and_build(path):
    cells = nbformat.read(path, as_version=4).cells
    found = {i: leaks(c.source) for i, c in enumerate(cells) if c.cell_type == "code"}
    found = {i: what for i, what in found.items() if what}
    assert not found, (f"cells {found} name places outside the course's data/ and build/: use "
                       "cu.data.build_dir('lab9') / 'file' or cu.data.DATA_DIR instead")


@pytest.mark.parametrize("source, caught", [
    ('LOG_DIR = "../build/runs/lab4"', True),
    ('learn = Learner(dls, net, path="..")', True),
    ("torch.save(net, f'/tmp/{name}.pt')", True),
    ('open("~/notes.txt", "w")', True),
    ("workdir = Path(tempfile.mkdtemp())", True),
    ('os.chdir("build")', True),
    ('LOG_DIR = cu.data.build_dir("runs", "lab4")', False),
    ('print(f"{a}/{b} = {a / b}", "1..3", "x/../")', True),  # the last one escapes
    ('print(f"{a}/{b} = {a / b}", "1..3", "and/or")', False),
    ("!pip install -q ../course", False),  # shell lines are not Python: not checked
])
def test_the_static_check_catches_paths_that_leave_the_course(source, caught):
    assert bool(leaks(source)) == caught, leaks(source)


# ---------------------------------------------------------------------------------------------
# Dynamic: a lab run twice in place
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_runs() -> tuple[dict, dict, nbformat.NotebookNode, nbformat.NotebookNode]:
    """The repository's files before and after running RERUN_NOTEBOOK twice, and the two runs."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("COURSE_FAST", "1")  # the kernels inherit it, as under `make test`
        env.setenv("MPLBACKEND", "agg")
        before = files_in(REPO)
        first, second = execute(RERUN_NOTEBOOK), execute(RERUN_NOTEBOOK)
    return before, files_in(REPO), first, second


def test_a_lab_writes_only_into_data_and_build(two_runs):
    before, after, _, _ = two_runs
    assert not written_outside(before, after), "the lab wrote outside data/ and build/"


def test_a_lab_run_twice_prints_the_same(two_runs):
    _, _, first, second = two_runs
    a, b = printed(first), printed(second)
    assert a.keys() == b.keys(), "a cell printed a timing in one run only"
    assert len(a) >= 5, "too few cells print timing-free text to compare"
    differ = {i: (a[i], b[i]) for i in a if a[i] != b[i]}
    assert not differ, f"cells print differently when the lab runs again: {differ}"


def test_the_write_check_sees_a_stray_file(tmp_path):
    """A notebook that writes next to itself is caught; one that writes into build/ is not."""
    from nbformat.v4 import new_code_cell, new_notebook

    course = tmp_path / "course"
    (course / "notebooks").mkdir(parents=True)
    nb = new_notebook(cells=[new_code_cell("from pathlib import Path\n"
                                           "Path('../build').mkdir()\nPath('../build/ok.txt').write_text('ok')\n"
                                           "Path('stray.txt').write_text('oops')")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, course / "notebooks" / "99_stray.ipynb")
    before = files_in(course)
    execute(course / "notebooks" / "99_stray.ipynb", timeout=60)
    assert written_outside(before, files_in(course)) == ["notebooks/stray.txt"]
