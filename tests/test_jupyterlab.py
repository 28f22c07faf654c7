"""A learner's widget, end to end: JupyterLab in headless Chromium runs a notebook, a slider
appears above the cell's figure, and moving it redraws that figure in place.

The server listens on 127.0.0.1 only, with a token, and reads the notebook where it lives; autosave
is off, checkpoints go to a temporary folder and nothing is saved, so the repository is untouched
(checked). It is shut down at the end whatever happens.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import chromium, free_port, skip_without_browser

ROOT = Path(__file__).resolve().parent.parent
# The course notebook whose first slider is moved (k of the importance-weighted bound). Any notebook
# with a cell tagged 'widget' calling densflow.utils.widgets.explore works.
NOTEBOOK = ROOT / "notebooks" / "04_monte_carlo_lower_bound.ipynb"
START_TIMEOUT_S = 90
RUN_TIMEOUT_S = 180  # Run All: a course notebook takes up to a minute on a busy 2-core machine
REDRAW_TIMEOUT_S = 60

# The user settings of the throwaway Lab: nothing saved behind our back, nothing fetched.
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}

# No proxy for 127.0.0.1, whatever the environment says.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _request(url: str, token: str, method: str = "GET") -> int:
    req = urllib.request.Request(url, method=method, headers={"Authorization": f"token {token}"})
    with _LOCAL.open(req, timeout=5) as response:
        return response.status


@contextlib.contextmanager
def jupyterlab(tmp: Path) -> Iterator[tuple[str, str]]:
    """A JupyterLab server on 127.0.0.1 over the repository; yields (base URL, token)."""
    port, token = free_port(), secrets.token_hex(16)
    for name, value in LAB_SETTINGS.items():
        path = tmp / "lab-settings" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env.update(
        # The kernel imports this checkout's densflow; the Lab's state lives in tmp.
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        JUPYTER_CONFIG_DIR=str(tmp / "config"),
        JUPYTER_DATA_DIR=str(tmp / "data"),
        JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(tmp / "lab-settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp / "lab-workspaces"),
    )
    log = (tmp / "jupyterlab.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--allow-root",  # CI runs as root
            "--ServerApp.open_browser=False",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={ROOT}",
            # Opening a notebook writes a checkpoint beside it; an absolute folder keeps it out.
            f"--FileCheckpoints.checkpoint_dir={tmp / 'checkpoints'}",
            "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly",
        ],
        cwd=tmp,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited with {server.returncode}:\n{_tail(tmp)}")
            with contextlib.suppress(OSError):
                if _request(base + "api/status", token) == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not answer in {START_TIMEOUT_S} s:\n{_tail(tmp)}")
            time.sleep(0.5)
        yield base, token
    finally:
        # The server shuts its kernels down itself; then it is made to go if it has not.
        with contextlib.suppress(OSError, urllib.error.URLError):
            _request(base + "api/shutdown", token, method="POST")
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        log.close()


def _tail(tmp: Path) -> str:
    return (tmp / "jupyterlab.log").read_text()[-4000:]


def number(readout: str | None) -> float | None:
    """A slider's readout as a number (ipywidgets writes negatives with a Unicode minus); None
    while it is being redrawn."""
    try:
        return float((readout or "").strip().replace("\u2212", "-"))
    except ValueError:
        return None


def files_the_lab_could_leave() -> set[Path]:
    """The repository's top level and everything beside the notebook (checkpoints, LSP shadows)."""
    beside = (p for p in NOTEBOOK.parent.rglob("*") if "__pycache__" not in p.parts)
    return set(ROOT.iterdir()) | set(beside)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_and_move_the_first_slider(page, base: str, token: str) -> None:
    path = NOTEBOOK.relative_to(ROOT).as_posix()
    page.goto(f"{base}lab/tree/{path}?token={token}")
    page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=START_TIMEOUT_S * 1000)
    # Cells run before the kernel is connected can be lost: wait for the status bar's "Idle".
    page.get_by_text("| Idle").first.wait_for(timeout=START_TIMEOUT_S * 1000)

    # Run > Run All Cells, as a learner does.
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()

    # The widget cell: its controls, then its figure, an ordinary image output below them.
    cell = page.locator(".jp-CodeCell").filter(has=page.locator(".widget-slider")).first
    cell.wait_for(state="attached", timeout=RUN_TIMEOUT_S * 1000)
    cell.scroll_into_view_if_needed()
    slider = cell.locator(".widget-slider").first
    readout = slider.locator(".widget-readout").first
    figure = cell.locator(".jp-OutputArea-output img").first
    figure.wait_for(timeout=REDRAW_TIMEOUT_S * 1000)
    deadline = time.monotonic() + REDRAW_TIMEOUT_S
    while (old_value := number(readout.text_content())) is None:
        assert time.monotonic() < deadline, "the slider shows no value"
        page.wait_for_timeout(200)
    old_src = figure.get_attribute("src")
    assert old_src and old_src.startswith("data:image/png;base64,")

    # Move the slider one step with the keyboard (focus the handle, press an arrow key): down,
    # unless it starts at its minimum.
    handle = slider.locator(".noUi-handle").first
    at_min = float(handle.get_attribute("aria-valuenow")) <= float(
        handle.get_attribute("aria-valuemin")
    )
    handle.focus()
    page.keyboard.press("ArrowRight" if at_min else "ArrowLeft")
    deadline = time.monotonic() + REDRAW_TIMEOUT_S
    while (new_value := number(readout.text_content())) in (None, old_value):
        assert time.monotonic() < deadline, "the slider did not move"
        page.wait_for_timeout(200)
    assert (new_value > old_value) if at_min else (new_value < old_value), (old_value, new_value)

    new_src = old_src
    while new_src == old_src:
        assert time.monotonic() < deadline, "moving the slider did not redraw the figure"
        page.wait_for_timeout(250)
        with contextlib.suppress(Exception):  # the image is replaced while it redraws
            new_src = figure.get_attribute("src", timeout=1000)
    assert new_src.startswith("data:image/png;base64,")


@pytest.mark.browser
def test_a_slider_in_jupyterlab_redraws_the_figure(tmp_path):
    skip_without_browser()
    assert any(
        "widget" in c.get("metadata", {}).get("tags", []) and "explore(" in "".join(c["source"])
        for c in json.loads(NOTEBOOK.read_text())["cells"]
    ), f"{NOTEBOOK.name} has no cell tagged 'widget' calling explore("
    before = _digest(NOTEBOOK)
    before_files = files_the_lab_could_leave()

    with jupyterlab(tmp_path) as (base, token), chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            run_and_move_the_first_slider(page, base, token)
        except BaseException:
            page.screenshot(path=str(tmp_path / "jupyterlab-failure.png"))
            raise
        assert not errors, f"errors in the Lab page: {errors}"
        page.screenshot(path=str(tmp_path / "jupyterlab.png"))

    assert _digest(NOTEBOOK) == before, f"the test changed {NOTEBOOK}"
    new = sorted(files_the_lab_could_leave() - before_files)
    assert not new, f"the test left files in the repository: {new[:5]}"
