"""The one exception class for a user's mistake, and the one line that reports an exception.

Every check of something a user gives (an argument, an option, a file, a folder, a config value)
raises :class:`InputError`, or a subclass of it, with a message that says what is wrong, what was
expected and how to fix it. The command line shows such an error as one ``error:`` line and exits
with status 2; any other exception is a bug in densflow (status 1). It is a ``ValueError``, so
code that catches ``ValueError`` keeps working.

>>> raise InputError("k must be an integer >= 1, got 0")
Traceback (most recent call last):
...
densflow.utils.errors.InputError: k must be an integer >= 1, got 0
>>> first_line(OSError("Network is unreachable\\nmore detail"))
'OSError: Network is unreachable'
"""

from __future__ import annotations

__all__ = ["InputError", "first_line"]


class InputError(ValueError):
    """A mistake in what the user gave; the message is one line: what, expected, how to fix."""


def first_line(err: BaseException) -> str:
    """``"<class>: <first line of the message>"``: a library's exception inside a one-line
    message (its further lines, often a traceback of its own, are left out)."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
