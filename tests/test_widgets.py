"""The notebooks' controls: the static path draws the defaults, the live path redraws on change."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from densflow.utils.widgets import Choice, Slider, explore, is_static  # noqa: E402


def recorder():
    calls = []

    def draw(**values):
        import matplotlib.pyplot as plt

        calls.append(values)
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, values.get("t", 0)])
        return fig

    return draw, calls


def test_headless_runs_draw_once_at_the_defaults(monkeypatch):
    monkeypatch.setenv("DENSFLOW_STATIC", "1")
    assert is_static()
    draw, calls = recorder()
    shown = explore(draw, t=Slider(0.1, 1.2, 0.1, default=0.8), level=Choice(["z", "dropped"]))
    assert calls == [{"t": 0.8, "level": "z"}]
    assert shown is None  # the figure is shown once, by plt.show(), not again as the cell's value


def test_a_live_notebook_gets_widgets_that_redraw(monkeypatch):
    pytest.importorskip("ipywidgets")
    monkeypatch.delenv("DENSFLOW_STATIC", raising=False)
    assert not is_static()
    draw, calls = recorder()
    panel = explore(draw, t=Slider(0.1, 1.2, 0.1, default=0.8), n=Slider(1, 9, 1, default=4))
    slider_t, slider_n = panel.children[:2]
    assert type(slider_t).__name__ == "FloatSlider" and type(slider_n).__name__ == "IntSlider"
    assert calls[-1] == {"t": 0.8, "n": 4}
    slider_t.value = 0.3
    assert calls[-1] == {"t": 0.3, "n": 4}


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Slider(0.0, 1.0, 0.1, default=2.0), "outside"),
        (lambda: Slider(0.0, 1.0, 0.0, default=0.5), "step must be positive"),
        (lambda: Choice([]), "at least one option"),
    ],
)
def test_bad_controls_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_control_must_be_a_slider_or_choice(monkeypatch):
    monkeypatch.setenv("DENSFLOW_STATIC", "1")
    with pytest.raises(TypeError, match="must be a densflow.utils.widgets.Slider or Choice"):
        explore(lambda **v: None, t=(0, 1))
