"""Figures with controls for the teaching notebooks: the default figure in every runner, sliders
where a live front end can move them.

A notebook cell calls :func:`explore` with a drawing function and its controls::

    panel = explore(draw, temperature=Slider(0.1, 1.2, 0.1, default=0.8))

* **Everywhere** (JupyterLab, nbconvert, papermill, nbval, and so the committed notebook that GitHub
  and the course website show) the cell's output is the figure ``draw(**defaults)`` as an ordinary
  ``image/png`` display.
* **Where a live front end runs the cell** and ipywidgets is installed, one control per argument is
  shown above that figure, and moving a control redraws the figure in place. A live front end is
  one that can answer the kernel: its execute request allows stdin (JupyterLab, Jupyter Notebook
  and VS Code set ``allow_stdin``; nbclient, which papermill and nbconvert use, and nbval do not).
  No environment variable is involved.

Why not ``ipywidgets.interact``: it draws into an ``Output`` widget, so that headless the figure
exists only in the widget state, never as an image output, and nbclient mirrors every ``Output``
widget by sending comm messages on the kernel's shell channel while it waits on that channel for
the cell's reply. A reply that arrives during such a send can be missed, and without a timeout
(papermill's default) the run then waits forever with the kernel and the client both idle
(jupyter/nbclient#312). Here the figure is a plain display whose controls, when there are any,
redraw it with ``update_display_data``: no ``Output`` widget exists in any runner, and a headless
run creates no widget at all.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import InputError

__all__ = ["Choice", "Slider", "explore", "live_front_end"]


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
            raise InputError("Choice needs at least one option; pass a non-empty list")

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


def live_front_end() -> bool:
    """Whether the running cell came from a front end that can move a slider: a Jupyter kernel
    whose current execute request allows stdin, with ipywidgets installed."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    kernel = getattr(get_ipython(), "kernel", None)
    if kernel is None:  # plain Python, or a terminal IPython
        return False
    request = kernel.get_parent()
    if not request.get("content", {}).get("allow_stdin", False):
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def explore(draw: Callable[..., Any], **controls: Slider | Choice) -> Any:
    """Show ``draw(**defaults)`` as an image; where a front end is live, add one control per
    argument above it, each redrawing the figure in place.

    ``draw`` makes and returns a matplotlib figure from keyword arguments named like the controls.
    Returns the box of controls in a live notebook and ``None`` elsewhere; assign it
    (``panel = explore(...)``) so that the cell does not display it a second time.
    """
    for name, control in controls.items():
        if not isinstance(control, Slider | Choice):
            raise InputError(
                f"control {name!r} must be a densflow.utils.widgets.Slider or Choice, "
                f"got {type(control).__name__}; wrap the range in Slider(low, high, step, default)"
            )
    from IPython.display import display

    defaults = {name: control.default for name, control in controls.items()}
    live = live_front_end()
    if live:
        import ipywidgets

        widgets = {name: control.widget(name) for name, control in controls.items()}
        panel = ipywidgets.HBox(list(widgets.values()))
        panel.layout.flex_flow = "row wrap"
        display(panel)
    figure = display(_rendered(draw, defaults), display_id=True)
    if not live:
        return None

    def redraw(_change: Any) -> None:
        values = {name: widget.value for name, widget in widgets.items()}
        try:
            figure.update(_rendered(draw, values))
        except Exception:  # shown in place of the figure: a comm callback has no cell output
            figure.update({"text/plain": traceback.format_exc()}, raw=True)

    for widget in widgets.values():
        widget.observe(redraw, names="value")
    return panel


def _rendered(draw: Callable[..., Any], values: dict[str, Any]) -> Any:
    """``draw(**values)``, closed, so that only the display shows it (not also the inline
    backend at the end of the cell)."""
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    figure = draw(**values)
    if not isinstance(figure, Figure):
        plt.close("all")
        raise InputError(
            f"the drawing function must return its matplotlib figure, got {type(figure).__name__}; "
            "end it with `return fig`"
        )
    plt.close(figure)
    return figure
