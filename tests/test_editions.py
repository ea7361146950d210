"""tools/editions.py: student editions, slide metadata, offline HTML slides, on small notebooks made here."""

from __future__ import annotations

import re

import nbformat
import pytest
from conftest import REPO, load_tool
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

editions = load_tool("editions")

SQUARE = '''def square(x):
    """x -> x * x."""
    # BEGIN SOLUTION
    # STUB: return None
    y = x * x
    return y
    # END SOLUTION'''

TABLE = """# BEGIN SOLUTION
# STUB: table = None
table = {x: x + 1 for x in xs}
# END SOLUTION
print("table built")"""


def tagged(cell: nbformat.NotebookNode, *tags: str) -> nbformat.NotebookNode:
    """Give `cell` the tags `tags` and return it."""
    cell.metadata["tags"] = list(tags)
    return cell


def lab_notebook(executed: bool = False) -> nbformat.NotebookNode:
    """A small lab in the course's shape (title, install, parameters, 2 exercises, summary).

    With `executed`, every code cell carries a fake output and execution count, as a notebook
    saved after a run would.
    """
    cells = [
        new_markdown_cell("# Lab 9: Squares\n\nWhat you will learn: squares."),
        tagged(new_code_cell('import sys\nif "google.colab" in sys.modules:\n    !pip install -q nothing'), "install"),
        tagged(new_code_cell("N = 3"), "parameters"),
        new_markdown_cell("## 1. Squares\n\nWhy squares matter."),
        new_code_cell("xs = list(range(N))"),
        tagged(new_markdown_cell("### Exercise 1: square a number"), "exercise"),
        tagged(new_code_cell(SQUARE), "solution"),
        new_code_cell('print("not solved yet" if square(2) is None else f"solved: {square(2)}")'),
        new_markdown_cell("Prose that follows code."),
        tagged(new_markdown_cell("### Exercise 2: a table"), "exercise"),
        tagged(new_code_cell(TABLE), "solution"),
        new_code_cell('print("not solved yet" if table is None else f"solved: {len(table)}")'),
        new_markdown_cell("## Summary\n\nSquares."),
    ]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    if executed:
        for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
            cell.execution_count = i + 1
            cell.outputs = [new_output("stream", name="stdout", text=f"output {i}\n")]
        nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    return nb


def solution_lines(source: str) -> list[str]:
    """The answer's code lines in `source`: those between the markers, stub and markers excluded."""
    inside, found = False, []
    for line in source.splitlines():
        text = line.strip()
        if text in (editions.BEGIN, editions.END):
            inside = text == editions.BEGIN
        elif inside and text and not text.startswith(editions.STUB):
            found.append(text)
    return found


# ---------------------------------------------------------------------------------------------
# stub_solution
# ---------------------------------------------------------------------------------------------
def test_stub_replaces_the_region_at_its_indentation():
    assert editions.stub_solution(SQUARE) == 'def square(x):\n    """x -> x * x."""\n    return None'
    assert editions.stub_solution(TABLE) == 'table = None\nprint("table built")'


def test_stub_handles_several_regions_and_keeps_code_around_them():
    source = "a = 1\n" + TABLE + "\n\n" + SQUARE + "\nb = 2"
    stubbed = editions.stub_solution(source)
    assert stubbed.splitlines() == ["a = 1", "table = None", 'print("table built")', "",
                                    "def square(x):", '    """x -> x * x."""', "    return None", "b = 2"]
    compile(stubbed, "<stub>", "exec")  # still valid Python


@pytest.mark.parametrize("source, message", [
    ("# BEGIN SOLUTION\n# STUB: x = None\nx = 1", "never closed"),
    ("x = 1\n# END SOLUTION", "without a"),
    ("# BEGIN SOLUTION\n# BEGIN SOLUTION\n# STUB: x = None\n# END SOLUTION", "inside another"),
    ("# BEGIN SOLUTION\nx = 1\n# END SOLUTION", r"exactly one .*found 0"),
    ("# BEGIN SOLUTION\n# STUB: x = None\n# STUB: y = None\n# END SOLUTION", r"found 2"),
    ("# BEGIN SOLUTION\n# STUB:\nx = 1\n# END SOLUTION", "exactly one"),
])
def test_stub_rejects_malformed_regions_with_a_clear_message(source, message):
    with pytest.raises(ValueError, match=message):
        editions.stub_solution(source, where="lab.ipynb, cell 6")


# ---------------------------------------------------------------------------------------------
# student editions
# ---------------------------------------------------------------------------------------------
def test_student_edition_has_no_solution_code_and_keeps_the_rest():
    nb = lab_notebook(executed=True)
    student = editions.student_edition(nb, name="lab.ipynb")
    nbformat.validate(student)
    text = "\n".join(c.source for c in student.cells)
    assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text and "STUB:" not in text
    for line in solution_lines(SQUARE) + solution_lines(TABLE):
        assert line not in text, f"solution line leaked: {line!r}"
    stubs = [c.source for c in student.cells if "solution" in editions.cell_tags(c)]
    assert stubs == [editions.stub_solution(SQUARE), editions.stub_solution(TABLE)]
    assert all(c.outputs == [] and c.execution_count is None for c in student.cells if c.cell_type == "code")
    assert "widgets" not in student.metadata
    kept = [(c.cell_type, c.source) for c in nb.cells if "solution" not in editions.cell_tags(c)]
    assert kept == [(c.cell_type, c.source) for c in student.cells if "solution" not in editions.cell_tags(c)]
    assert nb.cells[6].source == SQUARE and nb.cells[4].outputs, "the input notebook must stay unchanged"


def test_student_edition_refuses_to_leak_unmarked_answers():
    nb = lab_notebook()
    nb.cells[6].source = "def square(x):\n    return x * x"  # tagged solution, no markers
    with pytest.raises(ValueError, match="cell 6 is tagged `solution`"):
        editions.student_edition(nb, name="lab.ipynb")
    nb = lab_notebook()
    nb.cells[6].metadata["tags"] = []  # markers, but not tagged
    with pytest.raises(ValueError, match="not tagged `solution`"):
        editions.student_edition(nb, name="lab.ipynb")


def test_student_cli_writes_every_numbered_notebook(tmp_path, capsys):
    src, out = tmp_path / "notebooks", tmp_path / "build" / "student"
    src.mkdir()
    nbformat.write(lab_notebook(executed=True), src / "01_squares.ipynb")
    nbformat.write(lab_notebook(), src / "02_more.ipynb")
    nbformat.write(lab_notebook(), src / "scratch.ipynb")  # not NN_*: not a lab
    assert editions.main(["student", str(src), str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["01_squares.ipynb", "02_more.ipynb"]
    student = nbformat.read(out / "01_squares.ipynb", as_version=4)
    assert student.cells[6].source.endswith("    return None")
    assert "2 solution cell(s)" in capsys.readouterr().out


def test_cli_reports_bad_input_without_a_traceback(tmp_path, capsys):
    assert editions.main(["student", str(tmp_path), str(tmp_path / "out")]) == 1
    assert "no [0-9][0-9]_*.ipynb notebook in" in capsys.readouterr().err
    nb = lab_notebook()
    nb.cells[6].source = SQUARE.replace("    # END SOLUTION", "")
    nbformat.write(nb, tmp_path / "01_broken.ipynb")
    assert editions.main(["student", str(tmp_path), str(tmp_path / "out")]) == 1
    assert "01_broken.ipynb, cell 6: `# BEGIN SOLUTION` is never closed" in capsys.readouterr().err


def test_student_edition_runs_and_checkers_see_the_stub(tmp_path):
    """The stub keeps the notebook runnable: it runs top to bottom and the checks say 'not solved'."""
    from nbconvert.preprocessors import ExecutePreprocessor

    def run(nb: nbformat.NotebookNode) -> list[str]:
        ExecutePreprocessor(timeout=60).preprocess(nb, {"metadata": {"path": str(tmp_path)}})
        return ["".join(o.get("text", "") for o in c.outputs) for c in nb.cells if c.cell_type == "code"]

    student_out = run(editions.student_edition(lab_notebook()))
    solution_out = run(lab_notebook())
    assert [o for o in student_out if "solved" in o] == ["not solved yet\n", "not solved yet\n"]
    assert [o for o in solution_out if "solved" in o] == ["solved: 4\n", "solved: 3\n"]


def answer_and_other_lines(nb: nbformat.NotebookNode) -> tuple[set[str], set[str]]:
    """The stripped code lines of `nb` inside its solution regions (stubs excluded), and those outside.

    Parsed here, not with `editions`, so that a bug in the tool cannot hide itself.
    """
    answers, others = set(), set()
    for cell in (c for c in nb.cells if c.cell_type == "code"):
        inside = False
        for text in (line.strip() for line in cell.source.splitlines()):
            if text in (editions.BEGIN, editions.END):
                inside = text == editions.BEGIN
            elif inside and not text.startswith(editions.STUB):
                answers.add(text)
            elif not inside:
                others.add(text)
    return answers - {""}, others


LABS = sorted((REPO / "notebooks").glob(editions.NOTEBOOK_GLOB))


@pytest.mark.parametrize("lab", LABS, ids=[p.name for p in LABS])
def test_student_editions_of_the_labs_hold_no_answer_line(lab, tmp_path):
    """What `make student` writes (and `make test` runs): no answer line in any cell, no marker, stubs in place.

    A line that the lab also has outside its answers (e.g. `loss.backward()` in a training loop
    shown earlier) may stay; every other line of a solution region must be gone from every cell.
    """
    [written] = editions.write_student_editions(lab, tmp_path)
    original, student = nbformat.read(lab, as_version=4), nbformat.read(written, as_version=4)
    answers, others = answer_and_other_lines(original)
    text = "\n".join(c.source for c in student.cells)
    leaked = (answers - others) & {line.strip() for line in text.splitlines()}
    assert not leaked, f"answer lines in the student edition: {sorted(leaked)}"
    for marker in (editions.BEGIN, editions.END, editions.STUB):
        assert marker not in text, f"{marker!r} left in the student edition"
    assert [(c.cell_type, c.source) for c in student.cells] == [
        (c.cell_type, editions.stub_solution(c.source) if "solution" in editions.cell_tags(c) else c.source)
        for c in original.cells], "the student edition must be the lab with each answer replaced by its stub"


# ---------------------------------------------------------------------------------------------
# slide metadata
# ---------------------------------------------------------------------------------------------
def test_slide_types_follow_the_lab_structure():
    nb = lab_notebook()
    assert editions.slide_types(nb.cells) == [
        "slide",  # # Lab 9 title
        "skip",  # install
        "subslide",  # parameters: the code after the title gets its own sub-slide
        "slide",  # ## 1. Squares
        "-",  # xs = ...
        "subslide",  # exercise 1
        "fragment",  # its solution
        "-",  # its check
        "subslide",  # prose after code
        "subslide",  # exercise 2
        "fragment",  # its solution
        "-",  # its check
        "slide",  # ## Summary
    ]


def test_tag_slides_keeps_an_authors_choice_and_is_idempotent():
    nb = lab_notebook()
    nb.cells[4].metadata["slideshow"] = {"slide_type": "notes"}
    assert editions.tag_slides(nb) == len(nb.cells) - 1
    assert nb.cells[4].metadata["slideshow"]["slide_type"] == "notes"
    assert editions.tag_slides(nb) == 0
    assert editions.tag_slides(nb, force=True) == 1
    assert [c.metadata["slideshow"]["slide_type"] for c in nb.cells] == editions.slide_types(nb.cells)


def test_tag_slides_cli_edits_the_notebook_in_place(tmp_path):
    path = tmp_path / "01_squares.ipynb"
    nbformat.write(lab_notebook(executed=True), path)
    assert editions.main(["tag-slides", str(path)]) == 0
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert [c.metadata["slideshow"]["slide_type"] for c in nb.cells] == editions.slide_types(nb.cells)
    assert nb.cells[4].outputs, "tagging must not touch outputs"


# ---------------------------------------------------------------------------------------------
# HTML slides
# ---------------------------------------------------------------------------------------------
def test_slides_render_and_load_reveal_from_a_local_copy(tmp_path):
    src, out = tmp_path / "notebooks", tmp_path / "slides"
    src.mkdir()
    nbformat.write(lab_notebook(), src / "01_squares.ipynb")
    before = (src / "01_squares.ipynb").read_text()
    assert editions.main(["slides", str(src), str(out)]) == 0
    page = (out / "01_squares.slides.html").read_text()
    assert (src / "01_squares.ipynb").read_text() == before, "slides must tag a copy, not the notebook"
    assert '<a href="01_squares.slides.html">' in (out / "index.html").read_text()

    urls = re.findall(r'<(?:script|link)\b[^>]*?(?:src|href)="([^"]+)"', page)
    reveal = [u for u in urls if "reveal" in u]
    assert {"reveal.js/dist/reveal.js", "reveal.js/dist/reveal.css"} <= set(reveal)
    assert not [u for u in urls if re.match(r"https?://", u)], urls
    for url in reveal:
        assert (out / url).is_file(), f"{url} is referenced but not copied"
    assert "Reveal.initialize" in page and "require.js" not in page
    sections = re.findall(r"<section\b", page)
    # 3 slides (title, section 1, summary), each an outer and an inner <section>, + 4 sub-slides
    assert len(sections) == 2 * 3 + 4
    assert "Exercise 2: a table" in page and 'class="fragment"' in page


MATH = ("## 1. A formula\n\nThe loss $J = (y - \\hat{y})^2$, its gradient "
        "$$\\frac{\\partial J}{\\partial w} = -2 (y - \\hat{y}) x$$")


def test_slides_load_mathjax_from_a_local_copy(tmp_path):
    """Formulas render offline: MathJax comes from a copy next to the slides, never from a CDN."""
    src, out = tmp_path / "notebooks", tmp_path / "slides"
    src.mkdir()
    nb = lab_notebook()
    nb.cells[3].source = MATH
    nbformat.write(nb, src / "01_squares.ipynb")
    assert editions.main(["slides", str(src), str(out)]) == 0
    page = (out / "01_squares.slides.html").read_text()
    assert not re.search(r"https?://[^\"'\s]*(mathjax|katex)", page, re.I), "math must not come from the network"
    scripts = re.findall(r'<script\b[^>]*\bsrc="([^"]+)"', page)
    math = [u for u in scripts if re.search("mathjax|katex", u, re.I)]
    assert math == [editions.MATHJAX_URL], scripts
    path, _, query = math[0].partition("?")
    assert (out / path).is_file(), f"{path} is referenced but not copied"
    for config in re.fullmatch(r"config=(.+)", query).group(1).split(","):
        assert (out / "mathjax" / "config" / f"{config}.js").is_file(), f"MathJax config {config} is missing"
    assert 'webFont: "STIX-Web"' in page, "the template must ask for the one web font the copy ships"
    assert list((out / "mathjax" / "fonts" / "HTML-CSS" / "STIX-Web" / "woff").glob("*.woff"))
    assert "\\frac{\\partial J}{\\partial w}" in page  # the TeX reaches the page for MathJax to typeset


def test_slides_without_mathjax_say_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(editions, "MATHJAX_PACKAGE", "no_such_mathjax_package")
    nbformat.write(lab_notebook(), tmp_path / "01_squares.ipynb")
    assert editions.main(["slides", str(tmp_path / "01_squares.ipynb"), str(tmp_path / "slides")]) == 1
    assert "make install" in capsys.readouterr().err


def test_make_slides_renders_every_lab_for_offline_use(tmp_path):
    """What `make slides` does to the real labs: one deck each, every script and style sheet local."""
    out = tmp_path / "slides"
    assert editions.main(["slides", str(REPO / "notebooks"), str(out)]) == 0
    decks = sorted(p.name for p in out.glob("*.slides.html"))
    assert decks == [lab.name.replace(".ipynb", ".slides.html") for lab in LABS]
    for deck in decks:
        page = (out / deck).read_text()
        urls = re.findall(r'<(?:script|link)\b[^>]*?(?:src|href)="([^"]+)"', page)
        assert urls and not [u for u in urls if re.match(r"https?://", u)], (deck, urls)
        for url in urls:
            assert (out / url.partition("?")[0]).is_file(), f"{deck} loads {url}, which was not copied"
        assert len(re.findall(r"<section\b", page)) > 10, f"{deck} has almost no slides"
