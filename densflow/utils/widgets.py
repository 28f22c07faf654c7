"""Controls for the teaching notebooks: a slider in JupyterLab, a static figure everywhere else.

A notebook cell calls :func:`explore` with a drawing function and its controls::

    explore(draw, temperature=Slider(0.1, 1.2, 0.1, default=0.8))

* In a live JupyterLab session the learner gets one widget per control, and every change redraws.
* In a headless run (nbval, papermill, the documentation build) there is nobody to move a slider,
  so the same cell draws the figure once at the defaults. Headless runs are marked by the
  environment variable ``DENSFLOW_STATIC=1``, which ``make test`` and ``make docs`` set; where
  ipywidgets is not installed the figure is static too.

Both paths call the same ``draw(**values)``, so the figure a test checks is the figure a learner
starts from.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import InputError

__all__ = ["Choice", "Slider", "explore", "is_static"]

STATIC_ENV = "DENSFLOW_STATIC"


@dataclass(frozen=True)
class Slider:
    """A number between ``low`` and ``high`` in steps of ``step``; an int slider if all are ints."""

    low: float
    high: float
    step: float
    default: float

    def __post_init__(self) -> None:
        if not self.low <= self.default <= self.high:
            raise InputError(
                f"Slider default {self.default} is outside [{self.low}, {self.high}]; "
                "pick a default inside the range"
            )
        if not self.step > 0:
            raise InputError(f"Slider step must be positive, got {self.step}")

    def widget(self, name: str) -> Any:
        import ipywidgets

        integer = all(isinstance(v, int) for v in (self.low, self.high, self.step, self.default))
        kind = ipywidgets.IntSlider if integer else ipywidgets.FloatSlider
        return kind(
            value=self.default,
            min=self.low,
            max=self.high,
            step=self.step,
            description=name,
            style={"description_width": "initial"},
            continuous_update=False,
        )


@dataclass(frozen=True)
class Choice:
    """One of ``options``; the first is the default."""

    options: Sequence[Any]

    def __post_init__(self) -> None:
        if len(self.options) == 0:
            raise InputError("Choice needs at least one option")

    @property
    def default(self) -> Any:
        return self.options[0]

    def widget(self, name: str) -> Any:
        import ipywidgets

        return ipywidgets.Dropdown(
            options=list(self.options),
            value=self.default,
            description=name,
            style={"description_width": "initial"},
        )


def is_static() -> bool:
    """True in headless runs (``DENSFLOW_STATIC=1``) and where ipywidgets is missing."""
    if os.environ.get(STATIC_ENV, "").strip() not in ("", "0"):
        return True
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return True
    return False


def explore(draw: Callable[..., Any], **controls: Slider | Choice) -> Any:
    """Draw ``draw(**defaults)``; in a live notebook, attach one widget per control.

    ``draw`` makes a matplotlib figure (with ``plt.subplots``) from keyword arguments named like the
    controls. Returns the ipywidgets ``interactive`` object in a live notebook and ``None`` in a
    static run, so that a cell ending in ``explore(...)`` shows its figure once.
    """
    for name, control in controls.items():
        if not isinstance(control, Slider | Choice):
            raise TypeError(
                f"control {name!r} must be a densflow.utils.widgets.Slider or Choice, "
                f"got {type(control).__name__}"
            )
    import matplotlib.pyplot as plt

    if is_static():
        draw(**{name: c.default for name, c in controls.items()})
        plt.show()
        return None

    import ipywidgets
    from IPython.display import display

    def redraw(**values: Any) -> None:
        draw(**values)
        plt.show()

    panel = ipywidgets.interactive(redraw, **{name: c.widget(name) for name, c in controls.items()})
    display(panel)
    return panel
