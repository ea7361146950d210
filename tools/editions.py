"""Editions of the course notebooks: student copies, slide metadata, HTML slides that open offline.

    python tools/editions.py student    notebooks/ build/student/   # solutions -> stubs, no outputs
    python tools/editions.py tag-slides notebooks/                   # slide metadata, IN PLACE
    python tools/editions.py slides     notebooks/ build/slides/     # reveal.js HTML (tags a copy)

The conventions come from CONTRIBUTING.md: a code cell tagged `solution` holds our answer between a
`# BEGIN SOLUTION` and a `# END SOLUTION` line, and the one `# STUB: <code>` line inside the region
is what the student edition shows instead, at the indentation of the `# BEGIN SOLUTION` line.
A source may be a folder (every `NN_*.ipynb` in it) or one notebook.
"""

from __future__ import annotations

import argparse
import copy
import html
import importlib.util
import re
import shutil
import sys
from pathlib import Path

import nbformat

TOOLS_DIR = Path(__file__).resolve().parent
REVEAL_DIR = TOOLS_DIR / "vendor" / "reveal.js"  # reveal.js 4.0.2, copied next to the slides
TEMPLATE_DIR = TOOLS_DIR / "slides_template"  # holds offline_reveal/: nbconvert's reveal, no CDN
MATHJAX_PACKAGE = "jupyter_server_mathjax"  # a dev dependency that ships MathJax 2.7 in static/
MATHJAX_URL = "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe"  # relative to the slides
NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"

BEGIN, END, STUB = "# BEGIN SOLUTION", "# END SOLUTION", "# STUB:"
HEADING = re.compile(r"(#{1,6}) ")  # a markdown heading and its level


# ---------------------------------------------------------------------------------------------
# Student edition
# ---------------------------------------------------------------------------------------------
def cell_tags(cell: nbformat.NotebookNode) -> list[str]:
    """The cell's tags (`metadata.tags`), an empty list when it has none."""
    return list(cell.get("metadata", {}).get("tags", []))


def stub_solution(source: str, where: str = "cell") -> str:
    """Replace every `# BEGIN SOLUTION` .. `# END SOLUTION` region of a code cell by its stub.

    Takes the cell's source and returns it with each region, marker lines included, replaced by
    the code after the region's one `# STUB:` line, indented like its `# BEGIN SOLUTION` line.
    Raises ValueError naming `where` for a nested or unclosed region, a stray `# END SOLUTION`,
    or a region without exactly one non-empty stub.
    """
    out: list[str] = []
    indent, stubs = None, []  # indent is not None while inside a region
    for line in source.splitlines():
        text = line.strip()
        if text == BEGIN:
            if indent is not None:
                raise ValueError(f"{where}: `{BEGIN}` inside another solution region; close the first one")
            indent, stubs = line[: len(line) - len(line.lstrip())], []
        elif text == END:
            if indent is None:
                raise ValueError(f"{where}: `{END}` without a `{BEGIN}` above it")
            if len(stubs) != 1 or not stubs[0]:
                raise ValueError(f"{where}: a solution region needs exactly one `{STUB} <code>` line "
                                 f"(found {len(stubs)}), e.g. `{STUB} return None`")
            out.append(indent + stubs[0])
            indent = None
        elif indent is None:
            out.append(line)
        elif text.startswith(STUB):
            stubs.append(text[len(STUB):].strip())
    if indent is not None:
        raise ValueError(f"{where}: `{BEGIN}` is never closed; add a `{END}` line")
    return "\n".join(out)


def strip_outputs(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Remove every code cell's outputs and execution count and the saved widget state, in place."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata.pop("widgets", None)
    return nb


def student_edition(nb: nbformat.NotebookNode, name: str = "notebook") -> nbformat.NotebookNode:
    """Return the student edition of a notebook: solutions replaced by stubs, outputs stripped.

    The input notebook is left unchanged. A `solution` cell without markers, or markers in a code
    cell not tagged `solution`, raises ValueError: either would leak the answer to students.
    """
    nb = strip_outputs(copy.deepcopy(nb))
    for i, cell in enumerate(nb.cells):
        where = f"{name}, cell {i}"
        if cell.cell_type != "code":
            continue
        if "solution" in cell_tags(cell):
            if BEGIN not in cell.source:
                raise ValueError(f"{where} is tagged `solution` but has no `{BEGIN}` line; "
                                 "put the answer between the markers (CONTRIBUTING.md)")
            cell.source = stub_solution(cell.source, where)
        elif BEGIN in cell.source or END in cell.source:
            raise ValueError(f"{where} has solution markers but is not tagged `solution`; tag it")
    return nb


def write_student_editions(src: Path, out_dir: Path) -> list[Path]:
    """Write the student edition of every notebook in `src` to `out_dir`; return the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in find_notebooks(src):
        nb = student_edition(nbformat.read(path, as_version=4), name=path.name)
        nbformat.validate(nb)
        nbformat.write(nb, out_dir / path.name)
        n_stubs = sum("solution" in cell_tags(c) for c in nb.cells)
        print(f"{out_dir / path.name}: {n_stubs} solution cell(s) replaced by stubs")
        written.append(out_dir / path.name)
    return written


# ---------------------------------------------------------------------------------------------
# Slides
# ---------------------------------------------------------------------------------------------
def slide_types(cells: list[nbformat.NotebookNode]) -> list[str]:
    """The reveal.js slide type of each cell, from the notebook's structure alone.

    A `#`/`##` heading starts a slide; a `###` heading, an exercise, prose that follows code
    within a section, or the code right after the `#` title starts a sub-slide (so a long section
    goes down, not off the slide); a solution appears as a fragment after its task; the install
    cell is skipped; every other cell stays on the current slide ("-").
    """
    types, after_code, after_title = [], False, False
    for cell in cells:
        tags = cell_tags(cell)
        heading = HEADING.match(cell.source.lstrip()) if cell.cell_type == "markdown" else None
        level = len(heading.group(1)) if heading else 0
        if "install" in tags:
            types.append("skip")
            continue
        if 1 <= level <= 2:
            kind = "slide"
        elif cell.cell_type == "markdown" and (heading or after_code or "exercise" in tags):
            kind = "subslide"
        elif "solution" in tags:
            kind = "fragment"
        else:
            kind = "subslide" if after_title and cell.cell_type == "code" else "-"
        after_code = cell.cell_type == "code" or (after_code and kind not in ("slide", "subslide"))
        after_title = level == 1
        types.append(kind)
    return types


def tag_slides(nb: nbformat.NotebookNode, force: bool = False) -> int:
    """Set `metadata.slideshow.slide_type` on the cells of `nb` in place; return how many changed.

    Cells that already have a slide type keep it (an author's choice wins) unless `force`.
    """
    changed = 0
    for cell, kind in zip(nb.cells, slide_types(nb.cells)):
        show = cell.metadata.setdefault("slideshow", {})
        if (force or "slide_type" not in show) and show.get("slide_type") != kind:
            show["slide_type"] = kind
            changed += 1
    return changed


def tag_slides_in_place(src: Path, force: bool = False) -> None:
    """Add slide metadata to every notebook in `src` and save it back (only if something changed)."""
    for path in find_notebooks(src):
        nb = nbformat.read(path, as_version=4)
        changed = tag_slides(nb, force=force)
        if changed:
            nbformat.write(nb, path)
        print(f"{path}: {changed} cell(s) got a slide type")


def render_slides(src: Path, out_dir: Path, execute: bool = False, timeout: int = 900) -> list[Path]:
    """Render every notebook in `src` to `out_dir/NN_name.slides.html`; return the paths written.

    Slide metadata is added to an in-memory copy (the notebook file is not touched); `execute`
    runs it first so the slides show figures. reveal.js is copied to `out_dir/reveal.js/` and
    MathJax to `out_dir/mathjax/`, and the slides load both from there, so they open, formulas
    included, with no network.
    """
    from nbconvert import SlidesExporter  # imported here: `student` needs no nbconvert
    from nbconvert.preprocessors import ExecutePreprocessor

    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REVEAL_DIR, out_dir / "reveal.js", dirs_exist_ok=True)
    shutil.copytree(mathjax_dir(), out_dir / "mathjax", dirs_exist_ok=True)
    exporter = SlidesExporter(extra_template_basedirs=[str(TEMPLATE_DIR)], template_name="offline_reveal",
                              reveal_url_prefix="reveal.js", reveal_theme="white", mathjax_url=MATHJAX_URL,
                              exclude_input_prompt=True, exclude_output_prompt=True)
    written = []
    for path in find_notebooks(src):
        nb = nbformat.read(path, as_version=4)
        tag_slides(nb)
        if execute:
            ExecutePreprocessor(timeout=timeout).preprocess(nb, {"metadata": {"path": str(path.parent)}})
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": path.stem}})
        target = out_dir / f"{path.stem}.slides.html"
        target.write_text(body, encoding="utf-8")
        kinds = [c.metadata["slideshow"]["slide_type"] for c in nb.cells]
        print(f"{target}: {kinds.count('slide') + kinds.count('subslide')} slides")
        written.append(target)
    write_index(written, out_dir / "index.html")
    return written


def mathjax_dir() -> Path:
    """The folder of MathJax 2.7 files (`MathJax.js`, `config/`, `jax/`, fonts) that the slides load.

    It is the `static/` folder of the installed `jupyter-server-mathjax` package, a dev dependency
    (`make install`); the package is located, not imported. Raises ValueError saying how to
    install it when it is missing.
    """
    spec = importlib.util.find_spec(MATHJAX_PACKAGE)
    locations = spec.submodule_search_locations if spec else None
    folder = Path(locations[0]) / "static" if locations else None
    if folder is None or not (folder / "MathJax.js").is_file():
        raise ValueError("MathJax for offline slides is missing: run `make install` "
                         "(or `pip install jupyter-server-mathjax`)")
    return folder


def write_index(slides: list[Path], target: Path) -> None:
    """Write a plain HTML page that links every slide deck in `slides` (relative links)."""
    items = "\n".join(f'<li><a href="{p.name}">{html.escape(p.stem.removesuffix(".slides"))}</a></li>'
                      for p in slides)
    target.write_text(f"<!DOCTYPE html>\n<meta charset='utf-8'><title>Course slides</title>\n"
                      f"<h1>Course slides</h1>\n<ul>\n{items}\n</ul>\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def find_notebooks(src: Path) -> list[Path]:
    """`src` itself if it is a notebook, else the sorted `NN_*.ipynb` files in the folder `src`."""
    if src.is_file():
        return [src]
    found = sorted(src.glob(NOTEBOOK_GLOB))
    if not found:
        raise ValueError(f"no {NOTEBOOK_GLOB} notebook in {src}; give the notebooks folder or one .ipynb")
    return found


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run one command, return the exit status (1 with a message on bad input)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    student = sub.add_parser("student", help="write student editions (solutions -> stubs, no outputs)")
    slides = sub.add_parser("slides", help="render reveal.js HTML slides that open offline")
    tag = sub.add_parser("tag-slides", help="add slide metadata to notebooks IN PLACE")
    for command in (student, slides):
        command.add_argument("src", type=Path, help="notebooks folder or one notebook")
        command.add_argument("out_dir", type=Path, help="output folder")
    slides.add_argument("--execute", action="store_true", help="run each notebook first (figures in slides)")
    tag.add_argument("src", type=Path, help="notebooks folder or one notebook")
    tag.add_argument("--force", action="store_true", help="recompute slide types an author already set")
    args = parser.parse_args(argv)
    try:
        if args.command == "student":
            write_student_editions(args.src, args.out_dir)
        elif args.command == "slides":
            render_slides(args.src, args.out_dir, execute=args.execute)
        else:
            tag_slides_in_place(args.src, force=args.force)
    except (ValueError, OSError, nbformat.ValidationError) as err:
        print(f"editions.py {args.command}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
