"""Fixtures for the browser tests: JupyterLab on 127.0.0.1 and Debian's Chromium driven by Playwright.

The server and the browser start once per session, each inside a bounded wait, and are always shut
down (the server's kernels with it). Without Chromium or Playwright the tests skip on a student's
machine and fail in CI (`CI=true`), where `.ci/install-chromium` provides Chromium.
Deselect them with `-m "not browser"`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SERVER_START_S, SERVER_STOP_S = 120, 30


def pytest_configure(config: pytest.Config) -> None:
    """Register the `browser` marker."""
    config.addinivalue_line("markers", "browser: drives JupyterLab in Chromium (slow; needs /usr/bin/chromium)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test in this folder `browser`."""
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.browser)


def missing(what: str) -> None:
    """Skip on a student's machine, fail in CI, saying how to get `what`."""
    message = f"{what} is missing: run `.ci/install-chromium` and `make install`"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def lab_settings(root: Path) -> Path:
    """A JupyterLab settings folder that turns off the news and update pop-ups (no network, no toasts)."""
    target = root / "settings" / "@jupyterlab" / "apputils-extension"
    target.mkdir(parents=True, exist_ok=True)
    (target / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    return root / "settings"


def server_env(root: Path) -> dict[str, str]:
    """The server's environment: fast mode, the inline matplotlib backend, Jupyter state under `root`."""
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # agg would hide every figure
    env.update(COURSE_FAST="1", JUPYTER_CONFIG_DIR=str(root / "config"), JUPYTER_RUNTIME_DIR=str(root / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(lab_settings(root)), JUPYTERLAB_WORKSPACES_DIR=str(root / "workspaces"))
    return env


def wait_until_up(url: str, process: subprocess.Popen, log: Path) -> None:
    """Poll `url` until it answers; fail with the server log if the server dies or takes too long."""
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"JupyterLab exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"JupyterLab did not answer within {SERVER_START_S} s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    """Stop the server: SIGTERM (it shuts its kernels down on the way out), SIGKILL if it hangs."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if process.poll() is None:
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=SERVER_STOP_S)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="session")
def jupyter_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a JupyterLab server rooted at the repository: 127.0.0.1, empty token, app exposed."""
    pytest.importorskip("jupyterlab")
    root, port = tmp_path_factory.mktemp("jupyter"), free_port()
    log = root / "server.log"
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0", "--IdentityProvider.token=",
               "--ServerApp.password=", "--ServerApp.allow_root=True", f"--ServerApp.root_dir={REPO}",
               "--LabApp.expose_app_in_browser=True"]
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=server_env(root),
                                   cwd=REPO, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{base_url}/api/status", process, log)
        yield base_url
    finally:
        stop(process)


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium, headless, driven by Playwright; closed at the end of the session."""
    if not CHROMIUM.exists():
        missing(str(CHROMIUM))
    try:
        from playwright.sync_api import sync_playwright
    except ModuleNotFoundError:
        missing("the Python package playwright")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, jupyter_server):
    """A fresh browser page (1400x1000) with a 60 s default timeout; closed after the test."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, base_url=jupyter_server)
    context.set_default_timeout(60_000)
    try:
        yield context.new_page()
    finally:
        context.close()
