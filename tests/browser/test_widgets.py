"""The labs' widgets work in a real browser: JupyterLab in Chromium, run all, drag a slider, see it change.

nbval cannot see widgets, so these tests do what a student does: open the lab in JupyterLab, run
every cell, drag a slider of the interactive figure, and check that both the figure and the text
under it change. Screenshots before and after the drag go to build/screenshots/. A stand-in
notebook (written to build/browser/) exercises the same steps while the labs are being written.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from conftest import REPO
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

SCREENSHOTS = REPO / "build" / "screenshots"
STAND_IN = REPO / "build" / "browser" / "00_widget_stand_in.ipynb"


@dataclass(frozen=True)
class Explorer:
    """A lab's interactive figure: where it is, the text that must follow the slider, time to run."""

    notebook: str  # path from the repository root
    text: str  # regex for the line of output text that the slider changes
    run_s: int  # time allowed to run every cell
    needs_image: bool = True  # False: a figure is optional, but if there is one it must change too


LAB3 = Explorer("notebooks/03_convolution_by_hand.ipynb", r"output shape[^\n]*", run_s=600)
LAB5 = Explorer("notebooks/05_autoencoder_anomaly_detection.ipynb", r"[^\n]*false alarms?[^\n]*missed[^\n]*",
                run_s=900)  # the confusion matrix is redrawn at every threshold

# The notebook panel open on `path` (JupyterLab exposed as window.jupyterapp), then what we read of it.
# (window.jupyterapp is undefined for a moment while the page loads: then there is no panel yet.)
PANEL_JS = "[...(window.jupyterapp?.shell.widgets('main') ?? [])].find(w => w.context?.path === path)"
READY_JS = f"""(path) => {{
  const panel = {PANEL_JS};
  return panel?.context.isReady && panel.sessionContext.session?.kernel?.status === 'idle';
}}"""
RUN_STATE_JS = f"""(path) => {{
  const panel = {PANEL_JS};
  const cells = panel.content.widgets.filter(c => c.model.type === 'code' && c.model.sharedModel.getSource().trim());
  const errors = cells.flatMap(c => c.model.outputs.toJSON()).filter(o => o.output_type === 'error');
  return {{kernel: panel.sessionContext.session?.kernel?.status ?? 'none', cells: cells.length,
          pending: cells.filter(c => c.model.executionCount === null).length,
          error: errors.length ? errors[0].ename + ': ' + errors[0].evalue : null}};
}}"""
RUN_ALL_JS = f"""(path) => {{
  window.jupyterapp.shell.activateById(({PANEL_JS}).id);
  return window.jupyterapp.commands.execute('notebook:run-all-cells');
}}"""


def write_stand_in(path: Path) -> None:
    """A notebook shaped like lab 3's explorer: a slider that redraws an image and prints its shape."""
    code = '''import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np

def explore(size=8):
    image = np.add.outer(np.arange(size), np.arange(size)) % 5  # [size, size]
    plt.figure(figsize=(3, 3))
    plt.imshow(image, cmap="viridis")
    plt.show()
    print(f"output shape: {image.shape}")

widgets.interact(explore, size=widgets.IntSlider(value=8, min=2, max=32));'''
    nb = new_notebook(cells=[new_markdown_cell("# Stand-in explorer"), new_code_cell(code)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


def exists_or_skip(explorer: Explorer) -> pytest.MarkDecorator:
    """Skip while the lab's notebook is not written yet."""
    return pytest.mark.skipif(not (REPO / explorer.notebook).exists(),
                              reason=f"{explorer.notebook} does not exist yet (its lab is being written)")


def open_and_run_all(page, explorer: Explorer) -> None:
    """Open the notebook in JupyterLab, run every cell, and wait until all ran; fail on the first error."""
    path = explorer.notebook
    page.goto(f"/lab/tree/{path}?reset")  # ?reset: a clean workspace, no notebook of an earlier test
    page.wait_for_function(READY_JS, arg=path, timeout=120_000)
    page.evaluate(RUN_ALL_JS, path)
    deadline = time.monotonic() + explorer.run_s
    while time.monotonic() < deadline:
        state = page.evaluate(RUN_STATE_JS, path)
        assert state["error"] is None, f"{path} raised {state['error']}"
        if state["pending"] == 0 and state["kernel"] == "idle":
            return
        time.sleep(1)
    pytest.fail(f"{path} did not finish within {explorer.run_s} s: {page.evaluate(RUN_STATE_JS, path)}")


def explorer_cell(page, explorer: Explorer):
    """The code cell whose output holds a slider and text matching the explorer's pattern."""
    cells = (page.locator(".jp-CodeCell").filter(has=page.locator(".widget-slider"))
             .filter(has_text=re.compile(explorer.text, re.IGNORECASE)))
    assert cells.count() >= 1, f"no cell of {explorer.notebook} shows a slider with text /{explorer.text}/"
    cell = cells.first
    cell.scroll_into_view_if_needed()
    return cell


def read_output(cell, explorer: Explorer) -> tuple[str, tuple[str, ...]]:
    """The explorer's text line and the sources of the images the widget draws (the images of its
    `.widget-output` area; of the whole cell output if it has none)."""
    outputs = cell.locator(".jp-Cell-outputWrapper")
    match = re.search(explorer.text, outputs.inner_text(), re.IGNORECASE)
    widget = outputs.locator(".widget-output")
    scope = widget if widget.count() else outputs
    images = tuple(img.get_attribute("src") or "" for img in scope.locator("img").all())
    return (match.group(0).strip() if match else ""), images


def images_loaded(cell) -> bool:
    """Whether every image in the cell's output has loaded and has a size (is drawn, not pending)."""
    return cell.locator(".jp-Cell-outputWrapper img").evaluate_all(
        "imgs => imgs.every(i => i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().height > 0)")


def drag(page, slider, fraction: float) -> None:
    """Drag the slider's handle with the mouse to `fraction` (0..1) of its track."""
    handle, track = slider.locator(".noUi-handle").first, slider.locator(".noUi-target").first
    start, box = handle.bounding_box(), track.bounding_box()
    page.mouse.move(start["x"] + start["width"] / 2, start["y"] + start["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + fraction * box["width"], box["y"] + box["height"] / 2, steps=12)
    page.mouse.up()


def changed(before: tuple, after: tuple) -> bool:
    """Whether the text changed and the figure was redrawn: one of its images is a new one (lab 3 keeps
    its input image and redraws the output beside it). An output being cleared and refilled shows the
    new text but no image for a moment: not a change yet."""
    if after[0] == before[0]:
        return False
    return not before[1] or (bool(after[1]) and after[1] != before[1])


def settle(cell, explorer: Explorer, now: tuple, timeout_s: float = 10) -> tuple:
    """Wait until the output has stayed the same for a second and every image is drawn; return it."""
    deadline, stable_since = time.monotonic() + timeout_s, time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        latest = read_output(cell, explorer)
        if latest != now:
            now, stable_since = latest, time.monotonic()
        elif time.monotonic() - stable_since >= 1.0 and images_loaded(cell):
            break
    return now


def wait_for_change(cell, explorer: Explorer, before: tuple, timeout_s: float = 30, settle_s: float = 3) -> tuple:
    """Poll the output until `changed(before, now)`, then until it has settled; if something else
    changed, give it `settle_s` more. Returns the last (text, images) read."""
    deadline, now = time.monotonic() + timeout_s, before
    while time.monotonic() < deadline:
        now = read_output(cell, explorer)
        if changed(before, now):
            return settle(cell, explorer, now)
        if now != before:
            deadline = min(deadline, time.monotonic() + settle_s)
        time.sleep(0.25)
    return now


def check_slider_changes_output(page, explorer: Explorer, name: str) -> None:
    """Run the notebook, drag each slider of its explorer in turn until one changes text and image."""
    open_and_run_all(page, explorer)
    cell = explorer_cell(page, explorer)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    before = settle(cell, explorer, read_output(cell, explorer))
    cell.screenshot(path=SCREENSHOTS / f"{name}_before.png")
    assert before[0], f"the explorer shows no text /{explorer.text}/"
    assert before[1] or not explorer.needs_image, "the explorer shows no image"
    tried = []
    for slider in cell.locator(".widget-slider").all():
        for fraction in (0.85, 0.1):
            drag(page, slider, fraction)
            after = wait_for_change(cell, explorer, before)
            tried.append(after[0])
            if changed(before, after):
                assert images_loaded(cell), "the redrawn figure did not load"
                cell.screenshot(path=SCREENSHOTS / f"{name}_after.png")
                return
            before = after  # this slider moved something else (or nothing): compare from here
    pytest.fail(f"no slider changed both the figure and the text {before[0]!r}; texts seen: {tried}")


def test_stand_in_explorer(page):
    """The harness itself, on a notebook made here: it runs whether or not the labs exist."""
    write_stand_in(STAND_IN)
    explorer = Explorer(str(STAND_IN.relative_to(REPO)), r"output shape[^\n]*", run_s=120)
    check_slider_changes_output(page, explorer, "stand_in_explorer")


@exists_or_skip(LAB3)
def test_lab3_convolution_explorer(page):
    check_slider_changes_output(page, LAB3, "lab03_convolution_explorer")


@exists_or_skip(LAB5)
def test_lab5_threshold_slider(page):
    check_slider_changes_output(page, LAB5, "lab05_threshold_slider")
