"""What the course website adds to the notebooks it renders (loaded by docs/conf.py).

* **Solutions behind a toggle.** A notebook holds no solution: a numeric exercise's cell tagged
  ``solution`` only runs ``solutions/NN_exerciseK.py``, a conceptual exercise's cell tagged
  ``answer`` only links ``solutions/NN_exerciseK.md`` (tests/test_course.py checks it), so that
  GitHub's render of the notebook shows none. :func:`read_notebook`, the site's notebook reader,
  puts each file's text into its cell, collapsed: the code cell's source behind myst-nb's "Show
  code cell source" toggle (its ``hide-input`` tag), the worked answer inside ``<details>``.
* **The landing page's figure.** :func:`landing_figure` writes the committed image of one notebook
  cell (Fig. 3 of notebook 07, drawn from the paper's configuration) into a folder of static
  files, so that the figure on the front page is the notebook's own output, not a copy beside it.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import nbformat

__all__ = ["landing_figure", "read_notebook"]

ROOT = Path(__file__).resolve().parents[2]
SOLUTIONS = ROOT / "notebooks" / "solutions"
_SOLUTION_FILE = re.compile(r"^%run -i solutions/(\S+\.py)$", re.MULTILINE)
_ANSWER_FILE = re.compile(r"\(solutions/(\S+\.md)\)")


def read_notebook(text: str) -> nbformat.NotebookNode:
    """A notebook as the site shows it: each exercise's solution file inside its cell, collapsed."""
    nb = nbformat.reads(text, as_version=4)
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if cell.cell_type == "code" and "solution" in tags:
            (name,) = _SOLUTION_FILE.findall(cell.source)
            solution = (SOLUTIONS / name).read_text(encoding="utf-8").rstrip("\n")
            cell.source = f"# Solution (notebooks/solutions/{name})\n{solution}"
            cell.metadata["tags"] = [*tags, "hide-input"]
        elif cell.cell_type == "markdown" and "answer" in tags:
            (name,) = _ANSWER_FILE.findall(cell.source)
            answer = (SOLUTIONS / name).read_text(encoding="utf-8").strip("\n")
            cell.source = (
                '<details class="worked-answer">\n<summary>Worked answer</summary>\n\n'
                f"{answer}\n\n</details>"
            )
    return nb


def landing_figure(notebook: Path, marker: str, out: Path) -> Path:
    """Write the ``image/png`` output of the code cell of ``notebook`` whose source contains
    ``marker`` to ``out``; return ``out``."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    for cell in cells:
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if cell["cell_type"] != "code" or marker not in source:
            continue
        for output in cell.get("outputs", []):
            png = output.get("data", {}).get("image/png")
            if png:
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(base64.b64decode("".join(png) if isinstance(png, list) else png))
                return out
    raise ValueError(f"{notebook.name} has no cell with {marker!r} and an image output")
