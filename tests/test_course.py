"""The course's conventions, checked on every course notebook (notebooks/NN_*.ipynb and the
appendix) and their solutions (notebooks/solutions/).

* Exercises, two or more per notebook, numbered from 1: each a markdown cell starting
  ``**Exercise N.** (numeric)`` or ``**Exercise N.** (conceptual)``. A numeric one is followed by
  a code cell tagged ``solution`` (collapsed in JupyterLab, ``"jupyter": {"source_hidden": true}``)
  that only runs ``solutions/<prefix>_exerciseN.py`` after the invitation to try first, then a
  code cell tagged ``check`` whose ``assert``s judge the answer. A conceptual one is followed by a
  markdown cell tagged ``answer`` that only links ``solutions/<prefix>_exerciseN.md``. So no
  solution is visible where GitHub renders the notebook; the website shows each behind a toggle
  (docs/_ext/course_site.py).
* Widgets: the notebooks where a learner should play have a cell tagged ``widget`` calling
  ``explore(`` (densflow.utils.widgets), and every cell calling it carries the tag.
* Sources: no notebook or doc names a path outside the repository, and the method's equations are
  never cited as "Sec. 3" (eq. 2 is in Sec. 1, eqs. 3–13 and Example 1 in Sec. 2.1, eqs. 14–15 in
  Sec. 2.2); the conditioning rule of eq. 6 is the paper's, never an "official quirk".
* "The paper": every sentence of the course that says "the paper" cites a part of it that exists
  or says whose statement it is, and quotes only what the paper says (tests/paper.py).

Each rule is a function returning the problems it finds, tested here on small synthetic notebooks
both ways, and then run on the course.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from paper import paper_sentence_problems

ROOT = Path(__file__).resolve().parent.parent
COURSE = ROOT / "notebooks"
SOLUTIONS = COURSE / "solutions"
NOTEBOOKS = sorted(COURSE.glob("[0-9][0-9]_*.ipynb")) + sorted(COURSE.glob("appendix_*.ipynb"))
DOCS = sorted([ROOT / "README.md", ROOT / "notebooks" / "README.md", *(ROOT / "docs").glob("*.md")])
# Where the issue asks for controls: 00 (the fit), 02 (q's parameters), 04 (k of the IW bound),
# 06 (landmarks), 07 (growth rate and shapes), 09 (temperature).
WIDGET_NOTEBOOKS = ("00", "02", "04", "06", "07", "09")
SOLUTION_FIRST_LINE = "# Solution — try it yourself first: replace this cell with your own code."

EXERCISE = re.compile(r"\*\*Exercise (\d+)\.\*\* \((numeric|conceptual)\)")
ANSWER = "*Worked answer:* [`solutions/{name}`](solutions/{name}) (read it once you have tried)."
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


def prefix(path: Path) -> str:
    """``01`` for notebooks/01_change_of_variables.ipynb, ``appendix`` for the appendix."""
    return path.name.split("_")[0]


def exercise_problems(path: Path, solutions: Path = SOLUTIONS) -> list[str]:
    """Exercises 1, 2, … each numeric (hidden solution, then check) or conceptual (linked
    answer), with at least one of each; their solution files exist in ``solutions``."""
    cells, problems, kinds = load(path), [], []
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "markdown" or not cell["source"].lstrip().startswith("**Exercise"):
            continue
        where = f"exercise in cell {i}"
        match = EXERCISE.match(cell["source"].lstrip())
        if not match:
            problems.append(
                f"{where}: must start with '**Exercise N.** (numeric)' or '(conceptual)'"
            )
            continue
        number, kind = int(match[1]), match[2]
        kinds.append(kind)
        if number != len(kinds):
            problems.append(f"{where}: numbered {number}, expected {len(kinds)}")
        name = f"{prefix(path)}_exercise{number}"
        following = cells[i + 1 : i + 3] + [None, None]
        if kind == "numeric":
            problems += _numeric_problems(where, following[0], following[1], name, solutions)
        else:
            problems += _conceptual_problems(where, following[0], name, solutions)
    if "numeric" not in kinds:
        problems.append("no numeric exercise ('**Exercise N.** (numeric)' with a check)")
    if "conceptual" not in kinds:
        problems.append("no conceptual exercise ('**Exercise N.** (conceptual)' with an answer)")
    return problems


def _numeric_problems(where, solution, check, name, solutions: Path) -> list[str]:
    problems = []
    if not solution or solution["cell_type"] != "code" or "solution" not in tags(solution):
        problems.append(f"{where}: the next cell must be a code cell tagged 'solution'")
    else:
        if solution.get("metadata", {}).get("jupyter", {}).get("source_hidden") is not True:
            problems.append(f"{where}: the solution needs metadata jupyter.source_hidden: true")
        expected = [SOLUTION_FIRST_LINE, f"%run -i solutions/{name}.py"]
        if solution["source"].strip().splitlines() != expected:
            problems.append(f"{where}: the solution cell must be exactly {expected}")
        if not (solutions / f"{name}.py").is_file():
            problems.append(f"{where}: no solutions/{name}.py")
    if not check or check["cell_type"] != "code" or "check" not in tags(check):
        problems.append(f"{where}: the cell after the solution must be a code cell tagged 'check'")
    elif not re.search(r"\bassert\b", check["source"]):
        problems.append(f"{where}: the check cell has no assert")
    return problems


def _conceptual_problems(where, answer, name, solutions: Path) -> list[str]:
    problems = []
    if not answer or answer["cell_type"] != "markdown" or "answer" not in tags(answer):
        problems.append(f"{where}: the next cell must be a markdown cell tagged 'answer'")
    elif answer["source"].strip() != ANSWER.format(name=f"{name}.md"):
        problems.append(f"{where}: the answer cell must only link solutions/{name}.md")
    path = solutions / f"{name}.md"
    if not path.is_file() or len(path.read_text(encoding="utf-8").split()) < 20:
        problems.append(f"{where}: solutions/{name}.md must hold the worked answer")
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


def prose(path: Path) -> str:
    """What a notebook says in words: its markdown cells and the comments of its code cells."""
    parts = []
    for cell in load(path):
        if cell["cell_type"] == "markdown":
            parts.append(cell["source"])
        else:
            parts += [line.split("#", 1)[1] for line in cell["source"].splitlines() if "#" in line]
    return "\n\n".join(parts)


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


def markdown_tagged(source: str, *cell_tags: str) -> dict:
    return dict(markdown(source), metadata={"tags": list(cell_tags)})


def exercise(**changes) -> list[dict]:
    """A numeric exercise (task, solution, check), then a conceptual one (task, answer)."""
    cells = {
        "task": markdown("**Exercise 1.** (numeric) Write `double(x)`, which returns twice `x`."),
        "solution": code(
            f"{SOLUTION_FIRST_LINE}\n%run -i solutions/00_exercise1.py", "solution", hidden=True
        ),
        "check": code("assert double(3) == 6", "check"),
        "question": markdown("**Exercise 2.** (conceptual) Why is `double` linear?"),
        "answer": markdown_tagged(ANSWER.format(name="00_exercise2.md"), "answer"),
    }
    cells.update(changes)
    return [c for c in cells.values() if c is not None]


def with_solutions(tmp_path: Path) -> Path:
    folder = tmp_path / "solutions"
    folder.mkdir(exist_ok=True)
    (folder / "00_exercise1.py").write_text("def double(x):\n    return 2 * x\n")
    (folder / "00_exercise2.md").write_text("Because " + "2(x + y) = 2x + 2y, " * 5 + "\n")
    return folder


GOOD = [
    markdown("# A notebook"),
    *exercise(),
    code("from densflow.utils.widgets import Slider, explore"),
]


def test_a_notebook_that_follows_the_conventions_passes(tmp_path):
    widget = code("panel = explore(draw, t=Slider(0.1, 1.2, 0.1, default=0.8))", "widget")
    path = write_notebook(tmp_path / "00_good.ipynb", [*GOOD, widget])
    assert exercise_problems(path, with_solutions(tmp_path)) == []
    assert widget_problems(path, required=True) == []
    text = (
        notebook_text(path)
        + "\nEq. (6) of Sec. 2.1; eq. 14 (Sec. 2.2); Sec. 3 reports the results."
    )
    assert source_problems(text) == []


NO_ANSWER_FILE = "solutions/00_exercise2.md must hold the worked answer"


@pytest.mark.parametrize(
    "cells, problem",
    [
        ([markdown("# No exercise"), code("x = 1")], "no numeric exercise"),
        ([markdown("# No exercise"), code("x = 1")], "no conceptual exercise"),
        (exercise(task=markdown("**Exercise 1.** Write it")), "must start with '**Exercise N.**"),
        (exercise(task=markdown("**Exercise 3.** (numeric) x")), "numbered 3, expected 1"),
        (exercise(solution=None), "tagged 'solution'"),
        (
            exercise(
                solution=code(
                    SOLUTION_FIRST_LINE + "\n%run -i solutions/00_exercise1.py", "solution"
                )
            ),  # fmt: skip
            "source_hidden",
        ),
        (
            exercise(
                solution=code(
                    SOLUTION_FIRST_LINE + "\ndef double(x):\n    return 2 * x",
                    "solution",
                    hidden=True,
                )
            ),  # fmt: skip
            "must be exactly",  # the solution itself in the notebook: GitHub would show it
        ),
        (exercise(check=None), "tagged 'check'"),
        (exercise(check=code("print(double(3))", "check")), "no assert"),
        (exercise(check=code("assert double(3) == 6")), "tagged 'check'"),
        (exercise(answer=None), "markdown cell tagged 'answer'"),
        (
            exercise(answer=markdown_tagged("It is linear because 2(x + y) = 2x + 2y.", "answer")),
            "must only link",
        ),  # fmt: skip
        ([*exercise()[:3][::-1], *exercise()[3:]], "tagged 'solution'"),  # check before solution
    ],
)
def test_a_broken_exercise_is_found(tmp_path, cells, problem):
    path = write_notebook(tmp_path / "00_bad.ipynb", [markdown("# A notebook"), *cells])
    found = exercise_problems(path, with_solutions(tmp_path))
    assert any(problem in p for p in found), found


def test_an_exercise_without_its_solution_file_is_found(tmp_path):
    path = write_notebook(tmp_path / "00_bad.ipynb", exercise())
    folder = with_solutions(tmp_path)
    (folder / "00_exercise1.py").unlink()
    (folder / "00_exercise2.md").write_text("Too short.")
    found = exercise_problems(path, folder)
    assert any("no solutions/00_exercise1.py" in p for p in found), found
    assert any(NO_ANSWER_FILE in p for p in found), found


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
def test_every_notebook_has_a_numeric_and_a_conceptual_exercise_with_hidden_solutions(notebook):
    assert exercise_problems(notebook) == []


def test_every_solution_file_belongs_to_an_exercise():
    referenced = {
        name
        for notebook in NOTEBOOKS
        for name in re.findall(r"solutions/(\w+_exercise\d+\.(?:py|md))", notebook_text(notebook))
    }
    files = {p.name for p in SOLUTIONS.iterdir() if p.suffix in (".py", ".md")}
    assert files == referenced


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_widget_cells_are_tagged_and_where_the_course_needs_them(notebook):
    assert widget_problems(notebook, required=notebook.name[:2] in WIDGET_NOTEBOOKS) == []


@pytest.mark.parametrize("path", NOTEBOOKS + DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_sources_cite_the_paper_right_and_stay_in_the_repository(path):
    text = notebook_text(path) if path.suffix == ".ipynb" else path.read_text(encoding="utf-8")
    assert source_problems(text) == []


# --- "The paper" ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "The paper writes the bound as eq. (5) (Sec. 2.1).",
        "Appendix D proves it; the paper's eqs. (16)–(21) are importance sampling and Jensen.",
        "The widths come from the official code, not the paper (docs/official.md).",
        "The paper does not state k; densflow's evaluation uses the official scripts' k.",
        'In the paper "the bijectivity constraint limits the model width" (abstract, Sec. 1).',
        'The paper\'s MCMC has "long mixing times" (Sec. 1), and "powerful but slow … generation".',
        "Our derivation, not the paper's: the gap is a KL divergence.",
    ],
)
def test_a_sentence_about_the_paper_with_its_source_passes(text):
    assert paper_sentence_problems(text) == []


@pytest.mark.parametrize(
    "text, problem",
    [
        ("The paper uses depth 7 and growth 64.", "without citing where or whose"),
        ("The paper reports it in eq. (23).", "cites equation 23"),
        ("As the paper shows in Fig. 4, it helps.", "cites figure 4"),
        ("The paper's Appendix H has the proof.", "cites appendix H"),
        ("The paper (Sec. 2.3) defines the coupling.", "cites section 2.3"),
        ('The paper (Sec. 2.1) says "g_1 accepts z_0".', "not among the paper's passages"),
        ('The paper notes "hundreds of samples … to reduce the variance" (Sec. 2.1).', "not among"),
    ],
)
def test_a_sentence_about_the_paper_without_its_source_is_found(text, problem):
    found = paper_sentence_problems(text)
    assert any(problem in p for p in found), found


@pytest.mark.parametrize(
    "path",
    NOTEBOOKS + [COURSE / "README.md"] + sorted(SOLUTIONS.glob("*.md")),
    ids=lambda p: p.relative_to(ROOT).as_posix(),
)
def test_every_sentence_about_the_paper_cites_it_or_says_whose_it_is(path):
    text = prose(path) if path.suffix == ".ipynb" else path.read_text(encoding="utf-8")
    assert paper_sentence_problems(text) == []
