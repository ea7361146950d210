"""tools/website.py without a browser: badges become text, the README gets a table of contents, outputs are reused
only when they belong to the notebook. (tests/browser/test_site.py opens a built site offline.)"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("site_tool", REPO / "tools" / "website.py")
site = sys.modules.setdefault("site_tool", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(site)

BADGE = ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
         "(https://colab.research.google.com/github/a/b/blob/main/notebooks/01_x.ipynb)")


def lab(code: str = "plt.plot([1, 2])", executed: bool = False) -> nbformat.NotebookNode:
    """A one-figure lab; `executed` adds a PNG output as a run with the inline backend would."""
    cell = new_code_cell(code)
    if executed:
        cell.outputs = [new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"})]
    return new_notebook(cells=[new_markdown_cell(f"# Lab 1\n\n{BADGE}"), cell])


def test_badges_become_text_links_to_the_same_notebook():
    assert site.text_badges(f"see {BADGE} here") == \
        "see [Open in Colab](https://colab.research.google.com/github/a/b/blob/main/notebooks/01_x.ipynb) here"


def test_front_page_is_the_readme_with_a_table_of_contents():
    page = site.front_page(f"# Course\n\n{BADGE}\n", ["01_x", "02_y"])
    assert page.startswith("# Course") and "colab-badge.svg" not in page
    assert "```{toctree}" in page and "notebooks/01_x\nnotebooks/02_y\nCONTRIBUTING" in page


def test_executed_copy_is_reused_only_with_the_same_code_and_its_figures(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "done").mkdir()
    path = tmp_path / "src" / "01_x.ipynb"
    nbformat.write(lab(), path)

    nbformat.write(lab(executed=True), tmp_path / "done" / path.name)
    nb, reused = site.site_notebook(path, tmp_path / "done")
    assert reused and nb.metadata["mystnb"]["execution_mode"] == "off" and nb.cells[1].outputs
    assert "colab-badge.svg" not in nb.cells[0].source

    nbformat.write(lab(executed=False), tmp_path / "done" / path.name)  # run under MPLBACKEND=agg: no figure
    assert site.site_notebook(path, tmp_path / "done")[1] is False

    nbformat.write(lab("plt.plot([3])", executed=True), tmp_path / "done" / path.name)  # the lab changed since
    nb, reused = site.site_notebook(path, tmp_path / "done")
    assert not reused and nb.metadata["mystnb"]["execution_mode"] == "force" and not nb.cells[1].outputs


def test_an_earlier_site_build_is_reused_only_in_the_same_mode(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "cache").mkdir()
    path = tmp_path / "src" / "01_x.ipynb"
    nbformat.write(lab(), path)
    done = lab(executed=True)
    done.cells[1].outputs.append(new_output("stream", text=f"device: cpu | {site.MODES[site.FAST]}\n"))
    nbformat.write(done, tmp_path / "cache" / path.name)
    assert site.site_notebook(path, None, cache_dir=tmp_path / "cache")[1] is True
    done.cells[1].outputs[-1].text = f"device: cpu | {site.MODES[not site.FAST]}\n"
    nbformat.write(done, tmp_path / "cache" / path.name)
    assert site.site_notebook(path, None, cache_dir=tmp_path / "cache")[1] is False


def test_solutions_fold_and_widgets_become_a_note(tmp_path):
    nb = lab(executed=True)
    nb.cells[1].metadata["tags"] = ["solution"]
    widget = {site.WIDGET: {"model_id": "1"}, "text/plain": "VBox()"}
    nb.cells[1].outputs.append(new_output("display_data", data=widget))
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {}}
    nbformat.write(nb, tmp_path / "01_x.ipynb")
    shown, _ = site.site_notebook(tmp_path / "01_x.ipynb", None)
    assert "hide-input" in shown.cells[1].metadata["tags"]
    assert shown.cells[1].outputs[-1].data == {"text/plain": site.WIDGET_NOTE}
    assert "widgets" not in shown.metadata
