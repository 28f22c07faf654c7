"""No output of a command may land on one of its inputs: checked before any work.

A command's inputs are the files it reads (a checkpoint, a model directory's two files, an official
run's ``args.pickle``, a cached model's files) and the folders whose every file it may read (a
dataset folder). An output is refused when it **is** an input, by real identity and not by
spelling: the same resolved path (through symbolic links and ``..``), or another name of the same
file (a hard link, a bind mount: :func:`os.path.samefile`). A file that already exists inside a
dataset folder is taken for one of its data files.

The checks also find, before any work, an output that cannot be written: a folder where a file
goes (or the reverse), a read-only file, a folder that takes no new files. Devices and FIFOs are
valid outputs (:func:`~densflow.io.files.atomic_write` writes through them).
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..utils.errors import InputError

__all__ = ["check_output", "check_output_folder"]

PathLike = str | os.PathLike


def _real(path: PathLike) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


def _same(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name the same file or folder (``b`` may not exist yet)."""
    if _real(a) == _real(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def _inside(path: Path, folder: Path) -> bool:
    return _real(folder) in _real(path).parents


def _linked_into(path: Path, tree: Path) -> bool:
    """Whether the existing file ``path`` has another name (a hard link) inside ``tree``."""
    info = path.stat()
    if info.st_nlink < 2:
        return False
    for folder, _, names in os.walk(tree):
        for name in names:
            try:
                other = os.stat(os.path.join(folder, name), follow_symlinks=False)
            except OSError:
                continue
            if (other.st_dev, other.st_ino) == (info.st_dev, info.st_ino):
                return True
    return False


def _refuse_input(
    option: str, path: Path, inputs: Iterable[PathLike | None], trees: Iterable[PathLike | None]
) -> None:
    for source in inputs:
        if source is not None and _same(Path(source).expanduser(), path):
            raise InputError(
                f"{option} {path} is also an input of this command and would be overwritten; "
                "write to another path"
            )
    if not path.is_file():
        return
    for tree in trees:
        tree = None if tree is None else Path(tree).expanduser()
        if tree is not None and tree.is_dir() and (_inside(path, tree) or _linked_into(path, tree)):
            raise InputError(
                f"{option} {path} is also an input of this command (a file of the dataset "
                f"folder {tree}) and would be overwritten; write to another path"
            )


def _check_folder_takes_files(option: str, path: Path, folder: Path) -> None:
    """``folder`` (or, where it does not exist yet, its nearest existing parent, which will hold
    it) takes new files; probed with a file that vanishes at once, and no folder is created."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise InputError(
            f"{option} {path}: cannot write into {existing} ({err.strerror or err}); choose a "
            "writable folder"
        ) from err


def check_output(
    option: str,
    path: PathLike,
    inputs: Iterable[PathLike | None] = (),
    *,
    trees: Iterable[PathLike | None] = (),
    regular: bool = False,
) -> Path:
    """``path`` as a file output of a command whose inputs are ``inputs`` (files or folders) and
    the files in the folders ``trees``; refused (:class:`InputError`, naming ``option``) when it
    is one of them or cannot be written. ``regular``: a file the command also reads back (a
    progress file), so a device or a FIFO is refused too. The check writes nothing."""
    path = Path(path).expanduser()
    _refuse_input(option, path, list(inputs), list(trees))
    kind = path.stat().st_mode if path.exists() else None
    if kind is not None and stat.S_ISDIR(kind):
        raise InputError(f"{option} {path} is a folder; give a file path")
    if kind is not None and regular and not stat.S_ISREG(kind):
        raise InputError(
            f"{option} {path} is not a regular file; it is read back and replaced: give the path "
            "of a file"
        )
    if kind is not None and (stat.S_ISCHR(kind) or stat.S_ISFIFO(kind)):
        if not os.access(path, os.W_OK):
            raise InputError(f"{option} {path} cannot be written to; choose another path")
        return path  # written through: no temporary beside it
    if kind is not None and not stat.S_ISREG(kind):
        raise InputError(f"{option} {path} is not a file (a block device or a socket)")
    if kind is not None and not os.access(path, os.W_OK):
        raise InputError(f"{option} {path} exists and is read-only; choose another path")
    _check_folder_takes_files(option, path, path.parent)
    return path


def check_output_folder(
    option: str,
    folder: PathLike,
    names: Sequence[str],
    inputs: Iterable[PathLike | None] = (),
    *,
    trees: Iterable[PathLike | None] = (),
) -> Path:
    """``folder`` as an output folder into which a command writes the files ``names``: not a
    file, not an input itself, none of ``folder/NAME`` an input (see :func:`check_output`), and
    able to take new files."""
    folder = Path(folder).expanduser()
    inputs, trees = list(inputs), list(trees)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{option} {folder} is a file; give a folder path")
    _refuse_input(option, folder, inputs, ())
    for name in names:
        target = folder / name
        _refuse_input(option, target, inputs, trees)
        if target.is_dir():
            raise InputError(f"{option} {folder} holds a folder {name}, where a file goes")
    _check_folder_takes_files(option, folder, folder)
    return folder
