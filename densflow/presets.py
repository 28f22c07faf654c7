"""Every named preset of densflow, in one namespace with three kinds.

* **model sizes** (``--model``, :data:`densflow.config.MODEL_SIZES`, :meth:`DenseFlowConfig.preset
  <densflow.config.DenseFlowConfig.preset>`): the architecture;
* **training protocols** (``train --preset``, :data:`densflow.training.TRAIN_PRESETS`, the
  reproduction notebooks' ``preset``): the settings of a training run per dataset, with a model
  size among them;
* **ablation scales** (``ablate --preset``, :data:`densflow.ablations.ABLATION_PRESETS`): the
  scale of the ablation study.

A name means the same thing in every kind it appears in: ``smoke`` is every code path in minutes
(not for results), ``quickstart`` minutes on a CPU, ``paper`` the paper's scale. The table of
docs/presets.md is :func:`markdown_table`, and a test checks that the page shows it.

Example:
    >>> sorted(PRESETS)
    ['ablation scale', 'model size', 'training protocol']
"""

from __future__ import annotations

from .ablations import ABLATION_PRESETS
from .config import MODEL_SIZES
from .training import TRAIN_PRESETS
from .utils.errors import InputError

__all__ = ["PRESETS", "describe", "markdown_table"]

_WHAT = {
    "model size": {
        "denseflow-74-10": "the paper's DenseFlow-74-10: every result of the paper",
        "small": "every component at CPU-trainable widths: the course and the quickstart",
        "tiny": "the smallest DenseFlow with every component: tests and smoke runs",
    },
    "training protocol": {
        "paper": "the paper's protocol per dataset (Appendix C) with DenseFlow-74-10",
        "official": "what the official scripts run: constant lr after the warm-up; CIFAR-10 400 "
        "+ 20 epochs",
        "smoke": "every code path of a run in minutes with the tiny model; not for results",
        "quickstart": "the TrainConfig defaults on the built-in photos: minutes on a CPU",
    },
    "ablation scale": {
        "smoke": "every code path of the study in about a minute; not for results",
        "quickstart": "minutes on a busy CPU, 3 seeds of 24 steps: trends only",
        "cpu": "about 25 minutes on two CPU cores, 3 seeds of 735 steps",
        "paper": "GPU scale: DenseFlow-74-10, 20,000 steps of 64 images per run",
    },
}

PRESETS: dict[str, tuple[str, ...]] = {
    "model size": tuple(MODEL_SIZES),
    "training protocol": tuple(TRAIN_PRESETS),
    "ablation scale": tuple(ABLATION_PRESETS),
}
"""Kind → the preset names of that kind, as their registries hold them."""


def describe(kind: str, name: str) -> str:
    """What the preset ``name`` of ``kind`` is, in one line."""
    if kind not in PRESETS or name not in PRESETS[kind]:
        known = {k: list(v) for k, v in PRESETS.items()}
        raise InputError(f"no {kind!r} preset {name!r}; the presets are {known}")
    return _WHAT[kind][name]


def _where(kind: str, name: str) -> str:
    if kind == "model size":
        return f"`train --model {name}`, `DenseFlowConfig.preset({name!r})`"
    if kind == "training protocol":
        return f"`train --preset {name}` ({', '.join(TRAIN_PRESETS[name])})"
    return f"`ablate --preset {name}` ({ABLATION_PRESETS[name].steps} steps)"


def markdown_table() -> str:
    """The table of every preset: kind, name, what it is, where it is used."""
    rows = ["| kind | name | what | used as |", "|---|---|---|---|"]
    for kind, names in PRESETS.items():
        rows += [f"| {kind} | `{n}` | {describe(kind, n)} | {_where(kind, n)} |" for n in names]
    return "\n".join(rows) + "\n"
