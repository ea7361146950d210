"""Every notebooks/NN_*.ipynb follows CONTRIBUTING.md: clean, same header, exercises with stubs, the four closing cells.

One test per rule and notebook, parametrised over the notebooks that exist, so a new lab is checked
the moment it lands. Lab 0 (`00_setup`) checks the machine and has no exercises: the lab-only rules
(parameters cell, exercises) apply from lab 1 on; the closing cells (summary, questionnaire,
further research, references) are required in every notebook.
"""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

import nbformat
import pytest
from conftest import LABS, NOTEBOOKS, REPO, load_tool, python_source

COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
COLAB_LINK = "https://colab.research.google.com/github/anomaly-course/anomaly-detection-course/blob/main/{}"

editions = load_tool("editions")


def read(path: Path) -> nbformat.NotebookNode:
    """The notebook at `path` (nbformat 4)."""
    return nbformat.read(path, as_version=4)


def tags(cell: nbformat.NotebookNode) -> list[str]:
    """The cell's tags."""
    return editions.cell_tags(cell)


def canonical_install_cell() -> str:
    """The install cell as CONTRIBUTING.md shows it: the python block after "tagged `install`"."""
    text = (REPO / "CONTRIBUTING.md").read_text(encoding="utf-8")
    block = re.search(r"tagged `install`.*?\n( *)```python\n(.*?)\n *```", text, re.S)
    assert block, "CONTRIBUTING.md lost its install-cell code block"
    return textwrap.dedent(block.group(2)).rstrip("\n")


def by_name(paths: list[Path]) -> dict:
    """pytest parametrize arguments with the file name as the test id."""
    return {"argvalues": paths, "ids": [p.name for p in paths]}


@pytest.mark.parametrize("path", **by_name(NOTEBOOKS))
def test_committed_clean_with_python3_kernel(path):
    nb = read(path)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"cells {dirty} have outputs: clear them before committing"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", "kernelspec must be python3"
    assert "widgets" not in nb.metadata, "saved widget state: clear it"


@pytest.mark.parametrize("path", **by_name(NOTEBOOKS))
def test_title_cell_has_the_colab_badge_for_this_notebook(path):
    title = read(path).cells[0]
    number = int(path.name[:2])
    assert title.cell_type == "markdown" and title.source.startswith(f"# Lab {number}: "), \
        f"the first cell must start with '# Lab {number}: <title>'"
    badge = f"[![Open In Colab]({COLAB_BADGE})]({COLAB_LINK.format(f'notebooks/{path.name}')})"
    assert badge in title.source, f"the title cell needs the Colab badge for its own path:\n{badge}"


@pytest.mark.parametrize("path", **by_name(NOTEBOOKS))
def test_install_cell_is_the_shared_one(path):
    cells = read(path).cells
    install = [i for i, c in enumerate(cells) if "install" in tags(c)]
    assert install == [1], f"exactly one cell tagged `install`, the second cell (found at {install})"
    assert cells[1].source == canonical_install_cell(), "the install cell differs from CONTRIBUTING.md"


@pytest.mark.parametrize("path", **by_name(NOTEBOOKS))
def test_setup_cell_before_the_first_section(path):
    cells = read(path).cells
    first_section = next((i for i, c in enumerate(cells) if c.source.startswith("## ")), len(cells))
    setup = [i for i, c in enumerate(cells[:first_section]) if c.cell_type == "code"
             and "import course_utils as cu" in c.source and re.search(r"^device = cu\.setup\(.*\)$", c.source, re.M)]
    assert setup, "before the first `##` section: a code cell with `import course_utils as cu` and `device = cu.setup()`"


@pytest.mark.parametrize("path", **by_name(LABS))
def test_lab_has_a_parameters_cell(path):
    cells = read(path).cells
    assert [c for c in cells if c.cell_type == "code" and "parameters" in tags(c)], "no cell tagged `parameters`"


CLOSING = ("## Summary", "## Questionnaire", "## Further research", "## References")


def numbered_items(text: str) -> list[str]:
    """The items of the numbered markdown list(s) in `text` (lines starting with `1.`, `2.`, ...)."""
    return re.findall(r"^\s*\d+\.\s+(.+)$", text, re.M)


def bullet_items(markdown: str) -> list[str]:
    """The items of a bulleted list, each with its indented continuation lines joined on."""
    items: list[str] = []
    for line in markdown.splitlines():
        if line.lstrip().startswith(("- ", "* ")):
            items.append(line.strip())
        elif items and line.startswith(" ") and line.strip():
            items[-1] += " " + line.strip()
    return items


@pytest.mark.parametrize("path", **by_name(NOTEBOOKS))
def test_lab_ends_with_summary_questionnaire_further_research_references(path):
    """CONTRIBUTING.md's rule 4: the last four cells, in this order, the last cell being References."""
    cells = read(path).cells
    last = cells[-len(CLOSING):]
    found = [c.source.splitlines()[0] if c.source else "" for c in last]
    assert all(c.cell_type == "markdown" for c in last) and found == list(CLOSING), \
        f"the last four cells must be markdown cells headed {list(CLOSING)} in this order; found {found}"
    elsewhere = [i for i, c in enumerate(cells[:-len(CLOSING)]) if c.source.splitlines()[:1] and
                 c.source.splitlines()[0] in CLOSING]
    assert not elsewhere, f"cells {elsewhere} repeat a closing heading before the end"
    summary, questions, research, references = (c.source for c in last)
    assert len(summary.split()) >= 30, "the Summary says what we learned, what to try next, where it is used"
    assert 6 <= len(numbered_items(questions)) <= 10, \
        f"the Questionnaire has 6-10 numbered questions (found {len(numbered_items(questions))})"
    assert 1 <= len(numbered_items(research)) <= 3, "Further research lists 1-3 numbered open tasks"
    entries = bullet_items(references)
    assert entries, "References lists its sources as a bulleted list"
    for entry in entries:
        assert re.search(r"https?://", entry) and re.search(r"\b(19|20)\d\d\b", entry), \
            f"a reference needs its year and a link: {entry.strip()[:80]}"


@pytest.mark.parametrize("path", **by_name(LABS))
def test_exercises_are_task_solution_check(path):
    cells = read(path).cells
    exercises = [i for i, c in enumerate(cells) if "exercise" in tags(c)]
    assert len(exercises) >= 2, f"a lab has at least 2 exercises (found {len(exercises)})"
    for i in exercises:
        task, solution, check = (cells + [None, None])[i:i + 3]
        assert task.cell_type == "markdown", f"cell {i}: the `exercise` cell is markdown"
        assert solution is not None and solution.cell_type == "code" and "solution" in tags(solution), \
            f"cell {i + 1}: an exercise is followed by a code cell tagged `solution`"
        for marker in (editions.BEGIN, editions.STUB, editions.END):
            assert marker in solution.source, f"cell {i + 1}: the solution lacks `{marker}`"
        assert check is not None and check.cell_type == "code" and "cu.checks." in check.source, \
            f"cell {i + 2}: a solution is followed by a checker call, `cu.checks.check_...(...)`"
    untasked = [i for i, c in enumerate(cells) if "solution" in tags(c) and i - 1 not in exercises]
    assert not untasked, f"solution cells {untasked} do not follow an `exercise` cell"


def answer_lines(source: str) -> list[str]:
    """The answer's code lines in a solution cell: between the markers, markers and stub excluded."""
    inside, found = False, []
    for line in map(str.strip, source.splitlines()):
        if line in (editions.BEGIN, editions.END):
            inside = line == editions.BEGIN
        elif inside and line and not line.startswith(editions.STUB):
            found.append(line)
    return found


@pytest.mark.parametrize("path", **by_name(NOTEBOOKS))
def test_student_edition_hides_answers_and_stays_valid_python(path):
    nb = read(path)
    student = editions.student_edition(nb, name=path.name)  # raises on malformed regions
    for i, (cell, original) in enumerate(zip(student.cells, nb.cells)):
        if "solution" not in tags(cell):
            continue
        student_lines = {line.strip() for line in cell.source.splitlines()}
        leaked = [line for line in answer_lines(original.source) if line in student_lines]
        assert not leaked, f"cell {i}: the student edition still shows {leaked}"
        ast.parse(python_source(cell.source), f"{path.name}, student cell {i}")  # the stub is valid Python


@pytest.mark.parametrize("path", **by_name(NOTEBOOKS))
def test_no_answer_is_shown_above_its_exercise(path):
    """Rule 3: no line of an answer (20+ characters) appears in a cell above its exercise, and no cell above
    prints the source of a course_utils function with the exercise's name."""
    cells = read(path).cells
    for i, cell in enumerate(cells):
        if "solution" not in tags(cell):
            continue
        answer = {line for line in answer_lines(cell.source) if len(line) >= 20 and not line.startswith("#")}
        above = cells[:i - 1]  # everything before the exercise's task cell
        leaked = [(k, line) for k, c in enumerate(above) for line in answer
                  if line in {text.strip() for text in c.source.splitlines()}]
        assert not leaked, f"cell {i}: answer line(s) shown above the exercise, in cell(s) {leaked}"
        names = re.findall(r"^def (?:my_)?(\w+)\(", cell.source, re.M)
        shown = [k for k, c in enumerate(above) for name in names
                 if c.cell_type == "code" and re.search(rf"getsource\(\s*[\w.]*\b{name}\s*\)", c.source)]
        assert not shown, f"cell {i}: cell(s) {shown} print the source of {names} above the exercise"
