"""The HTML slides of `make slides` show their formulas in a browser with no network.

The slides are rendered from a small notebook with inline and display math and opened from disk in
Chromium, with every request that is not a `file://` one refused: reveal.js and MathJax must come
from the copies next to the slides, and MathJax must typeset every formula with its STIX-Web font.
"""

from __future__ import annotations

import nbformat
from conftest import load_tool
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

editions = load_tool("editions")

TYPESET_JS = """() => window.MathJax && MathJax.Hub && MathJax.Hub.queue.pending === 0
  && document.querySelectorAll('.MathJax, .MathJax_Display').length > 0"""
MATH_STATE_JS = """() => ({
  rendered: document.querySelectorAll('.MathJax').length,
  errors: document.querySelectorAll('.MathJax_Error, merror').length,
  font: MathJax.OutputJax['HTML-CSS'] ? MathJax.OutputJax['HTML-CSS'].fontInUse : null,
  left: [...document.querySelectorAll('.slides p')].filter(p => p.textContent.includes('$')).length,
})"""


def math_notebook() -> nbformat.NotebookNode:
    """A two-slide notebook: an inline formula, then a display formula."""
    nb = new_notebook(cells=[
        new_markdown_cell("# Lab 9: Math\n\nA loss $J = (y - \\hat{y})^2$ inline."),
        new_markdown_cell("## 1. Display\n\n$$\\frac{\\partial J}{\\partial w} = -2 (y - \\hat{y})\\, x$$"),
        new_code_cell("x = 1"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def test_slides_typeset_math_offline(browser, tmp_path):
    (tmp_path / "nb").mkdir()
    nbformat.write(math_notebook(), tmp_path / "nb" / "09_math.ipynb")
    [slides] = editions.render_slides(tmp_path / "nb", tmp_path / "slides")
    refused: list[str] = []
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    try:
        page = context.new_page()
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file://")
                   else (refused.append(route.request.url), route.abort()))
        page.goto(slides.as_uri())
        page.wait_for_function(TYPESET_JS, timeout=30_000)
        state = page.evaluate(MATH_STATE_JS)
    finally:
        context.close()
    assert [u for u in refused if u != "about:blank"] == [], "the slides asked the network for files"
    assert state["rendered"] >= 2 and state["errors"] == 0 and state["left"] == 0, state
    assert state["font"] == "STIX-Web", "MathJax fell back from the web font that the copy ships"
