"""How a command stops when it is told to: within :func:`sigterm_as_interrupt`, SIGTERM
(``torchrun`` stopping the other processes of a job when one fails, a batch scheduler ending a
job) is Ctrl-C, so the work in progress is saved and one line says where, instead of the process
vanishing.

The standard library's ``signal`` module does the work; what it does not give is the rule for a
process that is already on its way out, which is why this module exists (see :func:`stopping`).
Free of torch, so that the command line can use it before anything heavy is imported.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["sigterm_as_interrupt", "stopping"]


_SIGTERM = {"depth": 0, "stopping": False}
"""How many :func:`sigterm_as_interrupt` blocks are open, and whether this process is stopping."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises ``KeyboardInterrupt``, as Ctrl-C does, so that the work
    in progress is saved and the line saying where is printed. Once: after the first, and after
    :func:`stopping`, SIGTERM is ignored until the outermost block ends, so that the saving and
    that line are not cut short (``torchrun`` sends one SIGTERM to the other processes of a job
    when one fails, and the survivors may already be stopping on a broken collective; schedulers
    follow SIGTERM with SIGKILL). Blocks nest; outside the main thread, where Python cannot take
    signals, the block changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _SIGTERM["depth"] == 0:
        _SIGTERM["stopping"] = False
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    _SIGTERM["depth"] += 1
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _SIGTERM["depth"] -= 1


def stopping() -> None:
    """Say that this process is stopping (saving its progress on the way out): a SIGTERM within
    :func:`sigterm_as_interrupt` no longer interrupts it. Outside such a block, nothing."""
    if _SIGTERM["depth"]:
        _SIGTERM["stopping"] = True


def _on_sigterm(signum: int, frame: Any) -> None:
    if not _SIGTERM["stopping"]:
        _SIGTERM["stopping"] = True
        raise KeyboardInterrupt
