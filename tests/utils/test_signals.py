"""SIGTERM as Ctrl-C (``densflow.utils.signals``): once, not while the process is already
stopping, nested blocks sharing one state, and the previous handler back afterwards. Each test
catches SIGTERM itself around the block (``escaped_sigterms``), so a handler that let one through
would show up there instead of ending pytest."""

from __future__ import annotations

import signal

import pytest

from densflow.utils.signals import sigterm_as_interrupt, stopping


def test_the_first_sigterm_interrupts_and_the_next_ones_are_ignored(escaped_sigterms):
    outside = signal.getsignal(signal.SIGTERM)
    with sigterm_as_interrupt():
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)  # already stopping: saving must not be cut short
    assert signal.getsignal(signal.SIGTERM) is outside and escaped_sigterms == []
    signal.raise_signal(signal.SIGTERM)  # after the block: the handler that was there before
    assert escaped_sigterms == [signal.SIGTERM]

    with sigterm_as_interrupt(), pytest.raises(KeyboardInterrupt):  # a new block starts afresh
        signal.raise_signal(signal.SIGTERM)


def test_a_process_already_stopping_is_not_interrupted_until_the_outermost_block_ends(
    escaped_sigterms,
):
    stopping()  # outside any block: changes nothing
    with sigterm_as_interrupt():
        with sigterm_as_interrupt():  # e.g. evaluate() within the command line's block
            stopping()  # a broken collective: the progress is being saved
            signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)  # the outer block still knows
    assert escaped_sigterms == []
    with sigterm_as_interrupt(), pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGTERM)


def test_outside_the_main_thread_the_block_changes_nothing(escaped_sigterms):
    import threading

    handlers = []

    def in_a_thread() -> None:
        with sigterm_as_interrupt():
            handlers.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    assert handlers == [signal.getsignal(signal.SIGTERM)]
