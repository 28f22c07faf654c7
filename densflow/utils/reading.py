"""Reading what a user points at without hanging or crashing on it: only regular files are
opened (a FIFO nobody writes would block the reader for ever, a device may never end), JSON
nested beyond reason is one clear error rather than Python's recursion limit, and images are
decoded only up to a pixel limit.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from .errors import InputError

__all__ = ["MAX_IMAGE_PIXELS", "check_regular", "file_kind", "parse_json"]

MAX_IMAGE_PIXELS = 4096 * 4096
"""The most pixels an image of a dataset may have (CelebA's are 178×218): a larger one is
refused before it is decoded, as a decompression bomb would fill the memory."""


def file_kind(path: str | os.PathLike) -> str:
    """``regular``, ``missing``, or what else ``path`` is (``a FIFO``, ``a device``...)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "missing"
    for test, kind in (
        (stat.S_ISREG, "regular"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"),
    ):  # fmt: skip
        if test(mode):
            return kind
    return "a special file"


def check_regular(path: str | os.PathLike, what: str = "") -> Path:
    """``path``, if it is a regular file (or a link to one); a FIFO, device, socket or folder is
    refused in one line before it is opened, so that reading it cannot block."""
    kind = file_kind(path)
    if kind not in ("regular", "missing"):  # a missing file is the opener's error to report
        raise InputError(
            f"{what + ' ' if what else ''}{path} is not a regular file ({kind}); give the path of "
            "a file"
        )
    return Path(path)


def parse_json(text: str, what: str, expected: str = "a densflow JSON document") -> Any:
    """``json.loads(text)``; a document nested too deeply for the parser is an
    :class:`~densflow.utils.errors.InputError` naming ``what`` and what it should be
    (``expected``), and so is malformed JSON."""
    try:
        return json.loads(text)
    except RecursionError:
        raise InputError(f"{what} is nested too deeply to be {expected}") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{what} is not valid JSON ({err})") from None
