"""The course notebooks executed as a learner's tools execute them (papermill, in a clean
environment): every widget cell shows its figure as an ordinary image, whatever the runner;
notebook 08's verdicts do not depend on the number of threads and agree with its table; notebook
10's training loop gives `densflow train`'s numbers, within the course's time budget.

Each notebook runs in a kernel that imports this checkout's densflow, with no densflow variable
in its environment and with a per-cell timeout, so that a cell that waits forever fails instead.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")) + sorted(
    (ROOT / "notebooks").glob("appendix_*.ipynb")
)
AUGMENTATION = ROOT / "notebooks" / "08_why_augmentation_helps.ipynb"
TRAINING_LOOP = ROOT / "notebooks" / "10_training_loop.ipynb"
CELL_TIMEOUT_S = 900  # the longest cells (training in 08 and 10) take minutes on a busy 2-core CPU
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def run_with_papermill(notebook: Path, out: Path, monkeypatch, **parameters) -> dict:
    """Execute ``notebook`` into ``out`` from its own folder; returns the executed notebook."""
    papermill = pytest.importorskip("papermill")
    for name in [k for k in os.environ if k.startswith("DENSFLOW_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    )
    # OpenMP threads that wait sleep instead of spinning: on a busy CPU a spinning thread holds the
    # core its partner needs (notebook 08 with two threads ran 4x slower). No number changes.
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
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
# Notebooks 08 and 10 train for minutes: their widget cells are checked in the runs of their own
# tests below rather than in a third and a second run of each.
@pytest.mark.parametrize(
    "notebook",
    [nb for nb in NOTEBOOKS if nb not in (AUGMENTATION, TRAINING_LOOP)],
    ids=lambda p: p.stem,
)
def test_papermill_shows_every_widget_cell_as_an_image(notebook, tmp_path, monkeypatch):
    executed = run_with_papermill(notebook, tmp_path / notebook.name, monkeypatch)
    assert widget_cell_problems(executed) == []


# --- Notebook 08: verdicts computed from the numbers ----------------------------------------------

TABLE_ROW = re.compile(r"^(\w+)\s.*\s(\d+) of (\d+)$")
OUTCOME = re.compile(
    r"^(\w+)\s+(augmented|plain) ahead in (\d+) of (\d+) seeds, (a clear lead|no clear winner)$"
)


def joined(text: str | list[str]) -> str:
    """A notebook's text field, stored as one string or as a list of lines."""
    return text if isinstance(text, str) else "".join(text)


def printed(cell: dict) -> list[str]:
    return "".join(joined(out.get("text", "")) for out in cell.get("outputs", [])).splitlines()


def verdicts(executed: dict) -> dict[str, tuple[str, int, int, str]]:
    """The NLL verdicts of notebook 08's outcome cell: toy -> (leader, ahead, seeds, clear?)."""
    cell = next(c for c in executed["cells"] if "# The outcomes alone" in joined(c["source"]))
    found = {}
    for line in printed(cell):
        if match := OUTCOME.match(line):
            found[match[1]] = (match[2], int(match[3]), int(match[4]), match[5])
    return found


def table_counts(executed: dict) -> dict[str, tuple[int, int]]:
    """Notebook 08's table: toy -> (seeds where the augmented flow is ahead, seeds)."""
    cell = next(c for c in executed["cells"] if "held-out NLL in nats" in joined(c["source"]))
    lines = printed(cell)
    rows = lines[2 : lines.index("")]
    return {m[1]: (int(m[2]), int(m[3])) for m in map(TABLE_ROW.match, rows) if m}


def verdict_problems(executed: dict) -> list[str]:
    """Verdicts missing for a toy of the table, or whose count disagrees with it."""
    found, table = verdicts(executed), table_counts(executed)
    problems = [f"{toy}: no verdict" for toy in table if toy not in found]
    for toy, (leader, ahead, seeds, _) in found.items():
        augmented_ahead, table_seeds = table.get(toy, (None, None))
        expected = augmented_ahead if leader == "augmented" else table_seeds - augmented_ahead
        if (ahead, seeds) != (expected, table_seeds):
            problems.append(
                f"{toy}: verdict {leader} ahead in {ahead} of {seeds}, "
                f"table {augmented_ahead} of {table_seeds} for the augmented flow"
            )
    return problems


def test_the_verdict_checker_reads_the_table_and_the_outcomes():
    table = {
        "source": 'print(f"{STEPS} steps; held-out NLL in nats")',
        "outputs": [{"text": "500 steps\ntoy  header   aug. ahead\nrings  2.3 ± 0.1   4 of 5\n"
                             "moons  1.6 ± 0.2   1 of 5\n\nper seed\n"}],
    }  # fmt: skip
    outcomes = {
        "source": "# The outcomes alone, compared by nbval",
        "outputs": [{"text": ["rings        augmented ahead in 4 of 5 seeds, no clear winner\n",
                              "moons        plain ahead in 4 of 5 seeds, a clear lead\n"]}],
    }  # fmt: skip
    executed = {"cells": [table, outcomes]}
    assert verdicts(executed) == {
        "rings": ("augmented", 4, 5, "no clear winner"),
        "moons": ("plain", 4, 5, "a clear lead"),
    }
    assert verdict_problems(executed) == []
    outcomes["outputs"][0]["text"] = (
        "rings        augmented ahead in 3 of 5 seeds, no clear winner\n"
    )
    assert verdict_problems(executed) == [
        "moons: no verdict",
        "rings: verdict augmented ahead in 3 of 5, table 4 of 5 for the augmented flow",
    ]


@pytest.mark.notebook
def test_notebook_08_states_the_same_verdicts_with_one_and_two_threads(tmp_path, monkeypatch):
    runs = {
        threads: run_with_papermill(
            AUGMENTATION, tmp_path / f"08_threads{threads}.ipynb", monkeypatch, threads=threads
        )
        for threads in (1, 2)
    }
    assert set(verdicts(runs[1])) == {"rings", "moons", "checkerboard"}
    assert verdicts(runs[1]) == verdicts(runs[2])
    for executed in runs.values():
        assert verdict_problems(executed) == []
        assert widget_cell_problems(executed) == []


# --- Notebook 10: a training loop you can read ----------------------------------------------------


@pytest.mark.notebook
def test_notebook_10_gives_densflow_train_numbers_on_its_first_20_steps(
    tmp_path, monkeypatch, record_property
):
    executed = run_with_papermill(
        TRAINING_LOOP, tmp_path / "10.ipynb", monkeypatch, run_dir=str(tmp_path / "run")
    )
    cell = next(c for c in executed["cells"] if "reference_losses" in joined(c["source"]))
    assert printed(cell) == [
        "20 logged steps; largest loss difference <= 1e-6: True",
        "parameters after step 20 within float32 rounding (< 1e-4): True",
        "with compose_coupling_nets applied to our loop too: losses and parameters bit for bit "
        "equal: True",
    ]
    assert sorted(p.name for p in (tmp_path / "run").glob("step*.pt")) == [
        f"step{s:04d}.pt" for s in (20, 40, 60, 80)
    ]
    assert widget_cell_problems(executed) == []
    # How long a learner waits is measured, not asserted: a test's time depends on the machine.
    record_property("papermill_duration_s", executed["metadata"]["papermill"]["duration"])
