"""The website of `make site` works from file:// with every network request refused: figure, formula, search.

The first test builds a small site here (a README and one lab with a figure and two formulas, executed
during the build) so it checks the whole path on its own. The second opens the course's own site,
which `make test` builds before the tests (`make site`), and saves screenshots of its home page and a
lab in build/screenshots/.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("site_tool", REPO / "tools" / "website.py")
website = sys.modules.setdefault("site_tool", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(website)

SITE = REPO / "build" / "site" / "html"
SHOTS = REPO / "build" / "screenshots"
LAB = "03_convolution_by_hand"  # many figures
TYPESET_JS = """() => window.MathJax && MathJax.Hub && MathJax.Hub.queue.pending === 0
  && document.querySelectorAll('.MathJax, .MathJax_Display').length > 0"""
MATH_JS = """() => ({rendered: document.querySelectorAll('.MathJax, .MathJax_Display').length,
  errors: document.querySelectorAll('.MathJax_Error, merror').length,
  font: MathJax.OutputJax['HTML-CSS'] ? MathJax.OutputJax['HTML-CSS'].fontInUse : null})"""
FIGURES_JS = """() => [...document.querySelectorAll('article img')]
  .filter(img => img.complete && img.naturalWidth > 100 && img.src.startsWith('file:')).length"""


def lab() -> nbformat.NotebookNode:
    """A lab with an inline and a display formula and a figure drawn by code."""
    nb = new_notebook(cells=[
        new_markdown_cell("# Lab 9: Zebrafinch\n\nA loss $J = (y - \\hat{y})^2$ inline, and displayed:\n\n"
                          "$$\\frac{\\partial J}{\\partial w} = -2 (y - \\hat{y})\\, x$$"),
        new_code_cell("import matplotlib.pyplot as plt\nplt.plot([0, 1, 4, 9])\nplt.title('squares')\nplt.show()"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def offline_page(browser, refused: list[str]):
    """A new page that lets only file:// requests through and records every other one in `refused`."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(60_000)
    page = context.new_page()
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file://")
               else (refused.append(route.request.url), route.abort()))
    return context, page


def search(page, index: Path, word: str) -> list[str]:
    """The result links that the site's own search page lists for `word`."""
    page.goto(f"{(index.parent / 'search.html').as_uri()}?q={word}")
    page.wait_for_selector("#search-results ul.search li a", timeout=30_000)
    return page.eval_on_selector_all("#search-results ul.search li a", "links => links.map(a => a.href)")


def test_site_shows_figure_formula_and_search_offline(browser, tmp_path):
    (tmp_path / "nb").mkdir()
    nbformat.write(lab(), tmp_path / "nb" / "09_zebrafinch.ipynb")
    (tmp_path / "README.md").write_text("# The course\n\nStart with [lab 9](notebooks/09_zebrafinch.ipynb).\n")
    index = website.build_site(tmp_path / "nb", tmp_path / "site", readme=tmp_path / "README.md")
    refused: list[str] = []
    context, page = offline_page(browser, refused)
    try:
        page.goto(index.as_uri())
        assert page.locator("h1").first.inner_text().startswith("The course")
        page.click("nav.bd-docs-nav >> text=Lab 9: Zebrafinch")  # the table of contents
        page.wait_for_function(TYPESET_JS, timeout=30_000)
        state, figures = page.evaluate(MATH_JS), page.evaluate(FIGURES_JS)
        hits = search(page, index, "zebrafinch")
    finally:
        context.close()
    assert refused == [], "the site asked the network for files"
    assert state["rendered"] >= 2 and state["errors"] == 0 and state["font"] == "STIX-Web", state
    assert figures == 1, "the lab's figure is missing"
    assert any(h.endswith("notebooks/09_zebrafinch.html") for h in hits), hits


def test_course_site_opens_offline(browser):
    if not (SITE / "index.html").is_file():
        pytest.skip("no build/site/html: run `make site` (make test does)")
    SHOTS.mkdir(parents=True, exist_ok=True)
    refused: list[str] = []
    context, page = offline_page(browser, refused)
    try:
        page.goto((SITE / "index.html").as_uri())
        title = page.locator("h1").first.inner_text()
        labs = page.eval_on_selector_all("nav.bd-docs-nav a", "links => links.map(a => a.textContent.trim())")
        page.screenshot(path=str(SHOTS / "site_home.png"))
        page.goto((SITE / "notebooks" / f"{LAB}.html").as_uri())
        page.wait_for_load_state("load")
        figures = page.evaluate(FIGURES_JS)
        page.locator("article img").nth(1).scroll_into_view_if_needed()  # a figure in the screenshot
        page.screenshot(path=str(SHOTS / "site_lab.png"))
        hits = search(page, SITE / "index.html", "convolution")
    finally:
        context.close()
    assert refused == [], "the course site asked the network for files"
    assert title.startswith("Anomaly Detection with Deep Learning")
    assert sum(name.startswith("Lab ") for name in labs) == len(list((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")))
    assert figures >= 3, f"lab {LAB} shows {figures} figures"
    assert any(LAB in h for h in hits), hits
