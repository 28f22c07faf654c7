"""Writes docs/presets.md, the one table of densflow's presets, from the registries themselves.

    python docs/presets_reference.py          # rewrite docs/presets.md
    python docs/presets_reference.py --check  # exit 1 if docs/presets.md is not what the code says

``tests/test_presets.py`` runs the check, so the page never drifts from the code.
"""

from __future__ import annotations

import sys
from pathlib import Path

PAGE = Path(__file__).resolve().parent / "presets.md"

INTRO = """# Presets

densflow names its ready-made settings in one vocabulary with three kinds: a **model size** is an
architecture (`--model`, `DenseFlowConfig.preset`), a **training protocol** is every setting of a
training run for a dataset, a model size among them (`train --preset`, `train_preset`, the
reproduction notebooks' `preset`), and an **ablation scale** is the size of the ablation study
(`ablate --preset`). A name means the same in every kind it appears in: `smoke` runs every code
path in minutes and is not for results, `quickstart` takes minutes on a CPU, `paper` is the
paper's scale. Checkpoints written with the model size's earlier name `paper` load as
`denseflow-74-10`.

This page is generated from the code by `python docs/presets_reference.py` (`densflow.presets`),
and a test checks that it is current.

"""


def page() -> str:
    from densflow.presets import markdown_table

    return INTRO + markdown_table()


def main(argv: list[str]) -> int:
    text = page()
    if "--check" in argv:
        if not PAGE.is_file() or PAGE.read_text() != text:
            print(f"{PAGE} is out of date: run python docs/presets_reference.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main(sys.argv[1:]))
