"""The course's conventions, checked on every teaching notebook (notebooks/NN_*.ipynb).

* Exercises: a markdown cell starting ``**Exercise N.**``, then a code cell tagged ``solution``,
  collapsed in JupyterLab (``"jupyter": {"source_hidden": true}``) and opening with the invitation
  to try first, then a code cell tagged ``check`` whose ``assert``s judge the answer.
* Widgets: the notebooks where a learner should play have a cell tagged ``widget`` calling
  ``explore(`` (densflow.utils.widgets), and every cell calling it carries the tag.
* Sources: no notebook or doc names a path outside the repository, and the method's equations are
  never cited as "Sec. 3" (eq. 2 is in Sec. 1, eqs. 3–13 and Example 1 in Sec. 2.1, eqs. 14–15 in
  Sec. 2.2); the conditioning rule of eq. 6 is the paper's, never an "official quirk".

Each rule is a function returning the problems it finds, tested here on small synthetic notebooks
both ways, and then run on the course.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
DOCS = sorted([ROOT / "README.md", ROOT / "notebooks" / "README.md", *(ROOT / "docs").glob("*.md")])
# Where the issue asks for controls: 00 (the fit), 02 (q's parameters), 04 (k of the IW bound),
# 06 (landmarks), 07 (growth rate and shapes), 09 (temperature).
WIDGET_NOTEBOOKS = ("00", "02", "04", "06", "07", "09")
SOLUTION_FIRST_LINE = "# Solution — try it yourself first: clear this cell and write your own."

EXERCISE = re.compile(r"\*\*Exercise \d+\.\*\*")
# Spelled in pieces so that this file does not name the paths it forbids.
OUTSIDE_PATHS = re.compile(
    "|".join(re.escape(p) for p in ("shared" + "/reference", "../" + "shared"))
)
SECTION_3 = re.compile(r"\bSec(?:tion|s?\.)\s*3\b")
METHOD_EQUATION = re.compile(
    r"\b(?:[Ee]qs?\.?|[Ee]quations?)\s*\(?\s*(\d+)\)?(?:\s*(?:[–—-]|and)\s*\(?(\d+))?|Example 1\b"
)
# A citation belongs to its clause: split at ";", paragraph breaks and sentence ends (a full stop
# before a capital that does not end "Sec.", "eq." and the like).
CLAUSE_END = re.compile(
    r";|\n\s*\n|(?<!Sec)(?<!Secs)(?<![Ee]q)(?<![Ee]qs)(?<!Fig)(?<!Figs)(?<!al)(?<!cf)\.\s+(?=[A-Z*])"
)


def load(path: Path) -> list[dict]:
    """The notebook's cells, each source as one string."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    for cell in cells:
        if isinstance(cell["source"], list):
            cell["source"] = "".join(cell["source"])
    return cells


def tags(cell: dict) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def exercise_problems(path: Path) -> list[str]:
    """Every exercise is markdown → hidden solution → check, and there is at least one."""
    cells, problems, found = load(path), [], 0
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "markdown" or not cell["source"].lstrip().startswith("**Exercise"):
            continue
        found += 1
        where = f"exercise in cell {i}"
        if not EXERCISE.match(cell["source"].lstrip()):
            problems.append(f"{where}: must start with '**Exercise N.**'")
        solution = cells[i + 1] if i + 1 < len(cells) else None
        check = cells[i + 2] if i + 2 < len(cells) else None
        if not solution or solution["cell_type"] != "code" or "solution" not in tags(solution):
            problems.append(f"{where}: the next cell must be a code cell tagged 'solution'")
        else:
            if solution.get("metadata", {}).get("jupyter", {}).get("source_hidden") is not True:
                problems.append(f"{where}: the solution needs metadata jupyter.source_hidden: true")
            if solution["source"].splitlines()[:1] != [SOLUTION_FIRST_LINE]:
                problems.append(f"{where}: the solution must open with {SOLUTION_FIRST_LINE!r}")
        if not check or check["cell_type"] != "code" or "check" not in tags(check):
            problems.append(
                f"{where}: the cell after the solution must be a code cell tagged 'check'"
            )
        elif not re.search(r"\bassert\b", check["source"]):
            problems.append(f"{where}: the check cell has no assert")
    if not found:
        problems.append("no exercise (a markdown cell starting with '**Exercise N.**')")
    return problems


def widget_problems(path: Path, required: bool) -> list[str]:
    """Cells tagged 'widget' are the code cells calling explore(; at least one if required."""
    problems, widgets = [], 0
    for i, cell in enumerate(load(path)):
        calls = cell["cell_type"] == "code" and "explore(" in cell["source"]
        tagged = "widget" in tags(cell)
        widgets += calls and tagged
        if tagged and not calls:
            problems.append(f"cell {i} is tagged 'widget' but does not call explore(")
        if calls and not tagged:
            problems.append(f"cell {i} calls explore( but is not tagged 'widget'")
    if required and not widgets:
        problems.append("no cell tagged 'widget' calling explore(")
    return problems


def source_problems(text: str) -> list[str]:
    """Paths outside the repository, "Sec. 3" cited for the method, the "official quirk"."""
    problems = [
        f"names {m.group()!r}, outside the repository" for m in OUTSIDE_PATHS.finditer(text)
    ]
    for clause in CLAUSE_END.split(text):
        if not SECTION_3.search(clause):
            continue
        for ref in METHOD_EQUATION.finditer(clause):
            numbers = [int(n) for n in ref.groups() if n]
            if not numbers or any(3 <= n <= 15 for n in numbers):
                section = SECTION_3.search(clause).group()
                context = " ".join(clause.split())[:200]
                problems.append(f"{section!r} cited beside {ref.group()!r}: {context!r}")
                break
    if re.search(r"official\s+quirk", text, re.IGNORECASE):
        problems.append("calls the paper's conditioning rule an 'official quirk'")
    return problems


def notebook_text(path: Path) -> str:
    return "\n\n".join(cell["source"] for cell in load(path))


# --- The checkers, on synthetic notebooks -------------------------------------------------------


def write_notebook(path: Path, cells: list[dict]) -> Path:
    nb = {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb), encoding="utf-8")
    return path


def markdown(source: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": source.splitlines(keepends=True)}


def code(source: str, *cell_tags: str, hidden: bool = False) -> dict:
    metadata: dict = {"tags": list(cell_tags)} if cell_tags else {}
    if hidden:
        metadata["jupyter"] = {"source_hidden": True}
    return {
        "cell_type": "code",
        "metadata": metadata,
        "source": source.splitlines(keepends=True),
        "outputs": [],
        "execution_count": None,
    }


def exercise(**changes) -> list[dict]:
    cells = {
        "task": markdown("**Exercise 1.** Write `double(x)`, which returns twice `x`."),
        "solution": code(
            f"{SOLUTION_FIRST_LINE}\ndef double(x):\n    return 2 * x", "solution", hidden=True
        ),
        "check": code("assert double(3) == 6", "check"),
    }
    cells.update(changes)
    return [c for c in cells.values() if c is not None]


GOOD = [
    markdown("# A notebook"),
    *exercise(),
    code("from densflow.utils.widgets import Slider, explore"),
]


def test_a_notebook_that_follows_the_conventions_passes(tmp_path):
    widget = code("panel = explore(draw, t=Slider(0.1, 1.2, 0.1, default=0.8))", "widget")
    path = write_notebook(tmp_path / "00_good.ipynb", [*GOOD, widget, *exercise()])
    assert exercise_problems(path) == []
    assert widget_problems(path, required=True) == []
    text = (
        notebook_text(path)
        + "\nEq. (6) of Sec. 2.1; eq. 14 (Sec. 2.2); Sec. 3 reports the results."
    )
    assert source_problems(text) == []


@pytest.mark.parametrize(
    "cells, problem",
    [
        ([markdown("# No exercise"), code("x = 1")], "no exercise"),
        (exercise(task=markdown("**Exercise:** write it")), "must start with '**Exercise N.**'"),
        (exercise(solution=None), "tagged 'solution'"),
        (exercise(solution=code(SOLUTION_FIRST_LINE + "\nx = 1", "solution")), "source_hidden"),
        (exercise(solution=code("def double(x): ...", "solution", hidden=True)), "must open with"),
        (exercise(check=None), "tagged 'check'"),
        (exercise(check=code("print(double(3))", "check")), "no assert"),
        (exercise(check=code("assert double(3) == 6")), "tagged 'check'"),
        ([*exercise()[::-1]], "tagged 'solution'"),  # the task after its solution and check
    ],
)
def test_a_broken_exercise_is_found(tmp_path, cells, problem):
    path = write_notebook(tmp_path / "01_bad.ipynb", [markdown("# A notebook"), *cells])
    found = exercise_problems(path)
    assert any(problem in p for p in found), found


@pytest.mark.parametrize(
    "cells, required, problem",
    [
        (GOOD, True, "no cell tagged 'widget'"),
        ([*GOOD, code("explore(draw, t=Slider(0, 1, 0.5, default=0))")], False, "not tagged"),
        ([*GOOD, code("draw(t=0.8)", "widget")], False, "does not call explore("),
    ],
)
def test_a_missing_or_untagged_widget_is_found(tmp_path, cells, required, problem):
    found = widget_problems(write_notebook(tmp_path / "02_bad.ipynb", cells), required)
    assert any(problem in p for p in found), found


@pytest.mark.parametrize(
    "text, problem",
    [
        ("The noise is appended as in eq. 5 (Sec. 3).", "'Sec. 3' cited beside 'eq. 5'"),
        ("Section 3 of the paper derives equations (10)–(13).", "cited beside"),
        ("Example 1 (Sec. 3.1) spells out the terms.", "cited beside 'Example 1'"),
        ("ActNorm, eq. (14), see Sec. 3", "cited beside 'eq. (14)'"),
        ("The fixtures were read from " + "shared" + "/reference/x.pt", "outside the repository"),
        ("See ../" + "shared/paper for the text.", "outside the repository"),
        ("This is an official quirk of the code.", "official quirk"),
    ],
)
def test_a_wrong_citation_or_outside_path_is_found(text, problem):
    found = source_problems(text)
    assert any(problem in p for p in found), found


def test_sec_3_beside_other_numbers_is_allowed():
    assert source_problems("Table 1 (Sec. 3) lists eq. 21's bound; eq. 1 is the objective.") == []


# --- The course -----------------------------------------------------------------------------


@pytest.mark.parametrize("number", WIDGET_NOTEBOOKS)
def test_the_course_has_the_notebooks_with_widgets(number):
    assert [nb for nb in NOTEBOOKS if nb.name.startswith(f"{number}_")], (
        f"no notebooks/{number}_*.ipynb"
    )


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_has_an_exercise_with_a_hidden_solution_and_a_check(notebook):
    assert exercise_problems(notebook) == []


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_widget_cells_are_tagged_and_where_the_course_needs_them(notebook):
    assert widget_problems(notebook, required=notebook.name[:2] in WIDGET_NOTEBOOKS) == []


@pytest.mark.parametrize("path", NOTEBOOKS + DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_sources_cite_the_paper_right_and_stay_in_the_repository(path):
    text = notebook_text(path) if path.suffix == ".ipynb" else path.read_text(encoding="utf-8")
    assert source_problems(text) == []
