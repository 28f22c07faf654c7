"""The one exception class for a user's mistake.

Every check of something a user gives (an argument, an option, a file, a folder, a config value)
raises :class:`InputError`, or a subclass of it, with a message that says what is wrong, what was
expected and how to fix it. The command line shows such an error as one ``error:`` line and exits
with status 2; any other exception is a bug in densflow (status 1). It is a ``ValueError``, so
code that catches ``ValueError`` keeps working.

>>> raise InputError("k must be an integer >= 1, got 0")
Traceback (most recent call last):
...
densflow.utils.errors.InputError: k must be an integer >= 1, got 0
"""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """A mistake in what the user gave; the message is one line: what, expected, how to fix."""
