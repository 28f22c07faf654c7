"""The course notebooks executed as a learner's tools execute them (papermill, in a clean
environment): every widget cell shows its figure as an ordinary image, whatever the runner.

Each notebook runs in a kernel that imports this checkout's densflow, with no densflow variable
in its environment and with a per-cell timeout, so that a cell that waits forever fails instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT_S = 600  # the longest cell (training in 08 or 10) takes about a minute
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def run_with_papermill(notebook: Path, out: Path, monkeypatch, **parameters) -> dict:
    """Execute ``notebook`` into ``out`` from its own folder; returns the executed notebook."""
    papermill = pytest.importorskip("papermill")
    for name in [k for k in os.environ if k.startswith("DENSFLOW_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    )
    papermill.execute_notebook(
        str(notebook),
        str(out),
        parameters=parameters,
        kernel_name="python3",
        progress_bar=False,
        cwd=str(notebook.parent),
        execution_timeout=CELL_TIMEOUT_S,
    )
    return json.loads(out.read_text(encoding="utf-8"))


def widget_cell_problems(executed: dict) -> list[str]:
    """Widget cells (tag ``widget``) without an ``image/png`` output, and any widget left in the
    outputs or the notebook's metadata."""
    problems = []
    for i, cell in enumerate(executed["cells"]):
        outputs = cell.get("outputs", [])
        if any(WIDGET_VIEW in out.get("data", {}) for out in outputs):
            problems.append(f"cell {i}: a widget view in a headless run")
        if "widget" in cell.get("metadata", {}).get("tags", []) and not any(
            "image/png" in out.get("data", {}) for out in outputs
        ):
            problems.append(f"cell {i}: a widget cell without an image/png output")
    if "widgets" in executed.get("metadata", {}):
        problems.append("widget state saved in the notebook's metadata")
    return problems


def test_the_widget_checker_finds_a_missing_figure_and_a_widget_view():
    image = {"output_type": "display_data", "data": {"image/png": "iVBOR", "text/plain": "<F>"}}
    view = {"output_type": "display_data", "data": {WIDGET_VIEW: {}, "text/plain": "HBox()"}}
    cell = {"cell_type": "code", "metadata": {"tags": ["widget"]}, "source": "", "outputs": []}
    good = {"cells": [dict(cell, outputs=[image])], "metadata": {}}
    assert widget_cell_problems(good) == []
    bad = {"cells": [dict(cell, outputs=[view])], "metadata": {"widgets": {}}}
    assert widget_cell_problems(bad) == [
        "cell 0: a widget view in a headless run",
        "cell 0: a widget cell without an image/png output",
        "widget state saved in the notebook's metadata",
    ]


@pytest.mark.notebook
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_shows_every_widget_cell_as_an_image(notebook, tmp_path, monkeypatch):
    executed = run_with_papermill(notebook, tmp_path / notebook.name, monkeypatch)
    assert widget_cell_problems(executed) == []
