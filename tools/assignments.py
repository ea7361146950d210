"""nbgrader assignments from the course notebooks, and grades from nbgrader's own gradebook.

    python tools/assignments.py release notebooks/ build/nbgrader/    # source/, then nbgrader generate_assignment
    python tools/assignments.py grade   SUBMISSIONS/ build/nbgrader/  # collect, nbgrader autograde, grades.csv

nbgrader does the work: its `generate_assignment` writes what students get into `release/`, its
`autograde` runs their notebooks and fills its SQLite gradebook (`gradebook.db`). This tool only
writes what nbgrader reads, an nbgrader course folder: `nbgrader_config.py` and `source/labNN/`,
where each course notebook carries nbgrader's cell metadata: a cell tagged `solution` becomes a
solution cell (its `# BEGIN SOLUTION` region is replaced by the course's `# STUB:` line, the rule
`tools/editions.py` applies for the plain student edition), and the checker call after it becomes
a locked, autograded test cell worth `POINTS` points. The checkers raise in grading mode
(`COURSE_GRADING=1`, set here for autograde), so a test cell earns its points only when its check passes.
A submissions folder holds one folder per student with their lab notebooks, named as released.
"""

from __future__ import annotations

import argparse
import ast
import copy
import csv
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell

TOOLS_DIR = Path(__file__).resolve().parent
POINTS = 1  # per checker cell
COURSE_ID = "anomaly-detection-course"
CHECK_CALL = re.compile(r"\bchecks\.check_(\w+)\(")  # `cu.checks.check_standardize(standardize)`
STUDENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
SCHEMA = 3  # nbgrader's cell-metadata schema version

_spec = importlib.util.spec_from_file_location("editions", TOOLS_DIR / "editions.py")
editions = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(editions)

CONFIG = '''# Written by tools/assignments.py (`make assignments`): the course's nbgrader settings.
import sys

sys.path.insert(0, {tools!r})
from assignments import CourseStubs  # noqa: E402  the course's `# STUB:` lines, not nbgrader's stub
from nbgrader.converters import GenerateAssignment  # noqa: E402
from nbgrader.preprocessors import ClearSolutions  # noqa: E402

c = get_config()  # noqa: F821  (nbgrader provides it)
c.CourseDirectory.course_id = {course!r}
c.CourseDirectory.root = {root!r}
c.Execute.timeout = 1800  # seconds per cell: a lab's training cell in full mode on a CPU
c.GenerateAssignment.preprocessors = [CourseStubs if p is ClearSolutions else p
                                      for p in GenerateAssignment.class_traits()["preprocessors"].default()]
'''


# ---------------------------------------------------------------------------------------------
# nbgrader source notebooks
# ---------------------------------------------------------------------------------------------
def lab_name(notebook: Path) -> str:
    """The assignment name of a course notebook: `01_how_....ipynb` -> `lab01`."""
    return f"lab{notebook.name[:2]}"


def nbgrader_meta(grade_id: str, solution: bool = False, points: int = 0) -> dict:
    """nbgrader's metadata for a solution cell (`solution`) or an autograded test cell (`points` > 0)."""
    meta = {"grade": points > 0, "grade_id": grade_id, "locked": points > 0, "schema_version": SCHEMA,
            "solution": solution, "task": False}
    if points:
        meta["points"] = points
    return meta


def split_check(source: str, where: str) -> tuple[str, str]:
    """Split a checker cell into (the checker call, the rest): only the call is graded.

    The leading top-level statements that call `checks.check_...` form the graded part; what
    follows (e.g. `x = cu.checks.solved_or_reference(...)`) must run even when the check fails,
    so it goes into a cell of its own. Raises ValueError when the cell does not start with a check.
    """
    lines = source.splitlines()
    body = ast.parse(source).body
    n_checks = 0
    for statement in body:
        if not CHECK_CALL.search(ast.get_source_segment(source, statement) or ""):
            break
        n_checks += 1
    if n_checks == 0:
        raise ValueError(f"{where}: the cell after a `solution` cell must call `cu.checks.check_...`; "
                         "put the exercise's checker there (CONTRIBUTING.md)")
    cut = body[n_checks].lineno - 1 if n_checks < len(body) else len(lines)
    return "\n".join(lines[:cut]).rstrip(), "\n".join(lines[cut:]).strip()


def nbgrader_source(nb: nbformat.NotebookNode, name: str = "notebook") -> nbformat.NotebookNode:
    """Return a copy of a course notebook with nbgrader metadata: solutions and graded checks.

    Each code cell tagged `solution` becomes an nbgrader solution cell; the code cell right after
    it must call a checker, and that call becomes an autograded test cell worth `POINTS` (the rest
    of that cell follows as an ordinary cell). Outputs are cleared. Raises ValueError naming the
    cell when the course's conventions are broken.
    """
    nb = editions.strip_outputs(copy.deepcopy(nb))
    cells, ids = [], set()
    pending = None  # the solution cell waiting for its check
    for i, cell in enumerate(nb.cells):
        where = f"{name}, cell {i}"
        if pending is not None and cell.cell_type == "code":
            graded, rest = split_check(cell.source, where)
            grade_id = unique(f"check_{CHECK_CALL.search(graded).group(1)}", ids)
            pending.metadata["nbgrader"] = nbgrader_meta(grade_id.replace("check_", "answer_", 1), solution=True)
            cell.source = graded
            cell.metadata["nbgrader"] = nbgrader_meta(grade_id, points=POINTS)
            cells.append(cell)
            if rest:
                cells.append(new_code_cell(rest))
            pending = None
            continue
        if cell.cell_type == "code" and "solution" in editions.cell_tags(cell):
            editions.stub_solution(cell.source, where)  # raises on broken markers, as the student edition does
            pending = cell
        cells.append(cell)
    if pending is not None:
        raise ValueError(f"{name}: the last `solution` cell has no checker cell after it")
    nb.cells = cells
    return _with_ids(nb)


def _with_ids(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Give every cell a fresh, unique id (cells were split), as nbformat 4.5 wants."""
    for k, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{k}"
    nb.nbformat, nb.nbformat_minor = 4, max(nb.get("nbformat_minor", 5), 5)
    return nb


def unique(grade_id: str, taken: set[str]) -> str:
    """`grade_id`, or `grade_id_2`, `_3`, ... if a checker is called twice in one notebook."""
    candidate, k = grade_id, 1
    while candidate in taken:
        k += 1
        candidate = f"{grade_id}_{k}"
    taken.add(candidate)
    return candidate


def graded_notebooks(src: Path) -> list[Path]:
    """The course notebooks in `src` that have at least one exercise (lab 0 has none)."""
    return [p for p in editions.find_notebooks(src)
            if any("solution" in editions.cell_tags(c) for c in nbformat.read(p, as_version=4).cells)]


def write_course(src: Path, root: Path) -> list[str]:
    """Write `root/nbgrader_config.py` and `root/source/labNN/<notebook>` for every graded lab in `src`.

    Returns the assignment names. An existing gradebook and earlier submissions are kept.
    """
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    (root / "nbgrader_config.py").write_text(
        CONFIG.format(tools=str(TOOLS_DIR), course=COURSE_ID, root=str(root)), encoding="utf-8")
    names = []
    for path in graded_notebooks(src):
        nb = nbgrader_source(nbformat.read(path, as_version=4), name=path.name)
        nbformat.validate(nb)
        folder = root / "source" / lab_name(path)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / path.name)
        n_points = sum(c.metadata.get("nbgrader", {}).get("points", 0) for c in nb.cells)
        print(f"{folder / path.name}: {n_points} point(s)")
        names.append(lab_name(path))
    return names


def nbgrader(root: Path, *args: str, grading: bool = False) -> None:
    """Run the `nbgrader` command in the course folder `root`; raise RuntimeError with its log if it fails.

    `grading` sets `COURSE_GRADING=1` for the kernels it starts (checkers raise on a wrong answer).
    """
    env = dict(os.environ, COURSE_GRADING="1" if grading else "0")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])  # nbgrader runs `alembic`
    command = [sys.executable, "-m", "nbgrader", *args]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    if done.returncode != 0 or re.search(r"\| ERROR\]", done.stderr):  # "[AutogradeApp | ERROR] ..."
        raise RuntimeError(f"`nbgrader {' '.join(args)}` failed in {root}:\n{done.stderr[-4000:]}")


def release(src: Path, root: Path) -> list[str]:
    """Write the nbgrader course for the labs in `src` and run nbgrader's `generate_assignment` on each.

    `root/release/labNN/` then holds what students get; the assignments enter the gradebook.
    """
    names = write_course(src, root)
    for name in names:
        nbgrader(root.resolve(), "generate_assignment", name, "--force")
        print(f"{root / 'release' / name}: released")
    return names


# ---------------------------------------------------------------------------------------------
# Grading
# ---------------------------------------------------------------------------------------------
def collect(submissions: Path, root: Path) -> dict[str, set[str]]:
    """Copy `submissions/<student>/<notebook>.ipynb` into nbgrader's `root/submitted/<student>/labNN/`.

    A notebook belongs to the lab whose source has the same file name. Returns {lab: {students}}.
    Raises ValueError for a bad student folder name or a notebook no lab matches.
    """
    labs = {p.name: p.parent.name for p in (root / "source").glob("lab*/*.ipynb")}
    found: dict[str, set[str]] = {}
    students = sorted(p for p in submissions.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not students:
        raise ValueError(f"no student folder in {submissions}: put each student's notebooks in SUBMISSIONS/<student>/")
    for folder in students:
        if not STUDENT_ID.fullmatch(folder.name):
            raise ValueError(f"{folder}: a student folder name may hold letters, digits, '_', '.', '-' only")
        for notebook in sorted(folder.glob("*.ipynb")):
            if notebook.name not in labs:
                raise ValueError(f"{notebook}: no lab is released under this name; "
                                 f"expected one of {sorted(labs)}")
            target = root / "submitted" / folder.name / labs[notebook.name]
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(notebook, target / notebook.name)
            found.setdefault(labs[notebook.name], set()).add(folder.name)
    return found


def write_grades(root: Path, target: Path) -> list[dict]:
    """Write `target` (CSV: student, lab, points, max_points) from nbgrader's gradebook; return the rows."""
    from nbgrader.api import Gradebook, MissingEntry

    rows = []
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gradebook:
        for assignment in gradebook.assignments:
            for student in gradebook.students:
                try:
                    submission = gradebook.find_submission(assignment.name, student.id)
                except MissingEntry:
                    continue
                rows.append({"student": student.id, "lab": assignment.name,
                             "points": submission.score, "max_points": submission.max_score})
    rows.sort(key=lambda r: (r["lab"], r["student"]))
    with open(target, "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=["student", "lab", "points", "max_points"])
        writer.writeheader()
        writer.writerows(rows)
    return rows


def grade(submissions: Path, root: Path, src: Path | None = None) -> list[dict]:
    """Autograde every submission in `submissions` with nbgrader; write and return `root/grades.csv`.

    Releases the labs from `src` first when `root` has no source yet. Notebooks run in grading mode.
    """
    root = root.resolve()
    if not (root / "source").is_dir():
        if src is None:
            raise ValueError(f"{root} has no nbgrader course yet: run `make assignments` first")
        release(src, root)
    for lab, students in sorted(collect(submissions, root).items()):
        for student in sorted(students):
            nbgrader(root, "autograde", lab, f"--student={student}", "--force", grading=True)
            print(f"{student} {lab}: autograded")
    rows = write_grades(root, root / "grades.csv")
    print(f"{root / 'grades.csv'}: {len(rows)} submission(s)")
    return rows


# ---------------------------------------------------------------------------------------------
# nbgrader plug-in: the course's stubs
# ---------------------------------------------------------------------------------------------
def _course_stubs_class():
    """nbgrader's ClearSolutions with the course's stubs (defined lazily: nbgrader is a dev extra)."""
    from nbgrader.preprocessors import ClearSolutions

    class CourseStubs(ClearSolutions):
        """Replace each solution region by its `# STUB:` line (tools/editions.py), not nbgrader's generic stub."""

        def _replace_solution_region(self, cell, language):
            if cell.cell_type != "code" or editions.BEGIN not in cell.source:
                return super()._replace_solution_region(cell, language)
            cell.source = editions.stub_solution(cell.source)
            return True

    return CourseStubs


def __getattr__(name: str):
    """`from assignments import CourseStubs` in nbgrader_config.py builds the class on first use."""
    if name == "CourseStubs":
        return _course_stubs_class()
    raise AttributeError(name)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run one command, return the exit status (1 with a message on bad input)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rel = sub.add_parser("release", help="write the nbgrader course and run generate_assignment")
    rel.add_argument("src", type=Path, help="notebooks folder or one notebook")
    rel.add_argument("root", type=Path, help="the nbgrader course folder, e.g. build/nbgrader")
    gra = sub.add_parser("grade", help="autograde a folder of submissions, write grades.csv")
    gra.add_argument("submissions", type=Path, help="one folder per student, holding their notebooks")
    gra.add_argument("root", type=Path, help="the nbgrader course folder, e.g. build/nbgrader")
    gra.add_argument("--src", type=Path, default=None, help="release these notebooks first if root has none")
    args = parser.parse_args(argv)
    try:
        if args.command == "release":
            release(args.src, args.root)
        else:
            if not args.submissions.is_dir():
                raise ValueError(f"{args.submissions} is not a folder; "
                                 "give SUBMISSIONS=folder/with/one/folder/per/student")
            grade(args.submissions, args.root, args.src)
    except (ValueError, OSError, RuntimeError, SyntaxError, nbformat.ValidationError) as err:
        print(f"assignments.py {args.command}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
