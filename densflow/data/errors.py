"""The errors a missing or malformed dataset raises, and the pieces of their messages.

Every message names the dataset, the folder or file, what was expected there, what was found, and
where to get the data, so that one reading is enough to fix the problem.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..utils.errors import InputError

if TYPE_CHECKING:
    from .types import DatasetInfo

__all__ = [
    "DatasetError",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "bad_file",
    "data_root",
    "empty_split",
    "few",
    "listing",
    "not_found",
]


class DatasetError(InputError):
    """A dataset is missing or malformed; the message says what was expected and where."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The data directory or some of its files are missing."""


class DatasetFormatError(DatasetError, ValueError):
    """A data file exists but its content is not what the dataset format prescribes."""


def few(items: Sequence[str], k: int = 11) -> str:
    """``items`` joined, at most ``k`` shown; runs of 3+ numbers shortened.

    Example:
        >>> few(["batch_1", "batch_2", "batch_3", "batch_5", "val"])
        'batch_1..3, batch_5, val'
    """
    parts: list[str] = []
    runs: list[tuple[str, int, int]] = []  # (prefix, first, last) of consecutive numbers
    for item in items:
        m = re.fullmatch(r"(.*?)([1-9]\d*)", item)  # no leading zeros: 007 is not 7
        if m and runs and runs[-1][0] == m[1] and runs[-1][2] + 1 == int(m[2]):
            runs[-1] = (m[1], runs[-1][1], int(m[2]))
        else:
            runs.append((m[1], int(m[2]), int(m[2])) if m else (item, -1, -1))
    for prefix, a, b in runs:
        if a < 0:
            parts.append(prefix)
        else:
            parts += (
                [f"{prefix}{a}..{b}"] if b - a >= 2 else [f"{prefix}{i}" for i in range(a, b + 1)]
            )
    return ", ".join(parts[:k]) + (f", ... ({len(items)} in all)" if len(parts) > k else "")


def listing(path: Path) -> str:
    """What a directory holds, in a few words, for error messages."""
    if not path.exists():
        return f"{path} does not exist"
    if not path.is_dir():
        return f"{path} is a file, not a directory"
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    return f"{path} is empty" if not entries else f"{path} holds {few(entries, 8)}"


def not_found(
    info: DatasetInfo, where: Path, missing: Sequence[str], searched: Path
) -> DatasetError:
    """Files of ``info`` are missing in ``where``; the listing of ``searched`` shows what is."""
    return DatasetNotFoundError(
        f"{info.name}: data not found in {where}.\n"
        f"  expected: {few(info.files)}; {info.layout}\n"
        f"  missing: {few(missing)}\n"
        f"  found: {listing(searched)}\n"
        f"  get it: {info.how_to_get}"
    )


def bad_file(name: str, path: Path, what: str) -> DatasetError:
    """The file ``path`` of dataset ``name`` exists but is malformed: ``what`` says how."""
    return DatasetFormatError(f"{name}: malformed file {path}: {what}")


def empty_split(info: DatasetInfo, split: str, where: Path | None) -> DatasetError:
    """A split that the files hold no image of (a truncated or wrong copy)."""
    place = f" in {where}" if where is not None else ""
    return DatasetFormatError(
        f"{info.name}: the {split!r} split holds no images{place}; the full dataset has "
        f"{info.split_size(split):,} (a truncated or wrong copy?). get it: {info.how_to_get}"
    )


def data_root(info: DatasetInfo, data_dir: str | os.PathLike[str] | None) -> Path:
    """The folder a dataset's files are looked for in; ``None`` is refused with a hint."""
    if data_dir is None:
        raise DatasetNotFoundError(
            f"{info.name}: no data_dir given.\n  expected: {few(info.files)}\n"
            f"  get it: {info.how_to_get}"
        )
    return Path(data_dir).expanduser()
