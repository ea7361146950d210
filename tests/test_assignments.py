"""tools/assignments.py and grading mode: nbgrader metadata, then real nbgrader grading three submissions of lab 1.

The end-to-end test runs nbgrader's own `generate_assignment` and `autograde` with its SQLite
gradebook on lab 1 (the fastest lab with exercises): a fully solved, an untouched and a half solved
submission must get full, zero and partial points in grades.csv.
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from course_utils import checks

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("assignments", REPO / "tools" / "assignments.py")
assignments = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(assignments)

LAB = REPO / "notebooks" / "01_how_a_computer_sees_numbers.ipynb"
SOLUTION = '''def square(x):
    """x -> x * x."""
    # BEGIN SOLUTION
    # STUB: return None
    return x * x
    # END SOLUTION'''


CHECK = "cu.checks.check_square(square)\nsquare = cu.checks.solved_or_reference(square, None, 'square')"


def small_lab(check: str = CHECK) -> nbformat.NotebookNode:
    """A lab with one exercise: solution cell, then a check cell holding `check`."""
    solution = new_code_cell(SOLUTION)
    solution.metadata["tags"] = ["solution"]
    nb = new_notebook(cells=[new_markdown_cell("# Lab 9"), new_code_cell("import course_utils as cu"),
                             solution, new_code_cell(check), new_markdown_cell("## Summary")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


# ---------------------------------------------------------------------------------------------
# Grading mode
# ---------------------------------------------------------------------------------------------
def test_checkers_raise_only_in_grading_mode(monkeypatch, capsys):
    monkeypatch.delenv("COURSE_GRADING", raising=False)
    assert checks.check_dense_params(None) is False
    assert checks.NOT_SOLVED in capsys.readouterr().out
    monkeypatch.setenv("COURSE_GRADING", "1")
    with pytest.raises(checks.NotSolvedError, match=checks.NOT_SOLVED):
        checks.check_dense_params(None)
    assert checks.check_dense_params(checks.reference_dense_params) is True


def test_solved_or_reference_still_falls_back_in_grading_mode(monkeypatch, capsys):
    monkeypatch.setenv("COURSE_GRADING", "1")
    chosen = checks.solved_or_reference(lambda *a: None, checks.reference_dense_params, "dense_params",
                                        check=checks.check_dense_params)
    assert chosen is checks.reference_dense_params
    assert "using the reference dense_params" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# nbgrader source notebooks
# ---------------------------------------------------------------------------------------------
def test_check_cell_is_split_into_the_graded_call_and_the_rest():
    nb = assignments.nbgrader_source(small_lab(), "small")
    kinds = [(c.metadata.get("nbgrader", {}).get("grade_id"), c.metadata.get("nbgrader", {}).get("points"))
             for c in nb.cells]
    assert kinds == [(None, None), (None, None), ("answer_square", None), ("check_square", 1), (None, None),
                     (None, None)]
    assert nb.cells[3].source == "cu.checks.check_square(square)"
    assert nb.cells[4].source.startswith("square = cu.checks.solved_or_reference")
    assert nb.cells[2].metadata["nbgrader"]["solution"] and nb.cells[3].metadata["nbgrader"]["locked"]
    assert len({c.id for c in nb.cells}) == len(nb.cells)
    nbformat.validate(nb)


def test_a_solution_without_a_checker_after_it_is_refused():
    with pytest.raises(ValueError, match="must call `cu.checks.check_"):
        assignments.nbgrader_source(small_lab(check="print(square(2))"), "small")


def test_course_stubs_replace_solutions_like_the_student_edition():
    cell = new_code_cell(SOLUTION)
    stubs = assignments.CourseStubs()
    assert stubs._replace_solution_region(cell, "python") is True
    assert cell.source == assignments.editions.stub_solution(SOLUTION)
    assert "return x * x" not in cell.source and "return None" in cell.source


# ---------------------------------------------------------------------------------------------
# End to end with nbgrader
# ---------------------------------------------------------------------------------------------
def submission(released: nbformat.NotebookNode, source: nbformat.NotebookNode, n_solved: int) -> nbformat.NotebookNode:
    """The released notebook with the course's answers typed into its first `n_solved` solution cells."""
    answers = {c.metadata["nbgrader"]["grade_id"]: c.source for c in source.cells
               if c.metadata.get("nbgrader", {}).get("solution")}
    nb, solved = nbformat.from_dict(released), 0
    for cell in nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id in answers and solved < n_solved:
            cell.source, solved = answers[grade_id], solved + 1
    return nb


def test_nbgrader_grades_full_zero_and_partial(tmp_path):
    root = tmp_path / "nbgrader"
    assert assignments.release(LAB, root) == ["lab01"]
    released = nbformat.read(root / "release" / "lab01" / LAB.name, as_version=4)
    source = nbformat.read(root / "source" / "lab01" / LAB.name, as_version=4)
    n_exercises = sum(bool(c.metadata.get("nbgrader", {}).get("solution")) for c in released.cells)
    assert n_exercises >= 2, "lab 1 needs two exercises for a half-solved submission"
    assert "# BEGIN SOLUTION" not in nbformat.writes(released), "nbgrader released an answer"
    for student, n_solved in [("solved", n_exercises), ("untouched", 0), ("half", n_exercises // 2)]:
        (tmp_path / "submissions" / student).mkdir(parents=True)
        nbformat.write(submission(released, source, n_solved), tmp_path / "submissions" / student / LAB.name)

    rows = assignments.grade(tmp_path / "submissions", root)

    with open(root / "grades.csv", newline="") as grades:
        table = {r["student"]: r for r in csv.DictReader(grades)}
    assert rows and set(table) == {"solved", "untouched", "half"}
    assert all(r["lab"] == "lab01" and float(r["max_points"]) == n_exercises for r in table.values())
    assert float(table["solved"]["points"]) == n_exercises
    assert float(table["untouched"]["points"]) == 0
    assert float(table["half"]["points"]) == n_exercises // 2
    print((root / "grades.csv").read_text())


def test_collect_names_what_is_wrong_with_a_submissions_folder(tmp_path):
    (tmp_path / "root" / "source" / "lab01").mkdir(parents=True)
    (tmp_path / "root" / "source" / "lab01" / "01_x.ipynb").write_text("{}")
    (tmp_path / "subs" / "bob").mkdir(parents=True)
    (tmp_path / "subs" / "bob" / "01_x.ipynb").write_text("{}")
    assert assignments.collect(tmp_path / "subs", tmp_path / "root") == {"lab01": {"bob"}}
    assert (tmp_path / "root" / "submitted" / "bob" / "lab01" / "01_x.ipynb").is_file()
    (tmp_path / "subs" / "bob" / "02_y.ipynb").write_text("{}")
    with pytest.raises(ValueError, match="no lab is released under this name"):
        assignments.collect(tmp_path / "subs", tmp_path / "root")
    (tmp_path / "subs" / "bob" / "02_y.ipynb").unlink()
    (tmp_path / "subs" / "bad name").mkdir()
    with pytest.raises(ValueError, match="letters, digits"):
        assignments.collect(tmp_path / "subs", tmp_path / "root")
