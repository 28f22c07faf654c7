"""The notebooks' controls: the figure is an ordinary display everywhere, the controls exist only
where a live front end runs the cell, and moving one redraws that display in place.

The unit tests stand in for the kernel (a recorded ``display``, a fake ``get_ipython``); the slow
test runs a real ipykernel and reads the messages a front end would receive, with and without
``allow_stdin``, down to the ``update_display_data`` a slider move sends.
"""

from __future__ import annotations

import base64
import os
import queue
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import IPython  # noqa: E402
import IPython.display  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from densflow.utils import widgets  # noqa: E402
from densflow.utils.errors import InputError  # noqa: E402
from densflow.utils.widgets import Choice, Slider, explore, live_front_end  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG"
SLIDER = "FloatSliderModel"


def recorder():
    calls = []

    def draw(**values):
        import matplotlib.pyplot as plt

        calls.append(values)
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, values.get("t", 0)])
        return fig

    return draw, calls


class Handle:
    """A display handle that records its updates."""

    def __init__(self) -> None:
        self.updates: list = []

    def update(self, obj, **kwargs) -> None:
        self.updates.append((obj, kwargs))


@pytest.fixture
def shown(monkeypatch):
    """Every object explore displays, in order, with the handle returned for a display_id."""
    displayed = []

    def display(obj, display_id=None, **kwargs):
        handle = Handle() if display_id else None
        displayed.append((obj, handle))
        return handle

    monkeypatch.setattr(IPython.display, "display", display)
    return displayed


def kernel_request(monkeypatch, content):
    shell = SimpleNamespace(kernel=SimpleNamespace(get_parent=lambda: {"content": content}))
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)


def test_a_live_front_end_is_a_kernel_request_that_allows_stdin(monkeypatch):
    monkeypatch.setattr(IPython, "get_ipython", lambda: None)
    assert not live_front_end()  # plain Python
    kernel_request(monkeypatch, {"code": "", "allow_stdin": False})
    assert not live_front_end()  # nbclient (papermill, nbconvert), nbval
    kernel_request(monkeypatch, {"code": "", "allow_stdin": True})
    assert live_front_end() is (pytest.importorskip("ipywidgets") is not None)


def test_without_a_live_front_end_the_default_figure_is_the_only_output(monkeypatch, shown):
    monkeypatch.setattr(widgets, "live_front_end", lambda: False)
    draw, calls = recorder()
    panel = explore(draw, t=Slider(0.1, 1.2, 0.1, default=0.8), level=Choice(["z", "dropped"]))
    assert panel is None
    assert calls == [{"t": 0.8, "level": "z"}]
    assert len(shown) == 1 and isinstance(shown[0][0], Figure)
    # Closed: the inline backend does not show it a second time at the end of the cell.
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []


def test_a_live_front_end_gets_controls_above_the_figure_and_each_move_redraws_it(
    monkeypatch, shown
):
    pytest.importorskip("ipywidgets")
    monkeypatch.setattr(widgets, "live_front_end", lambda: True)
    draw, calls = recorder()
    panel = explore(draw, t=Slider(0.1, 1.2, 0.1, default=0.8), n=Slider(1, 9, 1, default=4))
    (controls, _), (figure, handle) = shown
    assert controls is panel and isinstance(figure, Figure)
    slider_t, slider_n = panel.children
    assert type(slider_t).__name__ == "FloatSlider" and type(slider_n).__name__ == "IntSlider"
    assert calls == [{"t": 0.8, "n": 4}] and handle.updates == []
    slider_t.value = 0.3
    assert calls[-1] == {"t": 0.3, "n": 4}
    assert len(handle.updates) == 1 and isinstance(handle.updates[0][0], Figure)
    slider_n.value = 7
    assert calls[-1] == {"t": 0.3, "n": 7} and len(handle.updates) == 2


def test_an_error_while_redrawing_replaces_the_figure_with_its_traceback(monkeypatch, shown):
    pytest.importorskip("ipywidgets")
    monkeypatch.setattr(widgets, "live_front_end", lambda: True)

    def draw(t):
        if t > 1:
            raise ZeroDivisionError("the draw failed")
        return recorder()[0](t=t)

    panel = explore(draw, t=Slider(0.0, 2.0, 0.5, default=0.5))
    handle = shown[1][1]
    panel.children[0].value = 1.5
    ((bundle, kwargs),) = handle.updates
    assert kwargs == {"raw": True} and "ZeroDivisionError: the draw failed" in bundle["text/plain"]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Slider(0.0, 1.0, 0.1, default=2.0), "outside"),
        (lambda: Slider(0.0, 1.0, 0.0, default=0.5), "step must be positive"),
        (lambda: Choice([]), "at least one option"),
    ],
)
def test_bad_controls_are_refused(make, message):
    with pytest.raises(InputError, match=message):
        make()


def test_a_control_must_be_a_slider_or_choice():
    with pytest.raises(InputError, match="must be a densflow.utils.widgets.Slider or Choice"):
        explore(lambda **v: None, t=(0, 1))


def test_the_drawing_function_must_return_its_figure(monkeypatch, shown):
    monkeypatch.setattr(widgets, "live_front_end", lambda: False)
    with pytest.raises(InputError, match="must return its matplotlib figure"):
        explore(lambda t: None, t=Slider(0, 1, 1, default=0))
    assert shown == []


# --- A real kernel --------------------------------------------------------------------------

CELL = textwrap.dedent(
    """
    import matplotlib.pyplot as plt
    from densflow.utils.widgets import Slider, explore

    def draw(t):
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.plot([0, 1], [0, t])
        ax.set_title(f"t = {t}")
        return fig

    panel = explore(draw, t=Slider(0.0, 1.0, 0.25, default=0.5))
    """
)


def execute(client, code: str, allow_stdin: bool, timeout: float = 120) -> list[dict]:
    """The iopub messages of one execution, up to the kernel's return to idle."""
    msg_id = client.execute(code, allow_stdin=allow_stdin)
    client.get_shell_msg(timeout=timeout)
    return collect(client, lambda m: m["parent_header"].get("msg_id") == msg_id, timeout)


def collect(client, until_idle_of, timeout: float = 60) -> list[dict]:
    messages, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = client.get_iopub_msg(timeout=1)
        except queue.Empty:
            continue
        messages.append(msg)
        state = msg["content"].get("execution_state")
        if msg["msg_type"] == "status" and state == "idle" and until_idle_of(msg):
            return messages
    raise AssertionError(f"no idle status within {timeout} s: {[m['msg_type'] for m in messages]}")


def pngs(messages, msg_type: str) -> list[bytes]:
    return [
        base64.b64decode(m["content"]["data"]["image/png"])
        for m in messages
        if m["msg_type"] == msg_type and "image/png" in m["content"]["data"]
    ]


@pytest.mark.slow
def test_in_a_real_kernel_the_figure_is_an_image_and_controls_come_only_with_stdin(tmp_path):
    from jupyter_client.manager import start_new_kernel

    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path, MPLBACKEND="module://matplotlib_inline.backend_inline")
    manager, client = start_new_kernel(kernel_name="python3", cwd=str(tmp_path), env=env)
    try:
        headless = execute(client, CELL, allow_stdin=False)
        assert [m["msg_type"] for m in headless if m["msg_type"].startswith("comm")] == []
        (figure,) = pngs(headless, "display_data")
        assert figure.startswith(PNG_MAGIC)

        live = execute(client, CELL, allow_stdin=True)
        opened = [m for m in live if m["msg_type"] == "comm_open"]
        (slider,) = [m for m in opened if m["content"]["data"]["state"]["_model_name"] == SLIDER]
        views = [m for m in live if m["msg_type"] == "display_data"]
        assert "application/vnd.jupyter.widget-view+json" in views[0]["content"]["data"]
        (default_figure,) = pngs(live, "display_data")
        assert default_figure == figure  # the same picture as headless
        display_id = views[1]["content"]["transient"]["display_id"]

        # What JupyterLab sends when the slider moves to 1.0.
        comm_id = slider["content"]["comm_id"]
        update = client.session.msg(
            "comm_msg",
            {
                "comm_id": comm_id,
                "data": {"method": "update", "state": {"value": 1.0}, "buffer_paths": []},
            },
        )
        client.shell_channel.send(update)
        sent = update["header"]["msg_id"]
        moved = collect(client, lambda m: m["parent_header"].get("msg_id") == sent)
        redrawn = [m for m in moved if m["msg_type"] == "update_display_data"]
        assert [m["content"]["transient"]["display_id"] for m in redrawn] == [display_id]
        (new_figure,) = pngs(moved, "update_display_data")
        assert new_figure.startswith(PNG_MAGIC) and new_figure != figure
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
