"""The course as a static website: every lab executed, a table of contents, search, README as front page.

    python tools/website.py notebooks/ build/site/ [--executed build/executed/]   # -> build/site/html/index.html

Sphinx with myst-nb and sphinx-book-theme (the stack of Jupyter Book 1.x) renders the README (front
page), CONTRIBUTING.md and every lab. A lab whose executed copy in `--executed` still has the same
code (from `make run`, fast or full mode) is shown with those outputs, and so is one that an earlier
site build executed in the same mode; the others are executed during the build, in the mode
`COURSE_FAST` says. The site opens from `file://` with no network:
MathJax is copied next to it (from `jupyter-server-mathjax`, as for the slides), the theme ships its
own fonts and icons, and the Colab badges (images on Google's server) become plain text links.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

from course_utils.device import FAST

TOOLS_DIR = Path(__file__).resolve().parent
REPO = TOOLS_DIR.parent
_spec = importlib.util.spec_from_file_location("editions", TOOLS_DIR / "editions.py")
editions = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(editions)

TITLE = "Anomaly Detection with Deep Learning"
BADGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\(([^)]+)\)")  # [![Open In Colab](svg)](link)
PAGES = ("CONTRIBUTING.md",)  # shown after the labs
WIDGET = "application/vnd.jupyter.widget-view+json"
MODES = {True: "fast mode (COURSE_FAST=1)", False: "full mode"}  # what cu.setup() prints
WIDGET_NOTE = "[an interactive widget: open the lab in JupyterLab or Colab to use it]"

CONF = '''# Written by tools/website.py (`make site`).
project = {title!r}
html_title = {title!r}
extensions = ["myst_nb", "sphinx.ext.githubpages"]  # githubpages: the .nojekyll file
myst_enable_extensions = ["dollarmath", "amsmath"]
html_theme = "sphinx_book_theme"
html_theme_options = {{"repository_url": {url!r}, "use_repository_button": True,
                      "show_toc_level": 2, "home_page_in_toc": True}}
html_static_path = ["_static"]
html_last_updated_fmt = None
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
suppress_warnings = ["myst.xref_missing", "mystnb.unknown_mime_type", "misc.highlighting_failure"]
nb_execution_mode = "force"  # labs that come with outputs say "off" in their metadata
nb_execution_timeout = -1
nb_execution_raise_on_error = True
nb_merge_streams = True
nb_ipywidgets_js = {{}}  # no widget scripts from a CDN: widgets need a kernel, the site has none
# MathJax 2.7 from _static/mathjax (no CDN), with the delimiters Sphinx writes around math.
mathjax_path = "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"  # the config jupyter-server-mathjax ships
myst_update_mathjax = False  # its MathJax 3 settings would break MathJax 2
mathjax2_config = {{"tex2jax": {{"inlineMath": [["\\\\(", "\\\\)"]], "displayMath": [["\\\\[", "\\\\]"]],
                                "processEscapes": True, "ignoreClass": "tex2jax_ignore|mathjax_ignore",
                                "processClass": "tex2jax_process|mathjax_process|math|output_area"}},
                   "HTML-CSS": {{"availableFonts": ["STIX-Web"], "preferredFont": "STIX-Web",
                                "webFont": "STIX-Web", "imageFont": None}}}}
'''


def text_badges(markdown: str) -> str:
    """Replace each Colab badge image (fetched from Google) by a text link to the same notebook."""
    return BADGE.sub(r"[Open in Colab](\1)", markdown)


def front_page(readme: str, labs: list[str]) -> str:
    """The README as the site's front page, with a table of contents of the labs and pages after it."""
    toc = "\n".join([f"notebooks/{name}" for name in labs] + [Path(p).stem for p in PAGES])
    return f"{text_badges(readme).rstrip()}\n\n```{{toctree}}\n:caption: Labs\n:maxdepth: 1\n:hidden:\n\n{toc}\n```\n"


def same_code(a: nbformat.NotebookNode, b: nbformat.NotebookNode) -> bool:
    """True when two notebooks have the same code cells (so outputs of one belong to the other)."""
    code = [[c.source for c in nb.cells if c.cell_type == "code"] for nb in (a, b)]
    return code[0] == code[1]


def has_outputs(nb: nbformat.NotebookNode) -> bool:
    """True when `nb` was executed with figures: it has outputs, and images if it draws any.

    A run under `MPLBACKEND=agg` (as `make test` sets) draws nothing into the notebook, so its
    copy is not shown: the site re-executes that lab instead.
    """
    code = [c for c in nb.cells if c.cell_type == "code"]
    draws = any(re.search(r"\bplt\.|plotting\.", c.source) for c in code)
    images = any("image/png" in o.get("data", {}) for c in code for o in c.get("outputs", []))
    return any(c.get("outputs") for c in code) and (images or not draws)


def ran_in(nb: nbformat.NotebookNode) -> bool | None:
    """True if `nb` ran in fast mode, False in full mode, None if unknown: `cu.setup()` prints which."""
    text = " ".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                    for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    return True if MODES[True] in text else False if MODES[False] in text else None


def reusable(nb: nbformat.NotebookNode, executed: Path, fast: bool | None = None) -> nbformat.NotebookNode | None:
    """The executed copy at `executed` if it has the code of `nb` and its figures (and ran in mode `fast`)."""
    if not executed.is_file():
        return None
    done = nbformat.read(executed, as_version=4)
    right_mode = fast is None or ran_in(done) == fast
    return done if same_code(nb, done) and has_outputs(done) and right_mode else None


def site_notebook(path: Path, executed_dir: Path | None,
                  cache_dir: Path | None = None) -> tuple[nbformat.NotebookNode, bool]:
    """The notebook to render for `path` and whether it already has its outputs.

    It is the executed copy `executed_dir/<name>` (from `make run`, either mode) when that has the
    same code, else the copy an earlier site build executed in `cache_dir` if it ran in the mode
    `COURSE_FAST` asks for now, else the notebook itself, to be executed by myst-nb. Colab badges
    become text links, solutions fold away behind a "show code" toggle, and a widget's output
    becomes a note saying where it works (a page has no kernel).
    """
    nb = nbformat.read(path, as_version=4)
    done = (reusable(nb, executed_dir / path.name) if executed_dir else None) or \
        (reusable(nb, cache_dir / path.name, fast=FAST) if cache_dir else None)
    reuse = done is not None
    nb = done if reuse else nb
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = text_badges(cell.source)
        elif "solution" in editions.cell_tags(cell) and "hide-input" not in editions.cell_tags(cell):
            cell.metadata["tags"] = editions.cell_tags(cell) + ["hide-input"]  # a reader opens the answer on purpose
        for output in cell.get("outputs", []):
            if WIDGET in output.get("data", {}):
                output["data"] = {"text/plain": WIDGET_NOTE}
    nb.metadata.pop("widgets", None)  # its state would make the page load widget scripts from a CDN
    nb.metadata["mystnb"] = {"execution_mode": "off" if reuse else "force"}
    return nb, reuse


def write_sources(src: Path, out: Path, executed_dir: Path | None, readme: Path) -> Path:
    """Write the Sphinx project (conf.py, index.md, pages, notebooks, MathJax) to `out/src`; return it."""
    project = out / "src"
    shutil.rmtree(project, ignore_errors=True)
    (project / "notebooks").mkdir(parents=True)
    labs = []
    for path in editions.find_notebooks(src):
        nb, reused = site_notebook(path, executed_dir, cache_dir=out / "jupyter_execute" / "notebooks")
        nbformat.write(nb, project / "notebooks" / path.name)
        labs.append(path.stem)
        print(f"{path.name}: {'outputs reused' if reused else 'executed during the build'}")
    (project / "index.md").write_text(front_page(readme.read_text(encoding="utf-8"), labs), encoding="utf-8")
    for page in PAGES:
        if (readme.parent / page).is_file():
            text = text_badges((readme.parent / page).read_text(encoding="utf-8"))
            (project / page).write_text(text, encoding="utf-8")
    shutil.copytree(editions.mathjax_dir(), project / "_static" / "mathjax")
    (project / "conf.py").write_text(CONF.format(title=TITLE, url=repository_url()), encoding="utf-8")
    return project


def repository_url() -> str:
    """The course's GitHub URL from `[tool.course]` in pyproject.toml (see tools/fork.py)."""
    spec = importlib.util.spec_from_file_location("fork", TOOLS_DIR / "fork.py")
    fork = sys.modules.setdefault("fork", importlib.util.module_from_spec(spec))  # dataclasses need it there
    spec.loader.exec_module(fork)
    return fork.configured(REPO).url


def build_site(src: Path, out: Path, executed_dir: Path | None = None, readme: Path = REPO / "README.md") -> Path:
    """Build the HTML site of the notebooks in `src` into `out/html`; return its `index.html`.

    Raises RuntimeError with Sphinx's messages when the build (or a lab's execution) fails.
    """
    project = write_sources(src, out, executed_dir, readme)
    html = out / "html"
    shutil.rmtree(html, ignore_errors=True)
    command = [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-d", str(out / "doctrees"), str(project), str(html)]
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # agg would keep figures out of the pages
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"sphinx-build failed:\n{done.stderr[-6000:]}")
    if done.stderr.strip():
        print(done.stderr.strip(), file=sys.stderr)
    print(f"{html / 'index.html'}: open it in a browser (works offline)")
    return html / "index.html"


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, build the site, return the exit status (1 with a message on failure)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="notebooks folder or one notebook")
    parser.add_argument("out", type=Path, help="output folder: html/ and the Sphinx sources go there")
    parser.add_argument("--executed", type=Path, default=None, help="folder of executed notebooks to reuse")
    args = parser.parse_args(argv)
    try:
        build_site(args.src, args.out, args.executed)
    except (ValueError, OSError, RuntimeError, nbformat.ValidationError) as err:
        print(f"website.py: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
